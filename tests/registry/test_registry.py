"""Push and pull Wasm modules against a real registry (docker-registry), checked with skopeo."""

from __future__ import annotations

import hashlib
import json

import pytest

import registry as oci
from registry.layout import WASM_CONFIG, WASM_LAYER
from tests.helpers.oci import PASSWORD, USER, skopeo
from wasm import InvalidModule


@pytest.fixture
def conn(registry) -> oci.Connection:
    return oci.Connection(oci.Credentials(USER, PASSWORD, "test"), ca_file=str(registry.ca_file))


def _skopeo_raw(registry, ref: str) -> dict:
    result = skopeo("inspect", "--raw", "--cert-dir", str(registry.cert_dir),
                    "--creds", f"{USER}:{PASSWORD}", f"docker://{registry.host}/{ref}")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("layout", ["oci", "compat"])
def test_push_then_pull_is_byte_identical_and_skopeo_reads_it(registry, conn, wat_module,
                                                               tmp_path, layout):
    ref = f"oci://{registry.host}/filters/add-header:{layout}"
    pushed = oci.push(wat_module, ref, layout=layout, connection=conn)
    out = tmp_path / "pulled.wasm"
    pulled = oci.pull(ref, out, connection=conn)
    assert out.read_bytes() == wat_module.read_bytes()
    assert pulled.digest == pushed.digest
    manifest = _skopeo_raw(registry, f"filters/add-header:{layout}")
    raw = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == pushed.digest
    if layout == "oci":
        assert manifest["config"]["mediaType"] == WASM_CONFIG
        assert len(manifest["layers"]) == 2
        assert manifest["layers"][1]["mediaType"] == WASM_LAYER
    else:
        assert [layer["mediaType"] for layer in manifest["layers"]] == [
            "application/vnd.oci.image.layer.v1.tar+gzip"]


def test_push_is_reproducible(registry, conn, wat_module):
    first = oci.push(wat_module, f"oci://{registry.host}/filters/repro:a", connection=conn)
    second = oci.push(wat_module, f"oci://{registry.host}/filters/repro:b", connection=conn)
    assert first.digest == second.digest
    assert oci.build_image(wat_module.read_bytes(), "compat").digest == \
        oci.build_image(wat_module.read_bytes(), "compat").digest
    entry = first.policy_entry()
    assert entry["code"]["image"]["sha256"] == first.digest.removeprefix("sha256:")


def test_pull_by_digest_and_sha256_checks(registry, conn, wat_module, tmp_path):
    pushed = oci.push(wat_module, f"oci://{registry.host}/filters/sum:v1", connection=conn)
    out = tmp_path / "ok.wasm"
    oci.pull(f"oci://{registry.host}/filters/sum@{pushed.digest}", out, connection=conn,
             sha256=pushed.digest)
    assert out.read_bytes() == wat_module.read_bytes()
    bad = tmp_path / "bad.wasm"
    with pytest.raises(oci.DigestMismatch, match="manifest digest is"):
        oci.pull(f"oci://{registry.host}/filters/sum:v1", bad, connection=conn,
                 sha256="0" * 64)
    assert not bad.exists()
    assert list(tmp_path.glob(".bad.wasm.*")) == []


def test_tampered_blob_in_storage_is_refused_and_nothing_written(registry, conn, wat_module,
                                                                 tmp_path):
    pushed = oci.push(wat_module, f"oci://{registry.host}/filters/tamper:v1", connection=conn)
    layer_digest = oci.build_image(wat_module.read_bytes(), "oci").layers[1].digest
    hexdigest = layer_digest.removeprefix("sha256:")
    data = next(registry.storage.rglob(f"blobs/sha256/{hexdigest[:2]}/{hexdigest}/data"))
    original = data.read_bytes()
    try:
        data.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))
        out = tmp_path / "t.wasm"
        with pytest.raises(oci.DigestMismatch, match="corrupt or tampered"):
            oci.pull(f"oci://{registry.host}/filters/tamper:v1", out, connection=conn)
        assert not out.exists()
    finally:
        data.write_bytes(original)
    assert pushed.digest.startswith("sha256:")


