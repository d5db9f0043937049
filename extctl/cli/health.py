"""``extctl health``: one gRPC health check per worker, for probes and people."""

from __future__ import annotations

import click

from . import options


@click.command()
@click.option("--uds", metavar="PATH", help="The processor's Unix socket (as given to serve).")
@click.option("--address", metavar="HOST:PORT", help="The processor's TCP address instead.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Check every worker's socket or port, as serve --workers names them.")
@click.option("--timeout", type=click.FloatRange(min=0.01), default=1.0, show_default=True,
              help="Deadline of each check, in seconds.")
@click.option("--service", default="", help="Service name to ask about (default: the server).")
@options.output
def health(uds: str | None, address: str | None, workers: int, timeout: float, service: str,
           output: str) -> None:
    """Exit 0 when every worker answers SERVING, 11 otherwise (NOT_SERVING, no answer
    within --timeout, nothing listening).

    \b
    Example:
      extctl health --uds /var/run/extproc/extproc.sock --workers 2
      extctl health --address 127.0.0.1:9000 --timeout 0.5 --output json
    """
    import json

    from extproc import ServeError, ServerConfig

    from ..diagnose.health import check, require_serving
    from ..errors import UsageError

    try:
        addresses = ServerConfig(uds=uds, address=address, workers=workers).addresses()
    except ServeError as exc:
        raise UsageError(str(exc)) from None
    from registry.untrusted import escape

    results = check(addresses, timeout, service)
    if output == "json":
        click.echo(json.dumps([{"address": r.address, "status": r.status, "detail": r.detail}
                               for r in results]))
    else:
        for r in results:
            click.echo(escape(f"{r.address}: {r.status}"
                              + (f" ({r.detail})" if r.detail else ""), 2000))
    require_serving(results)
