"""``extctl``: thin click commands over library calls.

Every option is also an environment variable: ``EXTCTL_<COMMAND>_<OPTION>``
(e.g. ``EXTCTL_SERVE_UDS``). Exit codes are in :mod:`extctl.exit_codes`.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

import click

import extproc
import registry

from . import exit_codes
from .errors import ConfigError, EnvoyError, ExtctlError, UsageError

_fail = exit_codes.fail


def _load(spec: str, app_dir: str) -> type[extproc.Processor]:
    # An absolute entry: a relative one would follow later changes of the working directory.
    directory = os.path.abspath(app_dir)
    if directory not in sys.path:
        sys.path.insert(0, directory)
        importlib.invalidate_caches()
    try:
        return extproc.import_processor(spec)
    except extproc.ImportFromStringError as exc:
        _fail(str(exc), exit_codes.IMPORT)
    except extproc.ProcessorDefinitionError as exc:
        _fail(str(exc), exit_codes.IMPORT)


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class _Octal(click.ParamType):  # type: ignore[type-arg]
    name = "octal mode"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return int(str(value), 8)
        except ValueError:
            self.fail(f"{value!r} is not an octal file mode such as 660", param, ctx)


_LOG_LEVELS = click.Choice(["debug", "info", "warning", "error"], case_sensitive=False)


@click.group(context_settings={"auto_envvar_prefix": "EXTCTL",
                               "help_option_names": ["-h", "--help"]})
@click.version_option(package_name="envoy-extkit")
def cli() -> None:
    """envoy-extkit: extend Envoy and Envoy Gateway with ext_proc processors."""


@cli.command()
@click.argument("processor", metavar="MODULE:CLASS")
@click.option("--uds", metavar="PATH", help="Listen on this Unix socket (the sidecar case).")
@click.option("--address", metavar="HOST:PORT", help="Listen on TCP instead.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Server processes. Worker i listens on NAME-i.EXT (Unix) or PORT+i (TCP); "
                   "list them all as endpoints of Envoy's ext_proc cluster.")
@click.option("--socket-mode", type=_Octal(), default="660", show_default=True,
              help="File mode of the Unix socket (Envoy's user needs read/write).")
@click.option("--grace-period", type=click.FloatRange(min=0), default=10.0,
              show_default=True, help="Seconds in-flight requests get after SIGTERM.")
@click.option("--max-message-bytes", type=click.IntRange(min=4096),
              default=32 * 1024 * 1024, show_default=True,
              help="Largest gRPC message (a BUFFERED body travels in one).")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False),
              help="PEM certificate chain (TCP only).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False),
              help="PEM private key for --tls-cert.")
@click.option("--tls-client-ca", type=click.Path(exists=True, dir_okay=False),
              help="Require client certificates signed by this CA.")
@click.option("--loop", type=click.Choice(["auto", "uvloop", "asyncio"]), default="auto",
              show_default=True, help="Event loop (auto: uvloop when installed).")
@click.option("--app-dir", default=".", show_default=True,
              help="Directory added to sys.path before importing MODULE.")
@click.option("--log-level", type=_LOG_LEVELS, default="info", show_default=True)
def serve(processor: str, uds: str | None, address: str | None, workers: int,
          socket_mode: int, grace_period: float, max_message_bytes: int,
          tls_cert: str | None, tls_key: str | None, tls_client_ca: str | None,
          loop: str, app_dir: str, log_level: str) -> None:
    """Serve a Processor subclass over gRPC for Envoy's ext_proc filter.

    SIGTERM/SIGINT drain in-flight requests within --grace-period and exit 0;
    a second signal cuts them and exits 1.

    \b
    Example:
      extctl serve app.processor:Redact --uds /var/run/extproc/extproc.sock
      extctl serve app.processor:Redact --address 127.0.0.1:9000 --workers 2
    """
    _setup_logging(log_level)
    cls = _load(processor, app_dir)
    try:
        config = extproc.ServerConfig(
            uds=uds, address=address, workers=workers, socket_mode=socket_mode,
            grace_period=grace_period, max_message_bytes=max_message_bytes,
            tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=tls_client_ca, loop=loop)
    except extproc.ServeError as exc:
        _fail(str(exc), exit_codes.USAGE)
    try:
        code = extproc._server.run(cls, config)
    except extproc.ServeError as exc:
        _fail(str(exc), exit_codes.STARTUP)
    sys.exit(code)


@cli.command()
@click.argument("processor", metavar="[MODULE:CLASS]", required=False)
@click.option("--port", type=click.IntRange(0, 65535), default=10000, show_default=True,
              help="Envoy's listener port on 127.0.0.1 (0: any free port).")
@click.option("--wasm", multiple=True,
              metavar="PATH|oci://REF|https://URL",
              help="A proxy-wasm module to run too (repeatable; remote ones are fetched and "
                   "verified first).")
@click.option("--wasm-sha256", help="Expected digest of the (single) --wasm module: manifest "
                                    "digest for oci://, body sha256 for https://.")
@click.option("--wasm-config", default="{}", show_default=True,
              help="Plugin configuration handed to the module(s).")
@click.option("--wasm-root-id", default="", help="Root context id of the module(s).")
@click.option("--filter-order", "filter_order", multiple=True,
              metavar="FILTER:before|after:FILTER",
              help="Move filters from Envoy Gateway's default order (ext_proc, wasm).")
@click.option("--docker-config", type=click.Path(dir_okay=False),
              help="docker config.json with registry credentials (default: ~/.docker).")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False),
              help="PEM CA bundle for a private registry or HTTPS server.")
@click.option("--insecure", is_flag=True, help="Plain HTTP to a registry on loopback.")
@click.option("--app-dir", default=".", show_default=True,
              help="Directory added to sys.path before importing MODULE.")
@click.option("--log-level", type=_LOG_LEVELS, default="info", show_default=True)
@click.option("--envoy-log-level", type=click.Choice(["trace", "debug", "info", "warning",
                                                       "error"]),
              default="warning", show_default=True,
              help="Envoy's own log (requests are shown by its access log either way).")
def dev(processor: str | None, port: int, wasm: tuple[str, ...],
        wasm_sha256: str | None, wasm_config: str, wasm_root_id: str,
        filter_order: tuple[str, ...], docker_config: str | None, ca_file: str | None,
        insecure: bool, app_dir: str, log_level: str, envoy_log_level: str) -> None:
    """Try a processor and/or Wasm modules locally, with an echo upstream and a real Envoy.

    Without MODULE:CLASS (and without --wasm) the bundled demo processor runs. Prints the
    curl line to try and the filter chain; shows the logs of all three; Ctrl-C stops
    everything and removes the sockets and temporary files.

    \b
    Example:
      extctl dev                      # the bundled demo
      extctl dev app.processor:Redact --port 8080
      extctl dev app.processor:Redact --wasm plugin.wasm --filter-order wasm:before:ext_proc
      extctl dev --wasm oci://registry.example.com/filters/tag:v1 --wasm-config '{"a": 1}'
    """
    from .dev import DevStack, DevWasm
    from .filter_order import FilterPosition
    from .wasm_commands import _connection, _errors

    _setup_logging(log_level)
    cls: type[extproc.Processor] | None
    if processor is not None:
        cls = _load(processor, app_dir)
    elif not wasm:
        from .demo import Demo

        cls = Demo
    else:
        cls = None
    if wasm_sha256 and len(wasm) != 1:
        raise click.UsageError("--wasm-sha256 applies to exactly one --wasm module")
    try:
        order = [FilterPosition.parse(p) for p in filter_order]
    except ConfigError as exc:
        _fail(str(exc), exit_codes.USAGE)
    with _errors():
        modules = [DevWasm(source, sha256=wasm_sha256, configuration=wasm_config,
                           root_id=wasm_root_id,
                           connection=_connection(source, None, False, docker_config, None,
                                                  ca_file, insecure)
                           if source.startswith("oci://") else
                           registry.Connection(ca_file=ca_file))
                   for source in wasm]
        try:
            DevStack(cls, port=port, wasm=modules, filter_order=order,
                     envoy_log_level=envoy_log_level).run()
        except EnvoyError as exc:
            _fail(str(exc), exit_codes.ENVOY)
        except extproc.ServeError as exc:
            _fail(str(exc), exit_codes.STARTUP)
        except (UsageError, ConfigError) as exc:
            _fail(str(exc), exit_codes.USAGE)
        except ExtctlError as exc:
            _fail(str(exc), exit_codes.ERROR)


def _add_wasm_commands() -> None:
    from .gen_commands import gen
    from .new_commands import new
    from .wasm_commands import check, inspect, pull, push, verify

    for command in (push, pull, inspect, verify, check, gen, new):
        cli.add_command(command)


_add_wasm_commands()


def main() -> None:
    cli(prog_name="extctl")
