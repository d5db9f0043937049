"""``extctl check``: Envoy Gateway's acceptance rules on images pushed by this project, by
skopeo, and uploaded raw in the layouts EG refuses (against the real registry)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import registry as oci
from registry.layout import (
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    RUNTIME_CONFIG_LAYER,
    WASM_CONFIG,
    WASM_LAYER,
)
from tests.helpers.hostile import digest, extctl, fake_registry, layer, manifest_for, serve
from tests.helpers.oci import PASSWORD, USER, skopeo

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def _auth(reg) -> list[str]:
    return ["--username", USER, "--password-stdin", "--ca-file", str(reg.ca_file)]


def _check(reg, repo: str, tmp: Path, *extra: str):
    return extctl("check", f"oci://{reg.host}/{repo}", *_auth(reg), *extra, tmp=tmp,
                  stdin=PASSWORD + "\n")


def _client(reg) -> oci.RegistryClient:
    return oci.RegistryClient(reg.host, oci.Credentials(USER, PASSWORD, "t"),
                              ca_file=str(reg.ca_file))


def _upload(reg, repo: str, tag: str, layers: list[tuple[bytes, str]],
            config: tuple[bytes, str] = (b"{}", WASM_CONFIG),
            manifest_type: str = OCI_MANIFEST) -> str:
    """Upload an image with arbitrary layers, as another client could; its digest."""
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": manifest_type,
        "config": {"mediaType": config[1], "digest": digest(config[0]), "size": len(config[0])},
        "layers": [{"mediaType": kind, "digest": digest(data), "size": len(data)}
                   for data, kind in layers]}).encode()
    with _client(reg) as client:
        for data in (config[0], *(d for d, _ in layers)):
            client.upload_blob(repo, data, digest(data))
        client.put_manifest(repo, tag, manifest, manifest_type)
    return digest(manifest)


@pytest.mark.parametrize("layout", ["oci", "compat"])
def test_images_pushed_by_this_project_are_accepted(registry, wat_module, tmp_path, layout):
    conn = oci.Connection(oci.Credentials(USER, PASSWORD, "t"), ca_file=str(registry.ca_file))
    pushed = oci.push(wat_module, f"oci://{registry.host}/check/own:{layout}", layout=layout,
                      connection=conn)
    run = _check(registry, f"check/own:{layout}", tmp_path, "--output", "json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["result"] == "ACCEPTED" and result["variant"] == layout
    assert result["image_sha256"] == pushed.digest.removeprefix("sha256:")
    assert result["index_digest"] is None
    text = _check(registry, f"check/own:{layout}", tmp_path, "--module")
    assert text.returncode == 0 and text.stdout.startswith("ACCEPTED")
    assert f"image.sha256: {pushed.digest.removeprefix('sha256:')}" in text.stdout
    module_sha = hashlib.sha256(wat_module.read_bytes()).hexdigest()
    assert f"module sha256: {module_sha}" in text.stdout


def _oci_layout(directory: Path, wasm: bytes, tag: str = "v1") -> str:
    """An OCI image layout on disk holding the two-layer oci variant; its manifest digest."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    config, runtime = b"{}", b"{}"
    manifest = manifest_for([layer(runtime, RUNTIME_CONFIG_LAYER), layer(wasm, WASM_LAYER)],
                            config=config)
    manifest = json.dumps({**json.loads(manifest), "config": {
        "mediaType": WASM_CONFIG, "digest": digest(config), "size": len(config)}}).encode()
    for data in (config, wasm, manifest):
        (blobs / digest(data).removeprefix("sha256:")).write_bytes(data)
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (directory / "index.json").write_text(json.dumps({
        "schemaVersion": 2, "manifests": [{
            "mediaType": OCI_MANIFEST, "digest": digest(manifest), "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    return digest(manifest)


def test_an_oci_layout_copied_by_skopeo_is_accepted(registry, wat_module, tmp_path):
    layout_dir = tmp_path / "layout"
    local_digest = _oci_layout(layout_dir, wat_module.read_bytes())
    on_disk = extctl("check", str(layout_dir), "--output", "json", tmp=tmp_path)
    assert on_disk.returncode == 0, on_disk.stderr
    assert json.loads(on_disk.stdout)["digest"] == local_digest
    policy = tmp_path / "policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    copied = skopeo("--policy", str(policy), "copy", "--dest-cert-dir", str(registry.cert_dir),
                    "--dest-creds", f"{USER}:{PASSWORD}", f"oci:{layout_dir}:v1",
                    f"docker://{registry.host}/check/skopeo:v1")
    assert copied.returncode == 0, copied.stderr
    run = _check(registry, "check/skopeo:v1", tmp_path, "--output", "json", "--module")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["accepted"] and result["variant"] == "oci"
    assert result["digest"] == local_digest  # skopeo kept the manifest byte for byte


@pytest.mark.parametrize(("layers", "reason"), [
    ("three", "number of layers must be 2 but got 3"),
    ("one-raw", "number of layers must be 2 but got 1"),
    ("wasm-to-oci", "could not find the layer of type "
                    "application/vnd.module.wasm.content.layer.v1+wasm"),
])
def test_layouts_envoy_gateway_refuses_are_rejected(registry, wat_module, tmp_path, layers,
                                                    reason):
    wasm = wat_module.read_bytes()
    found = {
        "three": [(b"{}", RUNTIME_CONFIG_LAYER), (wasm, WASM_LAYER), (b"extra", WASM_LAYER)],
        "one-raw": [(wasm, WASM_LAYER)],
        "wasm-to-oci": [(b"{}", RUNTIME_CONFIG_LAYER),
                        (wasm, "application/vnd.wasm.content.layer.v1+wasm")],
    }[layers]
    uploaded = _upload(registry, f"check/{layers}", "v1", found)
    run = _check(registry, f"check/{layers}:v1", tmp_path)
    assert run.returncode == 9, (run.stdout, run.stderr)
    assert run.stdout.startswith("REJECTED: Envoy Gateway would refuse it")
    assert reason in run.stdout and "invalid media type" in run.stdout
    assert f"manifest digest: {uploaded}" in run.stdout
    assert "Traceback" not in run.stderr


def _plugin_tar_gz(wasm: bytes) -> bytes:
    import gzip
    import io
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("plugin.wasm")
        info.size = len(wasm)
        tar.addfile(info, io.BytesIO(wasm))
    return gzip.compress(raw.getvalue())


@pytest.mark.parametrize(("last_layer", "accepted"), [
    (DOCKER_LAYER, True),
    ("application/vnd.oci.image.layer.v1.tar+gzip", False),
])
def test_a_docker_v2_manifest_needs_a_docker_tar_gzip_last_layer(registry, wat_module, tmp_path,
                                                                  last_layer, accepted):
    """EG reads a Docker v2 manifest only as a Docker container: its last layer must be the
    Docker rootfs type; the OCI tar+gzip type (fine in an OCI manifest) is refused there."""
    wasm = wat_module.read_bytes()
    repo = "check/docker-" + ("docker-layer" if accepted else "oci-layer")
    uploaded = _upload(registry, repo, "v1", [(_plugin_tar_gz(wasm), last_layer)],
                       config=(b"{}", "application/vnd.docker.container.image.v1+json"),
                       manifest_type=DOCKER_MANIFEST)
    expect = f"invalid media type {last_layer} (expect {DOCKER_LAYER})"
    for extra in ((), ("--module",)):
        run = _check(registry, f"{repo}:v1", tmp_path, *extra)
        assert "Traceback" not in run.stderr
        assert f"manifest digest: {uploaded}" in run.stdout
        if accepted:
            assert run.returncode == 0, (run.stdout, run.stderr)
            assert run.stdout.startswith("ACCEPTED")
        else:
            assert run.returncode == 9, (run.stdout, run.stderr)
            assert run.stdout.startswith("REJECTED: Envoy Gateway would refuse it")
            assert expect in run.stdout
    conn = oci.Connection(oci.Credentials(USER, PASSWORD, "t"), ca_file=str(registry.ca_file))
    result = oci.check_image(f"oci://{registry.host}/{repo}:v1", connection=conn, module=True)
    assert result.digest == uploaded
    assert result.accepted is accepted
    assert result.layers == (last_layer,)
    out = tmp_path / "pulled.wasm"
    if accepted:
        assert result.variant == "compat" and result.reasons == ()
        assert result.module_sha256 == hashlib.sha256(wasm).hexdigest()
        oci.pull(f"oci://{registry.host}/{repo}:v1", out, connection=conn)
        assert out.read_bytes() == wasm
    else:
        assert result.image_sha256 is None
        assert any(expect in reason for reason in result.reasons), result.reasons
        with pytest.raises(oci.UnsupportedImage, match="Envoy Gateway would refuse it"):
            oci.pull(f"oci://{registry.host}/{repo}:v1", out, connection=conn)
        assert not out.exists()


def test_an_index_shows_both_digests_and_which_one_eg_compares(registry, wat_module, tmp_path):
    conn = oci.Connection(oci.Credentials(USER, PASSWORD, "t"), ca_file=str(registry.ca_file))
    pushed = oci.push(wat_module, f"oci://{registry.host}/check/index:amd64", connection=conn)
    size = len(oci.build_image(wat_module.read_bytes(), "oci").manifest)
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": pushed.digest, "size": size,
         "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
    with _client(registry) as client:
        client.put_manifest("check/index", "multi", index, OCI_INDEX)
    run = _check(registry, "check/index:multi", tmp_path)
    assert run.returncode == 0, run.stderr
    assert f"index digest:    {digest(index)} (NOT what image.sha256" in run.stdout
    assert f"manifest digest: {pushed.digest} (linux/amd64: Envoy Gateway compares" \
        in run.stdout
    assert f"image.sha256: {pushed.digest.removeprefix('sha256:')}" in run.stdout


def test_check_reads_manifests_only_unless_asked_and_module_checks_plugin_wasm(tmp_path):
    import gzip
    import io
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("not-the-plugin.wasm")
        info.size = 8
        tar.addfile(info, io.BytesIO(b"\x00asm\x01\x00\x00\x00"))
    compat = gzip.compress(raw.getvalue())
    manifest = manifest_for([layer(compat)])
    with serve(fake_registry({"v1": (manifest, OCI_MANIFEST)}, {digest(compat): compat})) as reg:
        quick = extctl("check", f"oci://{reg.host}/f/x:v1", "--insecure", tmp=tmp_path)
        assert quick.returncode == 0 and "--module checks it" in quick.stdout
        assert not any("/blobs/" in p for p in reg.paths())
        deep = extctl("check", f"oci://{reg.host}/f/x:v1", "--insecure", "--module",
                      tmp=tmp_path)
        assert any("/blobs/" in p for p in reg.paths())
    assert deep.returncode == 9 and "holds no plugin.wasm" in deep.stdout
    manifest_file = tmp_path / "manifest.json"
    manifest_file.write_bytes(manifest)
    on_disk = extctl("check", str(manifest_file), tmp=tmp_path)
    assert on_disk.returncode == 0 and f"image.sha256: {digest(manifest)[7:]}" in on_disk.stdout
