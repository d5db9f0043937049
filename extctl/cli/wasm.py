"""``extctl push|pull|inspect|verify|check``: thin commands over :mod:`registry` and
:mod:`wasm`."""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

import registry
import wasm

from . import options


def _registry_options(f: Callable[..., Any]) -> Callable[..., Any]:
    # The library's errors name credentials as one parameter; here they come from two flags.
    return options.apply(options.flags(credentials="--username/--password-stdin")(f),
                         *options.registry_options, options.output)


@contextmanager
def _progress(label: str, total: int) -> Iterator[Callable[[int], None] | None]:
    if total < 4 * 1024 * 1024 or not sys.stderr.isatty():
        yield None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        yield bar.update


@contextmanager
def _spinner_progress(label: str) -> Iterator[Callable[[int], None] | None]:
    """Bytes received so far, on a terminal (the size is known only once the layer starts)."""
    if not sys.stderr.isatty():
        yield None
        return
    received = 0

    def update(n: int) -> None:
        nonlocal received
        received += n
        click.echo(f"\r{label}: {received / 1048576:.1f} MiB", nl=False, err=True)

    try:
        yield update
    finally:
        if received:
            click.echo("", err=True)


@click.command()
@click.argument("module", type=click.Path(exists=True, dir_okay=False))
@click.argument("ref", metavar="oci://HOST/REPO:TAG")
@click.option("--layout", type=click.Choice(registry.LAYOUTS), default="oci", show_default=True,
              help="oci: two layers (module + runtime config); compat: tar+gzip plugin.wasm.")
@_registry_options
def push(module: str, ref: str, layout: str, username: str | None, password_stdin: bool,
         docker_config: str | None, secret_file: str | None, ca_file: str | None,
         insecure: bool, timeout: float, output: str) -> None:
    """Push a Wasm module as an image Envoy Gateway pulls; print its manifest digest.

    The digest is what EnvoyExtensionPolicy's image.sha256 must carry; the printed entry is
    ready to paste under spec.wasm.

    \b
    Example:
      extctl push plugin.wasm oci://registry.example.com/filters/redact:v1
    """
    connection = options.connection(ref, username, password_stdin, docker_config,
                                    secret_file, ca_file, insecure, timeout)
    size = Path(module).stat().st_size
    with _progress("push", size * 2) as progress:
        result = registry.push(module, ref, layout=layout, connection=connection,
                               progress=progress)
    if output == "json":
        click.echo(json.dumps({"reference": str(result.reference), "digest": result.digest,
                               "layout": result.layout, "size": result.size,
                               "envoyExtensionPolicy": {"wasm": [result.policy_entry()]}},
                              indent=2))
        return
    entry = result.policy_entry()
    click.echo(f"pushed {result.reference} ({result.layout} layout, {result.size} bytes)")
    click.echo(f"digest: {result.digest}")
    click.echo("EnvoyExtensionPolicy spec.wasm entry:")
    click.echo(f"- name: {entry['name']}\n  code:\n    type: Image\n    image:\n"
               f"      url: {entry['code']['image']['url']}\n"
               f"      sha256: {entry['code']['image']['sha256']}")


@click.command()
@click.argument("ref", metavar="oci://HOST/REPO:TAG|https://URL")
@click.option("-o", "--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Where to write the module.")
@click.option("--sha256", help="Expected digest, as EnvoyExtensionPolicy means it: the manifest "
              "digest for oci:// (image.sha256), the body's sha256 for https:// (http.sha256).")
@click.option("--max-size", type=click.IntRange(min=1), default=256 * 1024 * 1024,
              show_default=True, help="Largest module accepted, in bytes (a tar+gzip layer may "
              "decompress to 1 MiB more, for its headers).")
@click.option("--pull-policy", type=click.Choice(registry.PULL_POLICIES),
              help="Envoy Gateway's pullPolicy values. Always: resolve the reference at the "
              "registry (cached layers are reused when their digests match); IfNotPresent: a "
              "cached image is used without asking the registry. Default: Always for a tag, "
              "IfNotPresent for a @sha256: digest.")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Cache directory (default: $EXTCTL_CACHE_DIR or ~/.cache/envoy-extkit).")