def test_non_wasm_file_is_refused_before_upload(registry, conn, tmp_path):
    bogus = tmp_path / "plugin.wasm"
    bogus.write_bytes(b"#!/bin/sh\necho not wasm\n")
    with pytest.raises(InvalidModule, match="not a WebAssembly module") as refused:
        oci.push(bogus, f"oci://{registry.host}/filters/bogus:v1", connection=conn)
    assert isinstance(refused.value, oci.NotAModule)  # one error tree: a RegistryError too
    assert isinstance(refused.value, oci.RegistryError)
    with pytest.raises(oci.NotFound) as missing:
        oci.pull(f"oci://{registry.host}/filters/bogus:v1", tmp_path / "x.wasm",
                 connection=conn)
    assert missing.value.status == 404
    assert missing.value.url == f"https://{registry.host}/v2/filters/bogus/manifests/v1"
    with pytest.raises(oci.InvalidArgument):
        oci.build_image(bogus.read_bytes(), "flat")


def test_credentials_missing_or_wrong_name_the_cause(registry, wat_module, tmp_path):
    ca = str(registry.ca_file)
    with pytest.raises(oci.AuthError, match="no credentials were found"):
        oci.push(wat_module, f"oci://{registry.host}/filters/auth:v1",
                 connection=oci.Connection(ca_file=ca))
    wrong = oci.Connection(oci.Credentials(USER, "nope", "--username"), ca_file=ca)
    with pytest.raises(oci.AuthError, match="tried user 'extkit' from --username"):
        oci.push(wat_module, f"oci://{registry.host}/filters/auth:v1", connection=wrong)


def test_tls_without_the_ca_fails_clearly(registry, wat_module):
    # A library error names the parameters (extctl spells them as its flags: --ca-file).
    with pytest.raises(oci.TransportError, match=r"TLS verification .* failed.*; pass ca_file "
                                                 r"with the registry's CA, or insecure for"):
        oci.push(wat_module, f"oci://{registry.host}/filters/tls:v1",
                 connection=oci.Connection(oci.Credentials(USER, PASSWORD, "t")))


def test_dockerconfigjson_secret_and_docker_config(registry, wat_module, tmp_path):
    import base64

    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    config = {"auths": {registry.host: {"auth": auth}}}
    secret = tmp_path / "secret.yaml"
    secret.write_text(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: pull\n"
        "type: kubernetes.io/dockerconfigjson\ndata:\n"
        f"  .dockerconfigjson: {base64.b64encode(json.dumps(config).encode()).decode()}\n")
    creds = oci.from_secret_file(registry.host, secret)
    assert creds is not None and creds.username == USER and creds.source == str(secret)
    docker_config = tmp_path / "config.json"
    docker_config.write_text(json.dumps(config))
    creds2 = oci.from_docker_config(registry.host, docker_config)
    assert creds2 == oci.Credentials(USER, PASSWORD, str(docker_config))
    pushed = oci.push(wat_module, f"oci://{registry.host}/filters/secret:v1",
                      connection=oci.Connection(creds, ca_file=str(registry.ca_file)))
    assert pushed.digest.startswith("sha256:")


def test_pulls_an_image_pushed_by_skopeo_as_docker_v2_compat(registry, conn, wat_module,
                                                             tmp_path):
    """A compat image written by another client: Docker v2 manifest, plugin.wasm nested."""
    import io
    import tarfile

    layout_dir = tmp_path / "dir-image"
    layout_dir.mkdir()
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w:gz") as tar:
        data = wat_module.read_bytes()
        info = tarfile.TarInfo("deep/nested/plugin.wasm")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    layer = tar_bytes.getvalue()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()

    def digest(b: bytes) -> str:
        return "sha256:" + hashlib.sha256(b).hexdigest()

    manifest = {"schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           "size": len(config), "digest": digest(config)},
                "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                            "size": len(layer), "digest": digest(layer)}]}
    (layout_dir / "manifest.json").write_text(json.dumps(manifest))
    (layout_dir / digest(config).removeprefix("sha256:")).write_bytes(config)
    (layout_dir / digest(layer).removeprefix("sha256:")).write_bytes(layer)
    (layout_dir / "version").write_text("Directory Transport Version: 1.1\n")
    policy = tmp_path / "policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    copied = skopeo("--policy", str(policy), "copy", "--dest-cert-dir",
                    str(registry.cert_dir), "--dest-creds", f"{USER}:{PASSWORD}",
                    f"dir:{layout_dir}", f"docker://{registry.host}/filters/foreign:v1")
    assert copied.returncode == 0, copied.stderr
    out = tmp_path / "foreign.wasm"
    oci.pull(f"oci://{registry.host}/filters/foreign:v1", out, connection=conn)
    assert out.read_bytes() == wat_module.read_bytes()


