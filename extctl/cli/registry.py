"""``extctl registry``: a local OCI registry on loopback, in the foreground, for trying push,
pull and Envoy's Wasm fetches without an account anywhere."""

from __future__ import annotations

import click


@click.command()
@click.option("--port", type=click.IntRange(min=1, max=65535), default=5000, show_default=True,
              help="Port on 127.0.0.1.")
@click.option("--storage", metavar="DIR", type=click.Path(file_okay=False),
              help="Where images are kept (default: a temporary directory, removed on exit).")
def registry(port: int, storage: str | None) -> None:
    """Serve an OCI registry (Debian's docker-registry) on 127.0.0.1 until Ctrl-C: plain
    HTTP and no accounts, reachable from this machine only. extctl talks to it with
    --insecure (plain HTTP is for loopback registries only). A taken port exits 5.

    \b
    Example:
      extctl registry --port 5000 &
      extctl push build/filter.wasm oci://127.0.0.1:5000/filters/tagger:v1 --insecure
      extctl pull oci://127.0.0.1:5000/filters/tagger:v1 -o filter.wasm --insecure
    """
    from extproc.lifecycle import capture_signals

    from ..harness.registry import LocalRegistry

    with LocalRegistry(port, storage) as running, \
            capture_signals(lambda signum: running.interrupt()):
        click.echo(f"registry: http://{running.host} (storage {running.storage}); "
                   "Ctrl-C stops it", err=True)
        click.echo(f"try: extctl push FILE.wasm oci://{running.host}/NAME:TAG --insecure",
                   err=True)
        running.wait()
    click.echo("registry stopped", err=True)
