"""``extctl doctor``: what a running Envoy does with the extensions, from its admin endpoint."""

from __future__ import annotations

import click

from . import options


@click.command()
@click.argument("processor", metavar="[MODULE:CLASS]", required=False)
@click.option("--admin", required=True, metavar="URL",
              help="Envoy's admin endpoint, e.g. http://127.0.0.1:19000 (through kubectl "
                   "port-forward for a gateway's Envoy).")
@click.option("--wasm", multiple=True, metavar="NAME",
              help="A Wasm module that must be configured (repeatable).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="One deadline for the whole run, in seconds: every answer of the admin "
                   "endpoint, and the processors asked directly.")
@options.output
@options.app_dir
def doctor(processor: str | None, admin: str, wasm: tuple[str, ...], timeout: float,
           output: str, app_dir: str) -> None:
    """Report which listeners and routes run the ext_proc and Wasm filters (in their
    effective order), the ext_proc cluster's endpoints and health (Envoy's active health
    check and connections; a processor whose Unix socket is on this machine is also asked
    directly), whether Wasm modules loaded, and the ext_proc counters; with MODULE:CLASS,
    compare the processing mode Envoy has with the class's. Exit 0 when everything expected
    is there, 12 otherwise, 10 when the admin endpoint cannot be read.

    \b
    Example:
      kubectl port-forward -n envoy-gateway-system deploy/envoy-default-eg-1234 19000 &
      extctl doctor --admin http://127.0.0.1:19000 app:Redact --wasm tag
    """
    import json

    from ..diagnose.doctor import doctor as run
    from ..errors import DoctorFindings

    cls = options.load_processor(processor, app_dir) if processor else None
    report = run(admin, processor=cls, wasm=wasm, timeout=timeout)
    if output == "json":
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(report.text(), nl=False)
    if not report.ok:
        raise DoctorFindings(f"{len(report.problems)} problem(s) found in {report.admin}")
