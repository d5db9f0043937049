"""The registry client against servers that misbehave on purpose (stdlib, on loopback).

Each test drives ``extctl`` as a subprocess, as a user would, and checks what is visible: the
exit code, one ``error:`` line and no traceback, nothing at ``-o``, what another origin
received, and for the memory cases the child's peak RSS with ``--max-size 1 MiB``.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import select
import tarfile
import time
import zlib
from pathlib import Path

import pytest

import registry as oci
from tests.helpers.hostile import (
    Request,
    assert_clean_failure,
    digest,
    extctl,
    fake_registry,
    layer,
    manifest_for,
    serve,
)

MIB = 1024 * 1024
RSS_LIMIT_MIB = 150
MODULE = b"\x00asm\x01\x00\x00\x00"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _tar_gz(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue())


def _pull(host: str, tmp: Path, *extra: str, repo: str = "f/x:v1", **kwargs):
    out = tmp / "out.wasm"
    run = extctl("pull", f"oci://{host}/{repo}", "-o", str(out), "--insecure", "--no-cache",
                 *extra, tmp=tmp, **kwargs)
    return run, out


def _compat_image(layer_bytes: bytes, size: int | None = None):
    manifest = manifest_for([layer(layer_bytes, size=size)])
    return fake_registry({"v1": (manifest, OCI_MANIFEST)},
                         {digest(layer_bytes): layer_bytes, digest(b"{}"): b"{}"})


# -- 1. credentials stay with their origin -------------------------------------------------


@pytest.mark.parametrize("scheme", ["basic", "bearer"])
def test_push_sends_no_credentials_to_an_upload_location_on_another_origin(
        tmp_path, wat_module, scheme):
    def elsewhere_route(req: Request) -> None:
        if req.command in ("PATCH", "POST"):
            req.reply(202, headers={"Location": "/upload/1", "Range": "0-0"})
        elif req.command == "PUT":
            req.reply(201)
        else:
            req.reply(404)

    with serve(elsewhere_route) as elsewhere:
        me: dict[str, str] = {}
        basic = "Basic " + base64.b64encode(b"alice:pw-123").decode()

        def registry_route(req: Request) -> None:
            auth = req.headers.get("authorization", "")
            if req.path.startswith("/token"):
                ok = auth == basic
                req.reply(200 if ok else 401, json.dumps({"token": "tok-9"}).encode())
                return
            if auth != (basic if scheme == "basic" else "Bearer tok-9"):
                challenge = 'Basic realm="r"' if scheme == "basic" else \
                    f'Bearer realm="{me["origin"]}/token",service="fake"'
                req.reply(401, headers={"WWW-Authenticate": challenge})
            elif req.command == "HEAD":
                req.reply(404)
            elif req.command == "POST":
                req.reply(202, headers={"Location": f"{elsewhere.origin}/upload/1"})
            elif req.command == "PUT" and "/manifests/" in req.path:
                req.reply(201)
            else:
                req.reply(404)

        with serve(registry_route) as reg:
            me["origin"] = reg.origin
            run = extctl("push", str(wat_module), f"oci://{reg.host}/f/x:v1", "--insecure",
                         "--username", "alice", "--password-stdin", tmp=tmp_path,
                         stdin="pw-123\n")
    assert run.returncode == 0, run.stderr
    assert {s.method for s in elsewhere.seen} >= {"PATCH", "PUT"}
    assert all("authorization" not in s.headers for s in elsewhere.seen), elsewhere.seen
    assert any("authorization" in s.headers for s in reg.seen if s.method == "POST")


# -- 2. a bearer realm must be HTTPS ---------------------------------------------------------


def test_basic_credentials_never_go_to_a_plain_http_realm(tmp_path, test_ca):
    def realm_route(req: Request) -> None:
        req.reply(200, b'{"token": "t"}')

    with serve(realm_route) as realm:
        def registry_route(req: Request) -> None:
            req.reply(401, headers={"WWW-Authenticate":
                                    f'Bearer realm="{realm.origin}/token",service="s"'})

        with serve(registry_route, tls=test_ca) as reg:
            out = tmp_path / "o.wasm"
            run = extctl("pull", f"oci://{reg.host}/f/x:v1", "-o", str(out), "--no-cache",
                         "--ca-file", str(test_ca["ca.pem"]), "--username", "alice",
                         "--password-stdin", tmp=tmp_path, stdin="pw-123\n")
    assert_clean_failure(run, 7, out)
    assert "plain-HTTP token realm" in run.stderr
    assert realm.seen == []


# -- 3. --insecure only for loopback; strict hosts --------------------------------------------


@pytest.mark.parametrize("host", ["localhost.evil.example:5000", "127.evil.example",
                                  "127.0.0.1.nip.io:80"])
def test_insecure_is_refused_for_hosts_that_only_look_like_loopback(tmp_path, host):
    out = tmp_path / "o.wasm"
    run = extctl("pull", f"oci://{host}/f/x:v1", "-o", str(out), "--insecure", tmp=tmp_path)
    assert run.returncode == 2 and "only for a registry on loopback" in run.stderr
    assert "Traceback" not in run.stderr and not out.exists()
    for name in (host, "127.0.0.1@evil.example", "[::2]:1"):
        assert not oci.is_loopback(name)
    for name in ("localhost:5000", "127.3.2.1", "[::1]:5000"):
        assert oci.is_loopback(name)
    with pytest.raises(oci.InvalidReference):
        oci.RegistryClient(host, insecure=True)


def test_userinfo_in_a_reference_is_refused_before_any_request(tmp_path):
    def route(req: Request) -> None:
        req.reply(200, b"{}")

    with serve(route) as reg:
        out = tmp_path / "o.wasm"
        run = extctl("pull", f"oci://127.0.0.1@{reg.host}/f/x:v1", "-o", str(out),
                     "--insecure", tmp=tmp_path)
    assert_clean_failure(run, 9, out)
    assert "no user or password" in run.stderr
    assert reg.seen == []
    for bad in ("oci://host:0/a", "oci://host:99999/a", "oci://ho_st/a", "oci://999.1.1.1/a",
                "oci://[::zz]/a"):
        with pytest.raises(oci.InvalidReference):
            oci.parse_reference(bad)


# -- 4. metadata is bounded while streaming, after decoding ----------------------------------


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """0.5 MB of gzip that inflates to 512 MiB of JSON whitespace."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b" " * MIB
    parts = [compressor.compress(chunk) for _ in range(512)]
    return b"".join(parts) + compressor.flush()


