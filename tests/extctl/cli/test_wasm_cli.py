"""``extctl push|pull|inspect|verify`` against the real registry: output, exit codes, no debris."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

import pytest
from click.testing import CliRunner

import registry as oci
from extctl.cli import cli
from tests.helpers.oci import PASSWORD, USER


def _run(*args: str, stdin: str | None = None):
    return CliRunner().invoke(cli, list(args), input=stdin)


def _auth(reg) -> list[str]:
    return ["--username", USER, "--password-stdin", "--ca-file", str(reg.ca_file)]


def test_push_prints_digest_and_policy_entry_then_pull_verifies(registry, wat_module, tmp_path):
    ref = f"oci://{registry.host}/cli/add-header:v1"
    pushed = _run("push", str(wat_module), ref, *_auth(registry), "--output", "json",
                  stdin=PASSWORD + "\n")
    assert pushed.exit_code == 0, pushed.output
    result = json.loads(pushed.output)
    digest = result["digest"]
    entry = result["envoyExtensionPolicy"]["wasm"][0]
    assert entry["code"] == {"type": "Image", "image": {
        "url": f"{registry.host}/cli/add-header:v1", "sha256": digest.removeprefix("sha256:")}}
    out = tmp_path / "p.wasm"
    pulled = _run("pull", ref, "-o", str(out), "--sha256", digest, *_auth(registry),
                  stdin=PASSWORD + "\n")
    assert pulled.exit_code == 0, pulled.output
    assert out.read_bytes() == wat_module.read_bytes()
    text = _run("push", str(wat_module), ref, *_auth(registry), stdin=PASSWORD + "\n")
    assert f"digest: {digest}" in text.output and "type: Image" in text.output


def test_exit_codes_and_nothing_left_behind(registry, wat_module, tmp_path):
    ref = f"oci://{registry.host}/cli/codes:v1"
    assert _run("push", str(wat_module), ref, *_auth(registry),
                stdin=PASSWORD + "\n").exit_code == 0
    out = tmp_path / "x.wasm"
    wrong_digest = _run("pull", ref, "-o", str(out), "--sha256", "a" * 64, *_auth(registry),
                        stdin=PASSWORD + "\n")
    assert wrong_digest.exit_code == 6
    assert wrong_digest.output.startswith("error: ") and "manifest digest is" in wrong_digest.output
    bad_password = _run("pull", ref, "-o", str(out), *_auth(registry), stdin="nope\n")
    assert bad_password.exit_code == 7
    assert "tried user 'extkit' from --username" in bad_password.output
    missing = _run("pull", f"oci://{registry.host}/cli/none:v1", "-o", str(out),
                   *_auth(registry), stdin=PASSWORD + "\n")
    assert missing.exit_code == 8
    not_wasm = tmp_path / "x.txt"
    not_wasm.write_bytes(b"hello")
    refused = _run("push", str(not_wasm), ref, *_auth(registry), stdin=PASSWORD + "\n")
    assert refused.exit_code == 9 and "not a WebAssembly module" in refused.output
    bad_ref = _run("pull", "oci://nohost", "-o", str(out))
    assert bad_ref.exit_code == 9
    assert not out.exists()
    assert list(tmp_path.glob(".*.tmp")) == []


def _push_raw(reg, repository: str, layer: bytes) -> None:
    """Upload a compat image with an arbitrary layer, as another client could."""
    config = b"{}"
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": "sha256:" + hashlib.sha256(config).hexdigest(), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": "sha256:" + hashlib.sha256(layer).hexdigest(),
                    "size": len(layer)}]}).encode()
    with oci.RegistryClient(reg.host, oci.Credentials(USER, PASSWORD, "t"),
                            ca_file=str(reg.ca_file)) as client:
        for blob in (config, layer):
            client.upload_blob(repository, blob, "sha256:" + hashlib.sha256(blob).hexdigest())
        client.put_manifest(repository, "v1", manifest,
                            "application/vnd.oci.image.manifest.v1+json")


def _tar_gz(entries: list[tarfile.TarInfo], data: bytes = b"\x00asm\x01\x00\x00\x00") -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for info in entries:
            if info.isfile():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return gzip.compress(raw.getvalue())


@pytest.mark.parametrize(("entry", "message"), [
    ("../plugin.wasm", "escapes the archive"),
    ("/etc/plugin.wasm", "escapes the archive"),
    ("link", "is a link"),
])
def test_unsafe_layers_are_refused(registry, tmp_path, entry, message):
    info = tarfile.TarInfo(entry)
    if entry == "link":
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    _push_raw(registry, f"cli/unsafe-{len(entry)}", _tar_gz([info]))
    out = tmp_path / "u.wasm"
    result = _run("pull", f"oci://{registry.host}/cli/unsafe-{len(entry)}:v1", "-o", str(out),
                  *_auth(registry), stdin=PASSWORD + "\n")
    assert result.exit_code == 9
    assert message in result.output
    assert not out.exists()


def test_decompression_bomb_is_refused(registry, tmp_path):
    info = tarfile.TarInfo("plugin.wasm")
    _push_raw(registry, "cli/bomb", _tar_gz([info], b"\x00asm" + b"\x00" * (4 * 1024 * 1024)))
    result = _run("pull", f"oci://{registry.host}/cli/bomb:v1", "-o", str(tmp_path / "b.wasm"),
                  "--max-size", str(1024 * 1024), *_auth(registry), stdin=PASSWORD + "\n")
    assert result.exit_code == 9 and "limit" in result.output


def test_inspect_and_verify(wat_module):
    shown = _run("inspect", str(wat_module), "--output", "json")
    assert shown.exit_code == 0
    info = json.loads(shown.output)
    assert info["abi_versions"] == ["0_2_1"] and info["proxy_wasm"] is True
    assert "proxy_on_response_headers" in info["callbacks"]
    assert info["imports"] == ["env.proxy_add_header_map_value"]
    digest = hashlib.sha256(wat_module.read_bytes()).hexdigest()
    assert info["sha256"] == digest and info["size"] == wat_module.stat().st_size
    assert _run("verify", str(wat_module), "--sha256", f"sha256:{digest}").exit_code == 0
    mismatch = _run("verify", str(wat_module), "--sha256", "0" * 64)
    assert mismatch.exit_code == 6 and f"sha256 is {digest}" in mismatch.output
    assert _run("verify", str(wat_module), "--sha256", "xyz").exit_code == 2


def test_inspect_rejects_invalid_modules(tmp_path):
    truncated = tmp_path / "t.wasm"
    truncated.write_bytes(b"\x00asm\x01\x00\x00\x00\x01\x05")
    result = _run("inspect", str(truncated))
    assert result.exit_code == 9 and "invalid WebAssembly module" in result.output


def test_pull_policy_from_the_cli(registry, wat_module, tmp_path):
    ref = f"oci://{registry.host}/cli/policy:v1"
    assert _run("push", str(wat_module), ref, *_auth(registry),
                stdin=PASSWORD + "\n").exit_code == 0
    args = ("pull", ref, "-o", str(tmp_path / "m.wasm"), "--output", "json", *_auth(registry))
    first = json.loads(_run(*args, stdin=PASSWORD + "\n").output)
    second = json.loads(_run(*args, stdin=PASSWORD + "\n").output)
    assert (first["from_cache"], second["from_cache"]) == (False, True)
    fresh = _run(*args, "--no-cache", stdin=PASSWORD + "\n")
    assert json.loads(fresh.output)["from_cache"] is False


@pytest.fixture
def http_files(tmp_path):
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("boxing", ["plain", "gzip", "tar.gz"])
def test_pull_over_http_checks_the_body_sha256_and_unboxes(http_files, wat_module, tmp_path,
                                                           boxing):
    root, base = http_files
    module = wat_module.read_bytes()
    if boxing == "plain":
        body = module
    elif boxing == "gzip":
        body = gzip.compress(module)
    else:
        info = tarfile.TarInfo("dist/plugin.wasm")
        body = _tar_gz([info], module)
    (root / "m").write_bytes(body)
    digest = hashlib.sha256(body).hexdigest()
    out = tmp_path / "h.wasm"
    ok = _run("pull", f"{base}/m", "-o", str(out), "--sha256", digest, "--insecure")
    assert ok.exit_code == 0, ok.output
    assert out.read_bytes() == module
    out.unlink()
    wrong = _run("pull", f"{base}/m", "-o", str(out), "--sha256", "1" * 64, "--insecure")
    assert wrong.exit_code == 6 and f"body sha256 is {digest}" in wrong.output
    assert not out.exists()
    missing = _run("pull", f"{base}/nothing", "-o", str(out), "--insecure")
    assert missing.exit_code == 8


def test_inspect_an_image_reference(registry, wat_module):
    ref = f"oci://{registry.host}/cli/inspect:v1"
    assert _run("push", str(wat_module), ref, *_auth(registry),
                stdin=PASSWORD + "\n").exit_code == 0
    shown = _run("inspect", ref, *_auth(registry), "--output", "json", stdin=PASSWORD + "\n")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["sha256"] == hashlib.sha256(wat_module.read_bytes()).hexdigest()
    missing = _run("inspect", "no-such-file.wasm")
    assert missing.exit_code == 2


def test_bomb_before_plugin_wasm_is_refused(registry, tmp_path):
    filler = tarfile.TarInfo("zeros.bin")
    plugin = tarfile.TarInfo("plugin.wasm")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        filler.size = 3 * 1024 * 1024
        tar.addfile(filler, io.BytesIO(b"\x00" * filler.size))
        plugin.size = 8
        tar.addfile(plugin, io.BytesIO(b"\x00asm\x01\x00\x00\x00"))
    _push_raw(registry, "cli/bomb-before", gzip.compress(raw.getvalue()))
    result = _run("pull", f"oci://{registry.host}/cli/bomb-before:v1", "-o",
                  str(tmp_path / "b.wasm"), "--max-size", str(1024 * 1024), *_auth(registry),
                  stdin=PASSWORD + "\n")
    assert result.exit_code == 9 and "before plugin.wasm" in result.output


def test_image_index_resolves_to_linux_amd64(registry, wat_module, tmp_path):
    conn = oci.Connection(oci.Credentials(USER, PASSWORD, "t"), ca_file=str(registry.ca_file))
    pushed = oci.push(wat_module, f"oci://{registry.host}/cli/indexed:single", connection=conn)
    other = oci.push(wat_module, f"oci://{registry.host}/cli/indexed:arm", layout="compat",
                     connection=conn)
    image = oci.build_image(wat_module.read_bytes(), "oci")
    other_size = len(oci.build_image(wat_module.read_bytes(), "compat").manifest)
    index = json.dumps({"schemaVersion": 2,
                        "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [
                            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                             "digest": other.digest, "size": other_size,
                             "platform": {"os": "linux", "architecture": "arm64"}},
                            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                             "digest": pushed.digest, "size": len(image.manifest),
                             "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
    with oci.RegistryClient(registry.host, oci.Credentials(USER, PASSWORD, "t"),
                            ca_file=str(registry.ca_file)) as client:
        client.put_manifest("cli/indexed", "multi", index,
                            "application/vnd.oci.image.index.v1+json")
    out = tmp_path / "i.wasm"
    pulled = oci.pull(f"oci://{registry.host}/cli/indexed:multi", out, connection=conn)
    assert pulled.digest == pushed.digest
    assert out.read_bytes() == wat_module.read_bytes()
