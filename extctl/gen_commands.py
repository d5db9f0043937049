"""``extctl gen gateway|envoy``: configuration generated from a Processor class.

Both commands share the options for what Envoy Gateway calls policies (client CIDRs, session
persistence, X-Forwarded-For hops, filter order), so one set of flags gives the same behaviour
from Envoy Gateway's resources and from the standalone Envoy config.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

import extproc
import wasm as wasm_module

from . import exit_codes
from .envoy_config import EnvoyConfig, ProcessorTls, WasmFilter, bootstrap, to_json
from .envoy_config import to_yaml as envoy_yaml
from .errors import ConfigError
from .filter_order import FilterPosition
from .gateway import GatewayConfig, Target, WasmSource, resources, to_yaml
from .session_persistence import SessionPersistence

F = TypeVar("F", bound=Callable[..., Any])


def _addresses(uds: str | None, address: str | None, workers: int,
               resolve: bool = True) -> list[str]:
    """Every worker's address; a relative socket path is made absolute (``resolve``) or, for
    Envoy Gateway, where only the pod's own paths mean anything, refused."""
    if uds is not None and not os.path.isabs(uds):
        if not resolve:
            raise click.BadParameter(f"{uds}: give the socket's absolute path as Envoy's "
                                     "container sees it", param_hint="--uds")
        uds = os.path.abspath(uds)
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


def _pairs(values: Sequence[str], option: str, what: str) -> dict[str, str]:
    """``NAME=VALUE`` options -> {name: value}."""
    found: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise click.BadParameter(f"{value!r} is not NAME={what}", param_hint=option)
        if name in found:
            raise click.BadParameter(f"{name} is given twice", param_hint=option)
        found[name] = rest
    return found


def _with_digest(value: str) -> tuple[str, str | None]:
    """``URL@sha256:HEX`` -> (URL, HEX); the digest is optional."""
    base, sep, digest = value.rpartition("@sha256:")
    if not sep:
        return value, None
    return base, digest


def parse_session(text: str | None, algorithm: str = "ring_hash") -> SessionPersistence | None:
    """``SourceIP``, ``Header:NAME`` or ``Cookie:NAME[:TTL]`` (kinds in any case)."""
    if text is None:
        return None
    kind, _, rest = text.partition(":")
    name, _, ttl = rest.partition(":")
    canonical = {k.lower(): k for k in ("SourceIP", "Header", "Cookie")}.get(kind.lower(), kind)
    return SessionPersistence(canonical, name or None, ttl or None, algorithm=algorithm)