def _stream(req: Request, size: int, chunk: bytes = b" " * MIB, status: int = 200,
            headers: dict[str, str] | None = None) -> None:
    req.send_response(status)
    for name, value in {"Content-Length": str(size), **(headers or {})}.items():
        req.send_header(name, value)
    req.end_headers()
    sent = 0
    while sent < size:
        req.wfile.write(chunk)
        sent += len(chunk)


@pytest.mark.parametrize("case", ["manifest-200MiB", "gzip-manifest-512MiB", "token-200MiB",
                                  "error-body-200MiB"])
def test_metadata_bodies_are_capped_at_4_mib(tmp_path, gzip_bomb, case):
    me: dict[str, str] = {}

    def route(req: Request) -> None:
        if case == "manifest-200MiB":
            _stream(req, 200 * MIB, headers={"Content-Type": OCI_MANIFEST})
        elif case == "gzip-manifest-512MiB":
            req.reply(200, gzip_bomb, {"Content-Encoding": "gzip",
                                       "Content-Type": OCI_MANIFEST})
        elif case == "token-200MiB":
            if req.path.startswith("/token"):
                _stream(req, 200 * MIB)
            else:
                req.reply(401, headers={"WWW-Authenticate":
                                        f'Bearer realm="{me["origin"]}/token"'})
        else:
            _stream(req, 200 * MIB, status=404)

    with serve(route) as reg:
        me["origin"] = reg.origin
        run, out = _pull(reg.host, tmp_path, "--max-size", str(MIB))
    expected = {"token-200MiB": 7, "error-body-200MiB": 8}.get(case, 9)
    assert_clean_failure(run, expected, out)
    if expected != 8:
        assert "4194304-byte limit" in run.stderr
    assert run.peak_rss_mib < RSS_LIMIT_MIB, run.peak_rss_mib


# -- 5. compat layers: the whole decompressed stream and the entry count are bounded --------