@click.option("--no-cache", is_flag=True, help="Neither read nor fill the cache.")
@_registry_options
def pull(ref: str, out: str, sha256: str | None, max_size: int, pull_policy: str | None,
         cache_dir: str | None, no_cache: bool, username: str | None,
         password_stdin: bool, docker_config: str | None, secret_file: str | None,
         ca_file: str | None, insecure: bool, timeout: float, output: str) -> None:
    """Pull a Wasm module from an image, verifying every digest; nothing is written on error.

    A tag is resolved at the registry on every pull (it may have been pushed again); a
    digest is served from the cache when it holds it. --pull-policy IfNotPresent serves a
    cached tag without asking the registry (offline, or when the tag never moves).

    \b
    Example:
      extctl pull oci://registry.example.com/filters/redact:v1 -o plugin.wasm
      extctl pull oci://registry.example.com/filters/redact:v1 -o plugin.wasm --sha256 HEX
      extctl pull oci://registry.example.com/filters/redact:v1 -o plugin.wasm \\
          --pull-policy IfNotPresent
      extctl pull https://example.com/redact.wasm.tar.gz -o plugin.wasm --sha256 HEX
    """
    if sha256:
        try:
            wasm.normalise_sha256(sha256)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--sha256") from None
    if ref.startswith(("https://", "http://")):
        result = registry.pull_http(ref, out, sha256=sha256, ca_file=ca_file,
                                    max_size=max_size, insecure=insecure, timeout=timeout)
        click.echo(json.dumps({"url": ref, "sha256_body": result.digest,
                               "path": str(result.path), "sha256": result.sha256,
                               "size": result.size}, indent=2) if output == "json" else
                   f"pulled {ref} -> {result.path} ({result.size} bytes)\n"
                   f"body sha256: {result.digest.removeprefix('sha256:')}")
        return
    connection = options.connection(ref, username, password_stdin, docker_config,
                                    secret_file, ca_file, insecure, timeout)
    cache = None if no_cache else registry.Cache(cache_dir)
    with _spinner_progress("pull") as progress:
        result = registry.pull(ref, out, sha256=sha256, connection=connection,
                               max_size=max_size, cache=cache, pull_policy=pull_policy,
                               progress=progress)
    if output == "json":
        click.echo(json.dumps({"reference": str(result.reference), "digest": result.digest,
                               "index_digest": result.index_digest,
                               "path": str(result.path), "sha256": result.sha256,
                               "size": result.size, "from_cache": result.from_cache},
                              indent=2))
    else:
        source = " from the cache" if result.from_cache else ""
        click.echo(f"pulled {result.reference}{source} -> {result.path} ({result.size} bytes)")
        if result.index_digest:
            click.echo(f"index digest: {result.index_digest} (not what image.sha256 compares)")
        click.echo(f"digest: {result.digest}\nmodule sha256: {result.sha256}")


@click.command()
@click.argument("module", metavar="FILE|oci://REF")
@_registry_options
def inspect(module: str, username: str | None, password_stdin: bool, docker_config: str | None,
            secret_file: str | None, ca_file: str | None, insecure: bool, timeout: float,
            output: str) -> None:
    """Validate a Wasm module and show its proxy-wasm ABI, callbacks, imports, size, sha256.

    An oci:// reference is pulled first (digests verified, nothing kept).

    \b
    Example:
      extctl inspect plugin.wasm --output json
      extctl inspect oci://registry.example.com/filters/redact:v1
    """
    if module.startswith("oci://"):
        connection = options.connection(module, username, password_stdin, docker_config,
                                        secret_file, ca_file, insecure, timeout)
        with tempfile.TemporaryDirectory(prefix="extctl-inspect-") as tmp:
            pulled = registry.pull(module, Path(tmp) / "plugin.wasm",
                                   connection=connection)
            info = wasm.inspect_file(pulled.path)
    else:
        if not Path(module).is_file():
            raise click.BadParameter(f"{module} is not a file (or an oci:// reference)",
                                     param_hint="FILE")
        info = wasm.inspect_file(module)
    if output == "json":
        click.echo(json.dumps(info.to_dict(), indent=2))
        return
    click.echo(f"valid WebAssembly module: {module}")
    click.echo(f"size: {info.size} bytes\nsha256: {info.sha256}")
    abis = ", ".join(info.abi_versions) or "none (not a proxy-wasm module)"
    click.echo(f"proxy-wasm ABI: {abis}")
    click.echo(f"callbacks: {', '.join(info.callbacks) or '-'}")
    click.echo("imports: " + (", ".join(f"{m}.{n}" for m, n in info.imports) or "-"))
    if info.emulator_missing:
        click.echo("emulator: would refuse it: " + ", ".join(info.emulator_missing))
    elif info.is_proxy_wasm:
        click.echo("emulator: provides every import")


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--sha256", required=True, help="Expected sha256 (HEX or sha256:HEX).")
@options.output
def verify(file: str, sha256: str, output: str) -> None:
    """Check a file's sha256 (as Envoy checks a module it loads).

    \b
    Example:
      extctl verify plugin.wasm --sha256 9e31ea4f...
    """
    try:
        wasm.normalise_sha256(sha256)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--sha256") from None
    actual = wasm.verify_file(file, sha256)
    if output == "json":
        click.echo(json.dumps({"path": file, "sha256": actual, "ok": True}, indent=2))
        return
    click.echo(f"ok: {file} sha256 {actual}")


