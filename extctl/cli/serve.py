"""``extctl serve``: a Processor subclass over gRPC for Envoy's ext_proc filter."""

from __future__ import annotations

import sys

import click

from . import options


@click.command()
@click.argument("processor", metavar="MODULE:CLASS")
@click.option("--uds", metavar="PATH", help="Listen on this Unix socket (the sidecar case).")
@click.option("--address", metavar="HOST:PORT", help="Listen on TCP instead.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Server processes. Worker i listens on NAME-i.EXT (Unix) or PORT+i (TCP); "
                   "list them all as endpoints of Envoy's ext_proc cluster.")
@click.option("--socket-mode", type=options.Octal(), default="660", show_default=True,
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
@options.app_dir
@options.log_level
def serve(processor: str, app_dir: str, log_level: str, **settings: object) -> None:
    """Serve a Processor subclass over gRPC for Envoy's ext_proc filter.

    SIGTERM/SIGINT drain in-flight requests within --grace-period and exit 0;
    a second signal cuts them and exits 1.

    \b
    Example:
      extctl serve app.processor:Redact --uds /var/run/extproc/extproc.sock
      extctl serve app.processor:Redact --address 127.0.0.1:9000 --workers 2
    """
    import extproc

    from ..errors import UsageError

    options.setup_logging(log_level)
    cls = options.load_processor(processor, app_dir)
    try:
        config = extproc.ServerConfig(**settings)  # type: ignore[arg-type]
    except extproc.ServeError as exc:
        raise UsageError(str(exc)) from None
    sys.exit(extproc.serve(cls, config))