def _pax_bomb(header_size: int) -> bytes:
    """A tar+gzip layer opening with a pax header that claims ``header_size`` bytes."""
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type = tarfile.XHDTYPE
    pax.size = header_size
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [compressor.compress(pax.tobuf(format=tarfile.USTAR_FORMAT))]
    record = b"0" * MIB
    parts += [compressor.compress(record) for _ in range(header_size // MIB)]
    return b"".join(parts) + compressor.flush()


def test_a_pax_header_bomb_stays_within_memory(tmp_path):
    bomb = _pax_bomb(300 * MIB)
    assert len(bomb) < 1 * MIB
    with serve(_compat_image(bomb)) as reg:
        run, out = _pull(reg.host, tmp_path, "--max-size", str(MIB))
    assert_clean_failure(run, 9, out)
    assert "expands past" in run.stderr
    assert run.peak_rss_mib < RSS_LIMIT_MIB, run.peak_rss_mib


def test_too_many_entries_are_refused_quickly(tmp_path):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for n in range(20_000):
            tar.addfile(tarfile.TarInfo(f"e{n}"))
        info = tarfile.TarInfo("plugin.wasm")
        info.size = len(MODULE)
        tar.addfile(info, io.BytesIO(MODULE))
    with serve(_compat_image(gzip.compress(raw.getvalue()))) as reg:
        run, out = _pull(reg.host, tmp_path)
    assert_clean_failure(run, 9, out)
    assert "more than 10000 entries" in run.stderr
    assert run.seconds < 20 and run.peak_rss_mib < RSS_LIMIT_MIB


# -- 6. a layer stops at the size its descriptor declares -------------------------------------


def test_a_layer_larger_than_declared_is_cut_at_the_declared_size(tmp_path):
    declared = b"12345678"
    manifest = manifest_for([layer(declared, media_type="application/vnd.module.wasm.content."
                                   "layer.v1+wasm"), layer(b"{}", "application/vnd.module."
                                                           "wasm.runtime.config.v1+json")])
    blob_requests: list[str] = []

    def route(req: Request) -> None:
        if "/blobs/" in req.path:
            blob_requests.append(req.path)
            _stream(req, 200 * MIB)
        else:
            req.reply(200, manifest, {"Content-Type": OCI_MANIFEST})

    with serve(route) as reg:
        run, out = _pull(reg.host, tmp_path, "--max-size", str(MIB))
    assert_clean_failure(run, 6, out)
    assert "larger than the 8 bytes its descriptor declares" in run.stderr
    assert len(blob_requests) == 1  # refused, not retried
    assert run.seconds < 20 and run.peak_rss_mib < RSS_LIMIT_MIB

    big = manifest_for([layer(b"x" * 16, size=2 * MIB)])
    with serve(fake_registry({"v1": (big, OCI_MANIFEST)}, {})) as reg:
        run, out = _pull(reg.host, tmp_path, "--max-size", str(MIB))
    assert_clean_failure(run, 9, out)
    assert "declares 2097152 bytes, over the 1048576-byte limit" in run.stderr
    assert not any("/blobs/" in p for p in reg.paths())


# -- 7. anything a server can send ends in one line and a documented exit code ------------


def _short(req: Request, data: bytes) -> None:
    req.send_response(200)
    req.send_header("Content-Length", str(len(data) + 100))
    req.end_headers()
    req.wfile.write(data)
    req.wfile.flush()
    req.close_connection = True


CASES = {
    "short-blob": 10, "redirect-loop": 10, "html-manifest": 9, "array-manifest": 9,
    "layer-without-digest": 9, "bad-content-encoding": 10, "token-500": 7, "token-html": 7,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_answers_end_in_one_line_and_the_documented_code(tmp_path, case):
    compat = _tar_gz({"plugin.wasm": MODULE})
    manifest = manifest_for([layer(compat)])
    me: dict[str, str] = {}

    def route(req: Request) -> None:
        path = req.path
        if case.startswith("token"):
            if path.startswith("/token"):
                if case == "token-500":
                    req.reply(500, b"oops")
                else:
                    req.reply(200, b"<html>login</html>", {"Content-Type": "text/html"})
            else:
                req.reply(401, headers={"WWW-Authenticate": f'Bearer realm="{me["o"]}/token"'})
        elif "/blobs/" in path:
            _short(req, compat)
        elif case == "redirect-loop":
            req.reply(302, headers={"Location": path})
        elif case == "html-manifest":
            req.reply(200, b"<!doctype html><title>Sign in</title>", {"Content-Type":
                                                                     "text/html"})
        elif case == "array-manifest":
            req.reply(200, b"[1, 2, 3]", {"Content-Type": OCI_MANIFEST})
        elif case == "layer-without-digest":
            req.reply(200, json.dumps({"schemaVersion": 2, "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": 10}]}
            ).encode(), {"Content-Type": OCI_MANIFEST})
        elif case == "bad-content-encoding":
            req.reply(200, b"not gzip at all", {"Content-Encoding": "gzip"})
        else:
            req.reply(200, manifest, {"Content-Type": OCI_MANIFEST})

    with serve(route) as reg:
        me["o"] = reg.origin
        run, out = _pull(reg.host, tmp_path, "--max-size", str(MIB))
    assert_clean_failure(run, CASES[case], out)
    if case == "short-blob":
        assert sum("/blobs/" in p for p in reg.paths()) == 5  # retried like a 5xx


def test_a_short_blob_is_retried_and_then_succeeds(tmp_path):
    compat = _tar_gz({"plugin.wasm": MODULE})
    manifest = manifest_for([layer(compat)])
    blobs: list[str] = []

    def route(req: Request) -> None:
        if "/blobs/" in req.path:
            blobs.append(req.path)
            if len(blobs) == 1:
                _short(req, compat[:10])
            else:
                req.reply(200, compat)
        else:
            req.reply(200, manifest, {"Content-Type": OCI_MANIFEST})

    with serve(route) as reg:
        run, out = _pull(reg.host, tmp_path)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes() == MODULE and len(blobs) == 2


def test_invalid_base64_in_docker_config_is_an_auth_error(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {"127.0.0.1:9": {"auth": "%%%not-base64"}}}))
    out = tmp_path / "o.wasm"
    run = extctl("pull", "oci://127.0.0.1:9/f/x:v1", "-o", str(out), "--insecure",
                 "--docker-config", str(config), tmp=tmp_path)
    assert_clean_failure(run, 7, out)
    assert "not valid base64" in run.stderr