@click.command()
@click.argument("image", metavar="oci://REF|FILE")
@click.option("--module", is_flag=True,
              help="Also download the module's layer and check plugin.wasm / the Wasm bytes.")
@click.option("--max-size", type=click.IntRange(min=1), default=256 * 1024 * 1024,
              show_default=True, help="Largest module accepted with --module, in bytes.")
@_registry_options
def check(image: str, module: bool, max_size: int, username: str | None,
          password_stdin: bool, docker_config: str | None, secret_file: str | None,
          ca_file: str | None, insecure: bool, timeout: float, output: str) -> None:
    """Tell whether Envoy Gateway will accept an image, and the digest image.sha256 needs.

    Reads only the manifests (the module too with --module) and applies Envoy Gateway's rules:
    compat (last layer tar+gzip holding plugin.wasm) or oci (exactly two layers, one
    application/vnd.module.wasm.content.layer.v1+wasm); an index is resolved to linux/amd64,
    whose manifest digest is what EG compares. FILE is a manifest or index JSON file, or an
    OCI image layout directory. Exit code 0: accepted; 9: rejected.

    \b
    Example:
      extctl check oci://registry.example.com/filters/redact:v1
      extctl check ./oci-layout --output json
    """
    from registry.untrusted import escape

    from .exits import INVALID

    if image.startswith("oci://"):
        connection = options.connection(image, username, password_stdin, docker_config,
                                        secret_file, ca_file, insecure, timeout)
        result = registry.check_image(image, connection=connection, module=module,
                                      max_size=max_size)
    else:
        if not Path(image).exists():
            raise click.BadParameter(f"{image} is not a file or directory (or an oci:// "
                                     "reference)", param_hint="oci://REF|FILE")
        result = registry.check_file(image, module=module, max_size=max_size)
    if output == "json":
        click.echo(json.dumps(result.to_dict(), indent=2))
    elif result.accepted:
        click.echo(f"ACCEPTED: Envoy Gateway reads the module as the {result.variant} variant "
                   f"({len(result.layers)} layer{'s' if len(result.layers) != 1 else ''})")
    else:
        click.echo("REJECTED: Envoy Gateway would refuse it: " + escape(
            "; ".join(result.reasons), 2000))
    if output != "json":
        if result.index_digest:
            click.echo(f"index digest:    {result.index_digest} (NOT what image.sha256 is "
                       "compared with)")
            click.echo(f"manifest digest: {result.digest} (linux/amd64: Envoy Gateway compares "
                       "image.sha256 with this one)")
        elif result.digest:
            click.echo(f"manifest digest: {result.digest}")
        if result.image_sha256:
            click.echo(f"image.sha256: {result.image_sha256}")
        if result.module_sha256:
            click.echo(f"module sha256: {result.module_sha256}")
        for note in result.notes:
            click.echo(f"note: {note}")
    if not result.accepted:
        raise SystemExit(INVALID)