def test_cache_pull_policies_with_the_registry_stopped(tmp_path, test_ca, wat_module):
    from concurrent.futures import ThreadPoolExecutor

    from tests.helpers.oci import start_registry

    reg = start_registry(tmp_path / "reg", tls=test_ca)
    conn = oci.Connection(oci.Credentials(USER, PASSWORD, "t"), ca_file=str(reg.ca_file))
    cache = oci.Cache(tmp_path / "cache")
    try:
        tag_ref = f"oci://{reg.host}/filters/cached:v1"
        pushed = oci.push(wat_module, tag_ref, connection=conn)
        digest_ref = f"oci://{reg.host}/filters/cached@{pushed.digest}"
        first = oci.pull(tag_ref, tmp_path / "a.wasm", connection=conn, cache=cache)
        assert not first.from_cache
        again = oci.pull(digest_ref, tmp_path / "b.wasm", connection=conn, cache=cache,
                         pull_policy="Always")
        assert again.from_cache  # resolved online, content reused
        out = tmp_path / "shared.wasm"
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(
                lambda _: oci.pull(tag_ref, out, connection=conn, cache=oci.Cache(
                    tmp_path / "cache8"), pull_policy="Always"), range(8)))
        assert {r.digest for r in results} == {pushed.digest}
        assert out.read_bytes() == wat_module.read_bytes()
        assert list(tmp_path.glob(".shared.wasm.*")) == []
    finally:
        reg.stop()
    offline = oci.pull(digest_ref, tmp_path / "c.wasm", connection=conn, cache=cache)
    assert offline.from_cache and (tmp_path / "c.wasm").read_bytes() == wat_module.read_bytes()
    by_tag = oci.pull(tag_ref, tmp_path / "d.wasm", connection=conn, cache=cache,
                      pull_policy="IfNotPresent")
    assert by_tag.from_cache
    for policy in ("Always", None):  # a tag is resolved by default
        with pytest.raises(oci.TransportError, match="cannot connect"):
            oci.pull(tag_ref, tmp_path / "e.wasm", connection=conn, cache=cache,
                     pull_policy=policy)
    assert not (tmp_path / "e.wasm").exists()
    # A damaged cache entry is not trusted: with the registry down, the pull fails.
    layer_digest = oci.build_image(wat_module.read_bytes(), "oci").layers[1].digest
    module_file = tmp_path / "cache" / "blobs" / "sha256" / layer_digest.removeprefix("sha256:")
    module_file.write_bytes(b"\x00asm damaged")
    with pytest.raises(oci.TransportError):
        oci.pull(digest_ref, tmp_path / "f.wasm", connection=conn, cache=cache)