# -- 8. the cache: by digest, chain re-verified -----------------------------------------------


def test_cache_tags_do_not_collide_with_repositories_and_is_private(tmp_path):
    compat = _tar_gz({"plugin.wasm": MODULE})
    manifest = manifest_for([layer(compat)])
    with serve(fake_registry({"b": (manifest, OCI_MANIFEST), "c": (manifest, OCI_MANIFEST)},
                             {digest(compat): compat})) as reg:
        conn = oci.Connection(insecure=True)
        cache = oci.Cache(tmp_path / "cache")
        oci.pull(f"oci://{reg.host}/a:b", tmp_path / "1.wasm", connection=conn, cache=cache)
        oci.pull(f"oci://{reg.host}/a/b:c", tmp_path / "2.wasm", connection=conn, cache=cache)
    assert (tmp_path / "2.wasm").read_bytes() == MODULE
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700
    # served from the cache alone now (a tag, when asked not to resolve it)
    again = oci.pull(f"oci://{reg.host}/a/b:c", tmp_path / "3.wasm", connection=conn,
                     cache=cache, pull_policy="IfNotPresent")
    assert again.from_cache


def test_cache_rederives_the_module_from_the_stored_manifest(tmp_path):
    """A stored manifest that was altered (pointing at another cached layer) is a miss."""
    first, second = _tar_gz({"plugin.wasm": MODULE}), _tar_gz({"plugin.wasm": MODULE + b"\x00"})
    one, two = manifest_for([layer(first)]), manifest_for([layer(second)])
    images = {"one": (one, OCI_MANIFEST), "two": (two, OCI_MANIFEST)}
    cache = oci.Cache(tmp_path / "cache")
    conn = oci.Connection(insecure=True)
    with serve(fake_registry(images, {digest(first): first, digest(second): second})) as reg:
        oci.pull(f"oci://{reg.host}/f/x:one", tmp_path / "1.wasm", connection=conn, cache=cache)
        oci.pull(f"oci://{reg.host}/f/x:two", tmp_path / "2.wasm", connection=conn, cache=cache)
    stored = tmp_path / "cache" / "blobs" / "sha256" / digest(one).removeprefix("sha256:")
    stored.write_bytes(two)  # the entry named by one's digest now holds two's manifest
    with pytest.raises(oci.TransportError):  # registry gone: a miss, never the wrong module
        oci.pull(f"oci://{reg.host}/f/x:one", tmp_path / "3.wasm", connection=conn,
                 cache=cache, pull_policy="IfNotPresent")
    assert not (tmp_path / "3.wasm").exists()