def _wasm_extras(configs: Sequence[str], root_ids: Sequence[str], fail_open: Sequence[str],
                 names: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    config = _pairs(configs, "--wasm-config", "JSON")
    roots = _pairs(root_ids, "--wasm-root-id", "ROOT_ID")
    opened = dict.fromkeys(fail_open, "")
    for option, given in (("--wasm-config", config), ("--wasm-root-id", roots),
                          ("--wasm-fail-open", opened)):
        unknown = set(given) - set(names)
        if unknown:
            raise click.BadParameter(f"no Wasm module named {', '.join(sorted(unknown))}",
                                     param_hint=option)
    for name, text in config.items():
        try:
            json.loads(text)
        except ValueError as exc:
            raise click.BadParameter(f"{name}: not JSON ({exc})",
                                     param_hint="--wasm-config") from None
    return config, roots


class _Lines(click.ParamType):  # type: ignore[type-arg]
    """Text whose repeated values come from an environment variable one per line, not split
    on spaces (JSON has spaces)."""

    name = "text"
    envvar_list_splitter = "\n"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        return str(value)


def _policy_options(function: F) -> F:
    """The options both generators share, in the order --help shows them."""
    options = [
        click.option("--fail-open", is_flag=True,
                     help="Envoy continues without the processor when it fails."),
        click.option("--message-timeout", type=click.FloatRange(min=0.001),
                     help="Seconds Envoy waits per answer (default: the class's)."),
        click.option("--wasm-config", multiple=True, metavar="NAME=JSON", type=_Lines(),
                     help="Plugin configuration of a Wasm module (default: none; in the "
                          "environment variable, one NAME=JSON per line)."),
        click.option("--wasm-root-id", multiple=True, metavar="NAME=ROOT_ID",
                     help="Root context id of a Wasm module."),
        click.option("--wasm-fail-open", multiple=True, metavar="NAME",
                     help="Requests go on without this Wasm module when it fails to load "
                          "(default: they are refused)."),
        click.option("--allow-cidr", multiple=True, metavar="CIDR",
                     help="Only clients in these CIDRs get through (repeatable)."),
        click.option("--deny-cidr", multiple=True, metavar="CIDR",
                     help="Clients in these CIDRs get 403 (checked first; repeatable)."),
        click.option("--xff-trusted-hops", type=click.IntRange(min=0), default=0,
                     help="Client address: this many hops back in X-Forwarded-For."),
        click.option("--session", metavar="SourceIP|Header:NAME|Cookie:NAME[:TTL]",
                     help="Session persistence: consistent hashing to the upstreams."),
        click.option("--filter-order", "filter_order", multiple=True,
                     metavar="FILTER:before|after:FILTER",
                     help="Move filters from Envoy Gateway's default order "
                          "(e.g. wasm:before:ext_proc; repeatable, applied in order)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _run(build: Callable[[], str], output: str | None) -> None:
    """Build the text; a configuration that cannot be generated is a usage error (exit 2)."""
    try:
        text = build()
    except (ConfigError, extproc.ServeError) as exc:
        exit_codes.fail(str(exc), exit_codes.USAGE)
    _write(text, output)


@click.group()
def gen() -> None:
    """Generate Envoy Gateway resources or a standalone Envoy config from a Processor.

    \b
    Example:
      extctl gen gateway app:Redact --name redact --route backend --uds /run/x/extproc.sock
      extctl gen envoy app:Redact --uds /run/x/extproc.sock --upstream 127.0.0.1:8080
    """


@gen.command()
@click.argument("processor", metavar="[MODULE:CLASS]", required=False)
@click.option("--name", required=True, help="Name of the EnvoyExtensionPolicy (and Backend).")
@click.option("--namespace", default="default", show_default=True)
@click.option("--route", multiple=True, help="HTTPRoute to attach to (repeatable).")
@click.option("--gateway", multiple=True, help="Gateway to attach to (repeatable).")
@click.option("--uds", help="The processor's Unix socket (the sidecar).")
@click.option("--address", help="The processor's host:port instead.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Server workers: the Backend lists each one's address.")
@click.option("--tls-ca-configmap", help="TLS to a TCP processor: ConfigMap with its CA (ca.crt).")
@click.option("--tls-client-secret", help="TLS client certificate Secret Envoy presents.")
@click.option("--tls-sni", help="Server name Envoy sends to the processor.")
@click.option("--wasm-image", multiple=True, metavar="NAME=oci://REF@sha256:HEX",
              help="A Wasm image (its manifest digest, as `extctl push` prints it).")
@click.option("--wasm-http", multiple=True, metavar="NAME=URL@sha256:HEX",
              help="A Wasm module Envoy Gateway downloads (sha256 of the body).")
@click.option("--pull-secret", help="Secret for the Wasm images (pullSecretRef).")
@click.option("--pull-policy", type=click.Choice(["IfNotPresent", "Always"]),
              help="When Envoy Gateway fetches the Wasm code again.")
@_policy_options
@click.option("--default-action", type=click.Choice(["Allow", "Deny"]),
              help="SecurityPolicy action for other clients (default: Deny with "
                   "--allow-cidr, else Allow).")
@click.option("--client-gateway",
              help="Gateway for the ClientTrafficPolicy (default: the --gateway target).")
@click.option("--app-dir", default=".", show_default=True)
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False),
              help="Write to this file (atomically; default: stdout).")
def gateway(processor: str | None, name: str, namespace: str, route: tuple[str, ...],
            gateway: tuple[str, ...], uds: str | None, address: str | None, workers: int,
            tls_ca_configmap: str | None, tls_client_secret: str | None, tls_sni: str | None,
            wasm_image: tuple[str, ...], wasm_http: tuple[str, ...], pull_secret: str | None,
            pull_policy: str | None, fail_open: bool, message_timeout: float | None,
            wasm_config: tuple[str, ...], wasm_root_id: tuple[str, ...],
            wasm_fail_open: tuple[str, ...],
            allow_cidr: tuple[str, ...], deny_cidr: tuple[str, ...], xff_trusted_hops: int,
            session: str | None, filter_order: tuple[str, ...], default_action: str | None,
            client_gateway: str | None, app_dir: str, out: str | None) -> None:
    """Envoy Gateway resources: EnvoyExtensionPolicy + Backend (Envoy sends only the phases
    the class handles), and the SecurityPolicy, BackendTrafficPolicy, ClientTrafficPolicy and
    EnvoyProxy the options ask for.

    \b
    Example:
      extctl gen gateway app:Redact --name redact --route backend \\
          --uds /var/run/extproc/extproc.sock --workers 2 --session Header:x-user
      extctl gen gateway --name filters --gateway eg \\
          --wasm-image redact=oci://registry.example.com/f/redact:v1@sha256:9e31... \\
          --wasm-config 'redact={"words": ["secret"]}' --filter-order wasm:before:ext_proc
    """
    from .cli import _load

    cls = _load(processor, app_dir) if processor else None
    images = _pairs(wasm_image, "--wasm-image", "oci://REF@sha256:HEX")
    urls = _pairs(wasm_http, "--wasm-http", "URL@sha256:HEX")
    if set(images) & set(urls):
        raise click.BadParameter("a Wasm module name is used twice", param_hint="--wasm-http")
    config, roots = _wasm_extras(wasm_config, wasm_root_id, wasm_fail_open,
                                 [*images, *urls])
    for wasm_name, url in urls.items():
        if not _with_digest(url)[1]:
            raise click.BadParameter(f"{wasm_name}: an HTTP module needs @sha256:HEX (Envoy "
                                     "Gateway checks the download)", param_hint="--wasm-http")
    for wasm_name, ref in images.items():
        if not _with_digest(ref)[1]:
            raise click.BadParameter(f"{wasm_name}: give the image's manifest digest, "
                                     "oci://REF@sha256:HEX, as `extctl push` prints it (a tag "
                                     "alone can change under you)", param_hint="--wasm-image")

    def build() -> str:
        wasm = []
        for wasm_name, source in [*images.items(), *urls.items()]:
            base, digest = _with_digest(source)
            image = wasm_name in images
            wasm.append(WasmSource(
                wasm_name, image=base if image else None, http=None if image else base,
                sha256=digest, pull_secret=pull_secret if image else None,
                pull_policy=pull_policy, root_id=roots.get(wasm_name),
                fail_open=wasm_name in wasm_fail_open,
                config=json.loads(config[wasm_name]) if wasm_name in config else None))
        return to_yaml(resources(GatewayConfig(
            name=name, namespace=namespace,
            targets=[*(Target("HTTPRoute", r) for r in route),
                     *(Target("Gateway", g) for g in gateway)],
            processor=cls,
            processor_addresses=_addresses(uds, address, workers, resolve=False) if cls else (),
            tls_ca_configmap=tls_ca_configmap, tls_client_secret=tls_client_secret,
            tls_sni=tls_sni, fail_open=fail_open, message_timeout=message_timeout, wasm=wasm,
            allow_cidrs=allow_cidr, deny_cidrs=deny_cidr, default_action=default_action,
            session=parse_session(session), xff_trusted_hops=xff_trusted_hops,
            client_gateway=client_gateway,
            filter_order=[FilterPosition.parse(p) for p in filter_order])))

    _run(build, out)


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
@_policy_options
@click.option("--hash-algorithm", type=click.Choice(["ring_hash", "maglev"]),
              default="ring_hash", show_default=True, help="Load balancer for --session.")
@click.option("--access-log", is_flag=True, help="Log each request to Envoy's stdout.")
@click.option("--format", type=click.Choice(["yaml", "json"]), default="yaml",
              show_default=True)
@click.option("--app-dir", default=".", show_default=True)
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False),
              help="Write to this file (atomically; default: stdout).")