def test_a_cached_layer_tampered_at_the_same_size_is_never_served(tmp_path, test_ca,
                                                                  wat_module):
    """The cache re-checks a layer's sha256, not only its size: a tampered layer is fetched
    again while the registry is up, and with it down the pull fails with nothing written."""
    from tests.helpers.oci import start_registry

    original = wat_module.read_bytes()
    reg = start_registry(tmp_path / "reg", tls=test_ca)
    conn = oci.Connection(oci.Credentials(USER, PASSWORD, "t"), ca_file=str(reg.ca_file))
    cache = oci.Cache(tmp_path / "cache")
    layer_digest = oci.build_image(original, "oci").layers[1].digest
    cached_layer = tmp_path / "cache" / "blobs" / "sha256" / layer_digest.removeprefix("sha256:")
    tag_ref = f"oci://{reg.host}/filters/same-size:v1"
    try:
        pushed = oci.push(wat_module, tag_ref, connection=conn)
        digest_ref = f"oci://{reg.host}/filters/same-size@{pushed.digest}"
        oci.pull(tag_ref, tmp_path / "a.wasm", connection=conn, cache=cache)
        assert cached_layer.read_bytes() == original
        # Still a Wasm module of the same size, one byte of its body changed.
        tampered = original[:-1] + bytes([original[-1] ^ 0xFF])
        assert len(tampered) == len(original) and tampered.startswith(b"\x00asm")
        cached_layer.write_bytes(tampered)
        for policy in ("IfNotPresent", "Always"):
            out = tmp_path / f"{policy}.wasm"
            again = oci.pull(digest_ref, out, connection=conn, cache=cache, pull_policy=policy)
            assert out.read_bytes() == original
            assert not again.from_cache and again.sha256 == hashlib.sha256(original).hexdigest()
    finally:
        reg.stop()
    cached_layer.write_bytes(tampered)
    offline = tmp_path / "offline.wasm"
    with pytest.raises(oci.TransportError):
        oci.pull(digest_ref, offline, connection=conn, cache=cache)
    assert not offline.exists()


def test_insecure_plain_http_on_loopback(tmp_path, wat_module):
    from tests.helpers.oci import start_registry

    reg = start_registry(tmp_path / "plain", tls=None, auth=False)
    try:
        conn = oci.Connection(insecure=True)
        ref = f"oci://{reg.host}/filters/plain:v1"
        pushed = oci.push(wat_module, ref, connection=conn)
        pulled = oci.pull(ref, tmp_path / "p.wasm", connection=conn)
        assert pulled.digest == pushed.digest
        with pytest.raises(oci.TransportError):
            oci.pull(ref, tmp_path / "q.wasm", connection=oci.Connection())  # HTTPS: refused
    finally:
        reg.stop()


def test_docker_credential_helper(registry, wat_module, tmp_path, monkeypatch):
    """credHelpers: the helper protocol (registry on stdin, JSON on stdout), a helper on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-extkit-test"
    helper.write_text("#!/bin/sh\nread host\n"
                      f'[ "$1" = get ] && [ "$host" = "{registry.host}" ] && '
                      f'echo \'{{"ServerURL":"{registry.host}","Username":"{USER}",'
                      f'"Secret":"{PASSWORD}"}}\' && exit 0\n'
                      "echo 'credentials not found in native keychain'; exit 1\n")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"credHelpers": {registry.host: "extkit-test"}}))
    creds = oci.from_docker_config(registry.host, config)
    assert creds == oci.Credentials(USER, PASSWORD, "docker-credential-extkit-test")
    assert oci.from_docker_config("other.example:5000", config) is None
    pushed = oci.push(wat_module, f"oci://{registry.host}/filters/helper:v1",
                      connection=oci.Connection(creds, ca_file=str(registry.ca_file)))
    assert pushed.digest.startswith("sha256:")


def test_retries_with_backoff_on_5xx():
    """A registry that fails with 503 (a fault the real one cannot be made to produce)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str] = []

    class Flaky(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            seen.append(self.path)
            status = 503 if len(seen) <= 2 or "always" in self.path else 404
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"127.0.0.1:{server.server_address[1]}"
    try:
        with oci.RegistryClient(host, insecure=True) as client:
            with pytest.raises(oci.NotFound):
                client.get_manifest("flaky/x", "v1")
            assert len(seen) == 3  # two 503s retried, then the real answer
            seen.clear()
            with pytest.raises(oci.RegistryError, match="answered 503"):
                client.get_manifest("always/x", "v1")
            assert len(seen) == 5  # the first try and four retries
    finally:
        server.shutdown()
        server.server_close()


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    import os

    from registry.transfer_io import write_atomic

    previous = os.umask(0o027)
    try:
        write_atomic(tmp_path / "out.yaml", b"x")
    finally:
        os.umask(previous)
    assert (tmp_path / "out.yaml").stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["out.yaml"]