def test_an_index_child_named_by_a_tag_is_refused(tmp_path):
    index = json.dumps({"schemaVersion": 2,
                        "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [{"mediaType": OCI_MANIFEST, "digest": "latest",
                                       "size": 10}]}).encode()
    with serve(fake_registry({"v1": (index, "application/vnd.oci.image.index.v1+json")},
                             {})) as reg:
        run, out = _pull(reg.host, tmp_path)
    assert_clean_failure(run, 9, out)
    assert "no sha256 digest" in run.stderr
    assert not any(p.endswith("/manifests/latest") for p in reg.paths())


def test_a_manifest_other_than_the_digest_asked_for_is_refused(tmp_path):
    """A registry answering ``@sha256:X`` with another valid image: refused, nothing written
    or cached, from the command line and the library, directly and through an index."""
    asked_layer, other_layer = (_tar_gz({"plugin.wasm": MODULE}),
                                _tar_gz({"plugin.wasm": MODULE + b"\x00"}))
    asked, other = manifest_for([layer(asked_layer)]), manifest_for([layer(other_layer)])
    index = json.dumps({"schemaVersion": 2,
                        "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest(asked),
                                       "size": len(asked), "platform": {
                                           "os": "linux", "architecture": "amd64"}}]}).encode()
    blobs = {digest(asked_layer): asked_layer, digest(other_layer): other_layer,
             digest(b"{}"): b"{}"}

    def route(req: Request) -> None:
        path = req.path.split("?")[0]
        if path.endswith(f"/manifests/{digest(index)}"):
            req.reply(200, index, {"Content-Type": "application/vnd.oci.image.index.v1+json"})
        elif "/manifests/" in path:  # whatever digest is asked for: the other image
            req.reply(200, other, {"Content-Type": OCI_MANIFEST,
                                   "Docker-Content-Digest": path.rsplit("/", 1)[1]})
        elif "/blobs/" in path and path.rsplit("/", 1)[1] in blobs:
            req.reply(200, blobs[path.rsplit("/", 1)[1]])
        else:
            req.reply(404, b'{"errors":[{"code":"NOT_FOUND"}]}')

    with serve(route) as reg:
        run, out = _pull(reg.host, tmp_path, repo=f"f/x@{digest(asked)}")
        assert_clean_failure(run, 6, out)
        assert digest(asked) in run.stderr and digest(other) in run.stderr
        conn = oci.Connection(insecure=True)
        cache = oci.Cache(tmp_path / "cache")
        for name in (digest(asked), digest(index)):
            lib_out = tmp_path / "lib.wasm"
            with pytest.raises(oci.DigestMismatch, match=digest(other)):
                oci.pull(f"oci://{reg.host}/f/x@{name}", lib_out, connection=conn,
                         cache=cache)
            assert not lib_out.exists()
    assert not any("/blobs/" in p for p in reg.paths())  # refused before any layer
    stored = tmp_path / "cache" / "blobs" / "sha256"
    assert not (stored / digest(asked).removeprefix("sha256:")).exists()
    assert not (stored / digest(other).removeprefix("sha256:")).exists()