def envoy(processor: str | None, uds: str | None, address: str | None, workers: int,
          tls_ca: str | None, tls_cert: str | None, tls_key: str | None, tls_sni: str | None,
          listen: str, admin: str, upstream: tuple[str, ...], wasm: tuple[str, ...],
          fail_open: bool, message_timeout: float | None, wasm_config: tuple[str, ...],
          wasm_root_id: tuple[str, ...], wasm_fail_open: tuple[str, ...],
          allow_cidr: tuple[str, ...],
          deny_cidr: tuple[str, ...], xff_trusted_hops: int, session: str | None,
          filter_order: tuple[str, ...], hash_algorithm: str, access_log: bool, format: str,
          app_dir: str, out: str | None) -> None:
    """A standalone Envoy bootstrap, built from typed xds-protos messages: listener, the
    filters (RBAC, Wasm, ext_proc from the class) in Envoy Gateway's order, the upstreams.

    \b
    Example:
      extctl gen envoy app:Redact --uds /run/extproc/extproc.sock --upstream 127.0.0.1:8080
      extctl gen envoy --wasm tag=./plugin.wasm --wasm-config 'tag={}' \\
          --upstream 10.0.0.1:80 --upstream 10.0.0.2:80 --session Cookie:sticky:1h
    """
    from .cli import _load

    cls = _load(processor, app_dir) if processor else None
    sources = _pairs(wasm, "--wasm", "PATH|URL@sha256:HEX")
    config, roots = _wasm_extras(wasm_config, wasm_root_id, wasm_fail_open, list(sources))
    for wasm_name, source in sources.items():
        if source.startswith("oci://"):
            raise click.BadParameter(
                f"{wasm_name}: Envoy cannot pull an image; pull it first "
                f"(extctl pull {_with_digest(source)[0]} -o {wasm_name}.wasm --sha256 DIGEST) "
                f"and give the file", param_hint="--wasm")
        if not source.startswith(("http://", "https://")):
            if not Path(source).is_file():
                raise click.BadParameter(f"{wasm_name}: {source} is not a file",
                                         param_hint="--wasm")
            from .wasm_commands import _errors

            with _errors():  # Envoy would refuse to start: say so now (exit 9)
                wasm_module.inspect_file(source)
    if cls is None and (uds or address):
        raise click.UsageError("--uds/--address need MODULE:CLASS")

    def build() -> str:
        wasm = []
        for wasm_name, source in sources.items():
            base, digest = _with_digest(source)
            remote = base.startswith(("http://", "https://"))
            wasm.append(WasmFilter(
                wasm_name, path=None if remote else str(Path(base).resolve()),
                url=base if remote else None, sha256=digest,
                root_id=roots.get(wasm_name, ""), configuration=config.get(wasm_name, ""),
                fail_open=wasm_name in wasm_fail_open))
        if tls_ca is None and (tls_cert or tls_key or tls_sni):
            raise ConfigError("TLS to the processor needs --tls-ca")
        tls = ProcessorTls(tls_ca, tls_cert, tls_key, tls_sni) if tls_ca else None
        message = bootstrap(EnvoyConfig(
            cls, _addresses(uds, address, workers) if cls else (), processor_tls=tls,
            upstream=list(upstream) or None, listen=listen, admin=admin,
            failure_mode_allow=fail_open,
            message_timeout=message_timeout, wasm=wasm, allow_cidrs=allow_cidr,
            deny_cidrs=deny_cidr, xff_num_trusted_hops=xff_trusted_hops,
            session=parse_session(session, hash_algorithm), access_log=access_log,
            filter_order=[FilterPosition.parse(p) for p in filter_order]))
        return envoy_yaml(message) if format == "yaml" else to_json(message) + "\n"

    _run(build, out)
