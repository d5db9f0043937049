"""``extctl health``: one gRPC health check per worker, for probes and people."""

from __future__ import annotations

from collections.abc import Sequence

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
    within --timeout, nothing listening): one line per worker says which.

    \b
    Example:
      extctl health --uds /var/run/extproc/extproc.sock --workers 2
      extctl health --address 127.0.0.1:9000 --timeout 0.5 --output json
    """
    import json

    from extproc import ServeError, ServerConfig

    from ..diagnose.health import check
    from ..errors import UsageError
    from .exits import UNHEALTHY

    try:
        addresses = ServerConfig(uds=uds, address=address, workers=workers).addresses()
    except ServeError as exc:
        raise exc.recast(UsageError) from None
    from registry.untrusted import escape

    results = check(addresses, timeout, service)
    details = [_detail(r.detail, r.workers) for r in results]
    if output == "json":
        click.echo(json.dumps([{"address": r.address, "status": r.status, "detail": detail}
                               for r, detail in zip(results, details, strict=True)]))
    else:
        for r, detail in zip(results, details, strict=True):
            click.echo(escape(f"{r.address}: {r.status}" + (f" ({detail})" if detail else ""),
                              2000))
    if not all(r.serving for r in results):
        # The lines above say what is wrong; an error line would say it again.
        raise click.exceptions.Exit(UNHEALTHY)


def _detail(detail: str, workers: Sequence[str]) -> str:
    """The check's detail, and for a socket that is not there the workers' sockets that are."""
    if not workers:
        return detail
    found = ", ".join(workers[:-1]) + f" and {workers[-1]}" if len(workers) > 1 else workers[0]
    return (f"{detail}, but {found} {'are' if len(workers) > 1 else 'is'}: a server's "
            f"workers; check them with --workers {len(workers)}")