def test_an_index_pulled_by_digest_is_served_from_the_cache_with_the_registry_down(
        tmp_path, test_ca, wat_module):
    from tests.helpers.oci import PASSWORD, USER, start_registry

    reg = start_registry(tmp_path / "reg", tls=test_ca)
    conn = oci.Connection(oci.Credentials(USER, PASSWORD, "t"), ca_file=str(reg.ca_file))
    cache = oci.Cache(tmp_path / "cache")
    try:
        pushed = oci.push(wat_module, f"oci://{reg.host}/f/idx:amd64", connection=conn)
        size = len(oci.build_image(wat_module.read_bytes(), "oci").manifest)
        index = json.dumps({"schemaVersion": 2,
                            "mediaType": "application/vnd.oci.image.index.v1+json",
                            "manifests": [{"mediaType": OCI_MANIFEST, "digest": pushed.digest,
                                           "size": size, "platform": {
                                               "os": "linux", "architecture": "amd64"}}]}
                           ).encode()
        with oci.RegistryClient(reg.host, conn.credentials, ca_file=str(reg.ca_file)) as c:
            c.put_manifest("f/idx", "multi", index, "application/vnd.oci.image.index.v1+json")
        ref = f"oci://{reg.host}/f/idx@{digest(index)}"
        online = oci.pull(ref, tmp_path / "a.wasm", connection=conn, cache=cache)
        assert online.digest == pushed.digest and online.index_digest == digest(index)
    finally:
        reg.stop()
    offline = oci.pull(ref, tmp_path / "b.wasm", connection=conn, cache=cache)
    assert offline.from_cache and offline.digest == pushed.digest
    assert (tmp_path / "b.wasm").read_bytes() == wat_module.read_bytes()


# -- 9. HTTP source: no plain HTTP unless loopback and --insecure, no downgrade --------------


def test_http_source_refuses_plain_http_and_https_to_http_redirects(tmp_path, test_ca):
    def plain_route(req: Request) -> None:
        req.reply(200, MODULE)

    with serve(plain_route) as plain:
        out = tmp_path / "h.wasm"
        run = extctl("pull", f"{plain.origin}/m.wasm", "-o", str(out), tmp=tmp_path)
        assert_clean_failure(run, 9, out)
        assert "plain http:// is refused" in run.stderr and plain.seen == []

        def tls_route(req: Request) -> None:
            req.reply(302, headers={"Location": f"{plain.origin}/m.wasm"})

        with serve(tls_route, tls=test_ca) as secure:
            run = extctl("pull", f"{secure.origin}/m.wasm", "-o", str(out), "--ca-file",
                         str(test_ca["ca.pem"]), "--insecure", tmp=tmp_path)
        assert_clean_failure(run, 10, out)
        assert "redirects to plain HTTP" in run.stderr
        assert plain.seen == [] and len(secure.seen) == 1


# -- 10. a total deadline, not only a per-read timeout ---------------------------------------


@pytest.mark.parametrize("where", ["headers", "body"])
def test_a_trickling_server_is_cut_at_the_deadline(tmp_path, where):
    def route(req: Request) -> None:
        data = (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" if where == "headers"
                else b"")
        if where == "body":
            req.send_response(200)
            req.send_header("Content-Length", "1000")
            req.end_headers()
            req.wfile.flush()
        for byte in data + b" " * 1000:
            req.wfile.write(bytes([byte]))
            req.wfile.flush()
            # the next byte 0.5 s later, unless the client has left (its end is readable)
            if select.select([req.connection], [], [], 0.5)[0]:
                return

    with serve(route) as reg:
        env = {"EXTCTL_PULL_TIMEOUT": "3"} if where == "body" else None
        extra = () if env else ("--timeout", "3")
        run, out = _pull(reg.host, tmp_path, *extra, env=env)
    assert_clean_failure(run, 10, out)
    assert "deadline" in run.stderr
    assert run.seconds < 3 * 5 + 10  # the first try and its retries, each cut at 3 s


# -- 11. inspect does not compile ------------------------------------------------------------


def _code_module(size: int) -> bytes:
    """A module of ``size`` bytes of function bodies (what makes native compilation slow)."""
    def leb(n: int) -> bytes:
        out = bytearray()
        while True:
            b, n = n & 0x7F, n >> 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def section(kind: int, body: bytes) -> bytes:
        return bytes([kind]) + leb(len(body)) + body

    ops = b"\x41\x01" + b"\x41\x01\x6a" * 330 + b"\x0b"
    count = size // (len(ops) + 4)
    func = leb(len(ops) + 1) + b"\x00" + ops
    return (b"\x00asm\x01\x00\x00\x00" + section(1, b"\x01\x60\x00\x01\x7f")
            + section(3, leb(count) + b"\x00" * count)
            + section(7, b"\x01\x02f0\x00\x00") + section(10, leb(count) + func * count))


