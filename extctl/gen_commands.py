"""``extctl gen gateway|envoy``: configuration generated from a Processor class."""

from __future__ import annotations

from pathlib import Path

import click

import extproc

from . import exit_codes
from .envoy_config import EnvoyConfig, bootstrap, to_json
from .envoy_config import to_yaml as envoy_yaml
from .gateway import GatewayConfig, GatewayError, Target, WasmSource, resources, to_yaml


def _addresses(uds: str | None, address: str | None, workers: int) -> list[str]:
    try:
        return extproc.ServerConfig(uds=uds, address=address, workers=workers).addresses()
    except extproc.ServeError as exc:
        raise click.UsageError(str(exc)) from None


def _write(text: str, output: str | None) -> None:
    if output is None:
        click.echo(text, nl=False)
        return
    from registry.transfer_io import write_atomic

    write_atomic(Path(output), text.encode())


@click.group()
def gen() -> None:
    """Generate Envoy Gateway resources or a standalone Envoy config from a Processor.

    \b
    Example:
      extctl gen gateway app:Redact --name redact --route backend --uds /run/x/extproc.sock
      extctl gen envoy app:Redact --uds /run/x/extproc.sock
    """


@gen.command()
@click.argument("processor", metavar="MODULE:CLASS", required=False)
@click.option("--name", required=True, help="Name of the EnvoyExtensionPolicy (and Backend).")
@click.option("--namespace", default="default", show_default=True)
@click.option("--route", "routes", multiple=True, help="HTTPRoute to attach to (repeatable).")
@click.option("--gateway", "gateways", multiple=True, help="Gateway to attach to (repeatable).")
@click.option("--uds", help="The processor's Unix socket (the sidecar).")
@click.option("--address", help="The processor's host:port instead.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Server workers: the Backend lists each one's address.")
@click.option("--fail-open", is_flag=True, help="Envoy continues when the processor fails.")
@click.option("--wasm-image", "wasm_images", multiple=True, metavar="NAME=oci://REF@sha256:HEX",
              help="A Wasm image (its manifest digest, as `extctl push` prints it).")
@click.option("--pull-secret", help="Secret for the Wasm images (pullSecretRef).")
@click.option("--app-dir", default=".", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="File (default: stdout).")
def gateway(processor: str | None, name: str, namespace: str, routes: tuple[str, ...],
            gateways: tuple[str, ...], uds: str | None, address: str | None, workers: int,
            fail_open: bool, wasm_images: tuple[str, ...], pull_secret: str | None,
            app_dir: str, output: str | None) -> None:
    """EnvoyExtensionPolicy + Backend: Envoy sends only the phases the class handles.

    \b
    Example:
      extctl gen gateway app:Redact --name redact --route backend \\
          --uds /var/run/extproc/extproc.sock --workers 2
      extctl gen gateway --name filters --gateway eg \\
          --wasm-image redact=oci://registry.example.com/f/redact:v1@sha256:9e31...
    """
    from .cli import _load

    cls = _load(processor, app_dir) if processor else None
    wasm = []
    for entry in wasm_images:
        wasm_name, sep, ref = entry.partition("=")
        base, at, digest = ref.partition("@")
        if not sep or not at:
            raise click.BadParameter(f"{entry!r} is not NAME=oci://REF@sha256:HEX",
                                     param_hint="--wasm-image")
        wasm.append((wasm_name, base, digest))
    try:
        config = GatewayConfig(
            name=name, namespace=namespace,
            targets=[*(Target("HTTPRoute", r) for r in routes),
                     *(Target("Gateway", g) for g in gateways)],
            processor=cls,
            processor_addresses=_addresses(uds, address, workers) if cls else (),
            fail_open=fail_open,
            wasm=[WasmSource(n, image=b, sha256=d, pull_secret=pull_secret)
                  for n, b, d in wasm])
        text = to_yaml(resources(config))
    except GatewayError as exc:
        exit_codes.fail(str(exc), exit_codes.USAGE)
    _write(text, output)


@gen.command()
@click.argument("processor", metavar="MODULE:CLASS")
@click.option("--uds", help="The processor's Unix socket.")
@click.option("--address", help="The processor's host:port instead.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--listen", default="127.0.0.1:10000", show_default=True)
@click.option("--upstream", help="host:port of the upstream (default: a direct 200 answer).")
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml",
              show_default=True)
@click.option("--app-dir", default=".", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="File (default: stdout).")
def envoy(processor: str, uds: str | None, address: str | None, workers: int, listen: str,
          upstream: str | None, fmt: str, app_dir: str, output: str | None) -> None:
    """A standalone Envoy bootstrap for the processor, built from typed xds-protos messages.

    \b
    Example:
      extctl gen envoy app:Redact --uds /run/extproc/extproc.sock --upstream 127.0.0.1:8080
    """
    from .cli import _load

    cls = _load(processor, app_dir)
    config = EnvoyConfig(cls, _addresses(uds, address, workers), upstream=upstream,
                         listen=listen)
    message = bootstrap(config)
    _write(envoy_yaml(message) if fmt == "yaml" else to_json(message) + "\n", output)
