"""``extctl dev``: a processor and/or Wasm modules behind a real Envoy, with an echo upstream."""

from __future__ import annotations

import dataclasses
import json
import shlex

import click

from . import options


@click.command()
@click.argument("processor", metavar="[MODULE:CLASS]", required=False)
@click.option("--port", type=click.IntRange(0, 65535), default=10000, show_default=True,
              help="Envoy's listener port on 127.0.0.1 (0: any free port; one another process "
                   "listens on is refused, exit 5).")
@click.option("--wasm", multiple=True,
              metavar="PATH|oci://REF|https://URL",
              help="A proxy-wasm module to run too (repeatable; remote ones are fetched and "
                   "verified first).")
@click.option("--wasm-sha256", help="Expected digest of the (single) --wasm module: manifest "
                                    "digest for oci://, body sha256 for https://.")
@click.option("--wasm-config", metavar="JSON",
              help="Plugin configuration of the module(s), a JSON value, as `gen` and Envoy "
                   "Gateway take it: the module receives its JSON text (a string arrives "
                   "quoted). Default: {} (some SDKs trap on none).")
@click.option("--wasm-config-text", metavar="TEXT",
              help="Instead of --wasm-config: text handed to the module(s) as is, '' for none "
                   "(a standalone Envoy can; Envoy Gateway hands modules JSON).")
@click.option("--wasm-root-id", default="", help="Root context id of the module(s).")
@click.option("--filter-order", "filter_order", multiple=True,
              metavar="FILTER:before|after:FILTER",
              help="Move filters from Envoy Gateway's default order (ext_proc, wasm).")
@click.option("--docker-config", type=click.Path(dir_okay=False),
              help="docker config.json with registry credentials (default: ~/.docker).")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False),
              help="PEM CA bundle for a private registry or HTTPS server.")
@click.option("--insecure", is_flag=True, help="Plain HTTP to a registry on loopback.")
@click.option("--admin", default="127.0.0.1:0", show_default=True, metavar="HOST:PORT",
              help="The processor's admin endpoint (/metrics, /healthz, /readyz); port 0: any "
                   "free port, printed at start (one in use is refused, exit 5).")
@options.app_dir
@click.option("--reload", is_flag=True,
              help="Restart the processor when a Python file under --app-dir (or --reload-dir) "
                   "changes, and Envoy when a local --wasm file does.")
@options.reload_dir
@options.clusters[0]
@options.clusters[1]
@click.option("--quiet", is_flag=True, help="No live view of the requests.")
@click.option("--output", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="The live view, on stdout (all else is on stderr): a "
              "block per request, or one JSON object per request: method, path, status and "
              "time as Envoy logged them, the phases Envoy sent the processor and each hook's "
              "time and changes, the request id.")
@options.log_level
@options.log_format
@click.option("--envoy-log-level", type=click.Choice(["trace", "debug", "info", "warning",
                                                       "error"]),
              default="warning", show_default=True,
              help="Envoy's own log (requests are shown by its access log either way).")
def dev(processor: str | None, port: int, wasm: tuple[str, ...],
        wasm_sha256: str | None, wasm_config: str | None, wasm_config_text: str | None,
        wasm_root_id: str,
        filter_order: tuple[str, ...], docker_config: str | None, ca_file: str | None,
        insecure: bool, admin: str, app_dir: str, reload: bool, reload_dir: tuple[str, ...],
        http_clusters: tuple[str, ...], grpc_clusters: tuple[str, ...], quiet: bool,
        output: str, log_level: str, log_format: str, envoy_log_level: str) -> None:
    """Try a processor and/or Wasm modules locally, with an echo upstream and a real Envoy.

    Without MODULE:CLASS (and without --wasm) the bundled demo processor runs. Prints the
    curl line to try and the filter chain, and the logs of all three, on stderr; stdout
    carries the live view alone. Ctrl-C stops everything and removes the sockets and
    temporary files.

    \b
    Example:
      extctl dev                      # the bundled demo
      extctl dev app.processor:Redact --port 8080 --reload
      extctl dev app.processor:Redact --wasm plugin.wasm --filter-order wasm:before:ext_proc
      extctl dev --wasm oci://registry.example.com/filters/tag:v1 --wasm-config '{"a": 1}'
      extctl dev --wasm auth.wasm --cluster auth=127.0.0.1:9000   # its callouts' target
    """
    import registry

    from ..config import FilterPosition, WasmModule
    from ..errors import UsageError
    from ..harness.dev import DevStack, Reload, module_name
    from ..harness.envoy import find_envoy

    options.setup_logging(log_level, log_format)
    find_envoy()  # before anything starts: without Envoy there is nothing to try
    cls = None
    if processor is not None:
        cls = options.load_processor(processor, app_dir)
    elif not wasm:
        from ..harness.demo import Demo

        cls = Demo
    if wasm_sha256 and len(wasm) != 1:
        raise UsageError("--wasm-sha256 applies to exactly one --wasm module")
    order = [FilterPosition.parse(p) for p in filter_order]
    config = _plugin_config(wasm_config, wasm_config_text)
    modules = [WasmModule.parse(f"{module_name(source)}={source}", config=config,
                                text=wasm_config_text, root_id=wasm_root_id)
               for source in wasm]
    if wasm_sha256:
        modules = [dataclasses.replace(modules[0], sha256=wasm_sha256)]
    # Each image's registry gets its own credentials, never another's.
    connections = {
        module.name: options.connection(module.image, docker_config=docker_config,
                                        ca_file=ca_file, insecure=insecure)
        if module.image else registry.Connection(ca_file=ca_file) for module in modules}
    watching = Reload(processor, app_dir, reload_dir, not quiet) if reload else None
    live = None
    if not quiet:
        from ..harness.view import LiveView

        # Envoy's line about each request, joined with the processor's record of its stream.
        live = LiveView(output, processor=cls is not None)
    DevStack(cls, port=port, wasm=modules, filter_order=order, connections=connections,
             live=live,
             envoy_log_level=envoy_log_level, reload=watching, admin=admin,
             clusters=options.callout_clusters(http_clusters, grpc_clusters)).run()


def _plugin_config(json_text: str | None, text: str | None) -> object:
    """--wasm-config parsed; None with --wasm-config-text, which goes as is."""
    from ..errors import UsageError

    if text is not None:
        if json_text is not None:
            raise UsageError("give --wasm-config (JSON) or --wasm-config-text, not both")
        return None
    if json_text is None:
        return {}
    try:
        return json.loads(json_text)
    except ValueError as exc:
        quoted = shlex.quote(json.dumps(json_text))
        raise UsageError(f"--wasm-config {shlex.quote(json_text)} is not JSON ({exc}): a "
                         f"string is {quoted}; --wasm-config-text hands text as is") from None