def test_inspect_validates_without_compiling(monkeypatch, wat_module):
    import wasmtime

    import wasm
    import wasm.module

    data = _code_module(5_000_000)
    compiled = wasm.module._compiled_sections(wasmtime.Engine(), wat_module.read_bytes())

    class NoCompile(wasmtime.Module):  # validate() is inherited; constructing compiles
        def __init__(self, *args: object) -> None:
            raise AssertionError("inspect compiled the module")

    monkeypatch.setattr(wasm.module.wasmtime, "Module", NoCompile)
    info = wasm.inspect_bytes(data)  # its speed is measured by farm-bench, not here
    assert info.exports == ("f0",) and info.size == len(data)
    small = wasm.inspect_bytes(wat_module.read_bytes())
    assert (small.exports, small.imports) == (compiled[0], tuple((m, n) for m, n, _ in
                                                                 compiled[1]))
    with pytest.raises(wasm.InvalidModule):
        wasm.inspect_bytes(data[:-3])


# -- 12. terminal and secrets hygiene --------------------------------------------------------


def test_error_bodies_are_escaped_and_passwords_never_printed(tmp_path):
    def route(req: Request) -> None:
        req.reply(400, b"\x1b]0;pwned\x07\x1b[31mred\x1b[0m\r\nsecond line" + b"x" * 10_000)

    with serve(route) as reg:
        run, out = _pull(reg.host, tmp_path)
    assert_clean_failure(run, 1, out)
    assert "\\x1b" in run.stderr and len(run.stderr) < 1000
    run = extctl("pull", "oci://alice:hunter2@127.0.0.1:9/f/x:v1", "-o", str(out),
                 tmp=tmp_path)
    assert_clean_failure(run, 9, out)
    assert "hunter2" not in run.stderr + run.stdout and "alice" not in run.stderr


# -- 13. stale temporary files are swept ------------------------------------------------------


def test_stale_temporary_files_are_swept_on_the_next_run(tmp_path):
    compat = _tar_gz({"plugin.wasm": MODULE})
    cache_dir = tmp_path / "cache"
    (cache_dir / "blobs" / "sha256").mkdir(parents=True)
    out = tmp_path / "out.wasm"
    old = time.time() - 2 * 3600
    stale = [tmp_path / ".out.wasm.extctl-abc123.tmp",
             cache_dir / "blobs" / "sha256" / ".deadbeef.extctl-x1.tmp"]
    fresh = tmp_path / ".out.wasm.extctl-now.tmp"
    foreign = tmp_path / ".someone-else.tmp"
    for path in (*stale, fresh, foreign):
        path.write_bytes(b"partial")
    for path in (*stale, foreign):
        os.utime(path, (old, old))
    with serve(_compat_image(compat)) as reg:
        run = extctl("pull", f"oci://{reg.host}/f/x:v1", "-o", str(out), "--insecure",
                     "--cache-dir", str(cache_dir), tmp=tmp_path)
        assert run.returncode == 0, run.stderr
        assert not any(p.exists() for p in stale)
        assert fresh.exists() and foreign.exists()
        # a run served from the cache alone sweeps it too
        later = cache_dir / "tags" / ".v1.extctl-zz.tmp"
        later.write_bytes(b"partial")
        os.utime(later, (old, old))
        run = extctl("pull", f"oci://{reg.host}/f/x:v1", "-o", str(out), "--insecure",
                     "--cache-dir", str(cache_dir), tmp=tmp_path)
    assert run.returncode == 0 and "from the cache" in run.stdout, run.stderr
    assert not later.exists()


def test_an_output_that_cannot_be_written_is_one_line(tmp_path):
    compat = _tar_gz({"plugin.wasm": MODULE})
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    with serve(_compat_image(compat)) as reg:
        out = blocker / "out.wasm"
        run = extctl("pull", f"oci://{reg.host}/f/x:v1", "-o", str(out), "--insecure",
                     "--no-cache", tmp=tmp_path)
    assert_clean_failure(run, 1)
    assert "cannot write" in run.stderr
