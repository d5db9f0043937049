"""Options more than one command takes, declared once."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    import extproc
    import registry

    from ..config import Policy

F = TypeVar("F", bound=Callable[..., Any])

LOG_LEVELS = click.Choice(["debug", "info", "warning", "error"], case_sensitive=False)


def apply(function: F, *options: Callable[[F], F]) -> F:
    """Decorate ``function`` with ``options`` in the order --help shows them."""
    for option in reversed(options):
        function = option(function)
    return function


def flags(**spelled: str) -> Callable[[F], F]:
    """Spell library parameters the command has no option of the same name for, in the
    messages of the errors it fails with (``@flags(addresses="--uds")``); its own options are
    spelled as themselves (``uds`` -> ``--uds``)."""
    def decorate(function: F) -> F:
        function.__extctl_flags__ = spelled  # type: ignore[attr-defined]
        return function
    return decorate


def flags_of(command: click.Command) -> dict[str, str]:
    """Library parameter -> how ``command`` spells it: its options' flags by parameter name
    (``--out`` rather than ``-o``), and what :func:`flags` adds."""
    spelled: dict[str, str] = {}
    for param in command.params:
        if isinstance(param, click.Option) and param.name:
            spelled[param.name] = max(param.opts, key=len)
    callback = command.callback
    while callback is not None:  # through the error-translating wrapper to the function
        spelled.update(getattr(callback, "__extctl_flags__", {}))
        callback = getattr(callback, "__wrapped__", None)
    return spelled


def current_flags() -> dict[str, str]:
    """:func:`flags_of` the command running now."""
    return flags_of(click.get_current_context().command)


def load_processor(spec: str, app_dir: str) -> type[extproc.Processor]:
    """``MODULE:CLASS`` imported with ``app_dir`` first on ``sys.path``."""
    import extproc

    return extproc.import_processor(spec, app_dir)


def setup_logging(level: str, format: str = "text") -> None:
    """stderr at ``level``, as text or one JSON object per line (``extproc.logs``)."""
    from extproc.logs import setup

    setup(level, format)
    if format == "json" or level.lower() != "debug":
        import os

        # gRPC's core writes its own lines to stderr ("E1206 ... add_port.cc:83] Failed to
        # add port"); what it would say reaches the user through the errors that name it.
        # --log-level debug keeps them (as does GRPC_VERBOSITY set by the user).
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")


app_dir = click.option("--app-dir", default=".", show_default=True,
                       help="Directory added to sys.path before importing MODULE.")
log_level = click.option("--log-level", type=LOG_LEVELS, default="info", show_default=True)
log_format = click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
    help="text, or one JSON object per line (keys: time, level, logger, pid, message and, when a "
         "line has them, request_id, processor, phase, outcome, status, grpc_code, "
         "duration_ms, phases, hooks, exit_code, exception).")
reload_dir = click.option("--reload-dir", multiple=True,
                          type=click.Path(file_okay=False, exists=True),
                          help="Watch this directory instead of --app-dir (repeatable).")
clusters = (
    click.option("--cluster", "http_clusters", multiple=True, metavar="NAME=HOST:PORT",
                 help="A cluster the Wasm modules call out to by NAME (HTTP/1.1; repeatable)."),
    click.option("--grpc-cluster", "grpc_clusters", multiple=True, metavar="NAME=HOST:PORT",
                 help="A cluster the Wasm modules call by NAME over gRPC (HTTP/2; "
                      "repeatable)."),
)


def callout_clusters(http_clusters: tuple[str, ...],
                     grpc_clusters: tuple[str, ...]) -> list[Any]:
    """``--cluster`` and ``--grpc-cluster`` values as :class:`~extctl.config.CalloutCluster`."""
    from ..config import CalloutCluster

    return ([CalloutCluster.parse(text) for text in http_clusters]
            + [CalloutCluster.parse(text, http2=True) for text in grpc_clusters])


output = click.option("--output", type=click.Choice(["text", "json"]), default="text",
                      show_default=True)


class Octal(click.ParamType):  # type: ignore[type-arg]
    name = "octal mode"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return int(str(value), 8)
        except ValueError:
            self.fail(f"{value!r} is not an octal file mode such as 660", param, ctx)


class Lines(click.ParamType):  # type: ignore[type-arg]
    """Text whose repeated values come from an environment variable one per line, not split
    on spaces (JSON has spaces)."""

    name = "text"
    envvar_list_splitter = "\n"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        return str(value)


# -- registry access (push, pull, inspect, dev) ---------------------------------------------

registry_options = (
    click.option("--username", help="Registry user (password from --password-stdin)."),
    click.option("--password-stdin", is_flag=True, help="Read the password from stdin."),
    click.option("--docker-config", type=click.Path(dir_okay=False),
                 help="docker config.json (default: $DOCKER_CONFIG or ~/.docker)."),
    click.option("--secret-file", type=click.Path(exists=True, dir_okay=False),
                 help="A kubernetes.io/dockerconfigjson Secret (what pullSecretRef names)."),
    click.option("--ca-file", type=click.Path(exists=True, dir_okay=False),
                 help="PEM CA bundle for a private registry or HTTPS server."),
    click.option("--insecure", is_flag=True, help="Plain HTTP (registries on loopback)."),
    click.option("--timeout", type=click.FloatRange(min=0.1), default=300.0,
                 show_default=True, help="Deadline of each request in seconds (on top of a "
                 "60 s timeout per read)."),
)


def connection(ref: str, username: str | None = None, password_stdin: bool = False,
               docker_config: str | None = None, secret_file: str | None = None,
               ca_file: str | None = None, insecure: bool = False,
               timeout: float | None = None, **_: Any) -> registry.Connection:
    """How to reach the registry of ``ref``, from the registry options."""
    import registry

    from ..errors import UsageError

    host = registry.parse_reference(ref).registry
    credentials = None
    if username:
        if not password_stdin:
            raise UsageError("--username needs --password-stdin (the password on stdin)")
        credentials = registry.Credentials(username, sys.stdin.readline().rstrip("\n"),
                                           "--username")
    elif secret_file:
        credentials = registry.from_secret_file(host, secret_file)
    else:
        credentials = registry.from_docker_config(host, docker_config)
    if insecure and not registry.is_loopback(host):
        raise UsageError("--insecure (plain HTTP) is only for a registry on loopback "
                         "(localhost, 127.0.0.0/8, [::1])")
    if timeout is None:
        return registry.Connection(credentials, ca_file=ca_file, insecure=insecure)
    return registry.Connection(credentials, ca_file=ca_file, insecure=insecure,
                               timeout=timeout)


# -- the policy both generators take, from Policy's fields ----------------------------------

# How a Policy field is spelled on the command line; help comes from the field's metadata.
_POLICY_FLAGS: dict[str, dict[str, Any]] = {
    "fail_open": {"flag": "--fail-open", "is_flag": True},
    "message_timeout": {"flag": "--message-timeout", "type": click.FloatRange(min=0.001)},
    "allow_cidrs": {"flag": "--allow-cidr", "multiple": True, "metavar": "CIDR"},
    "deny_cidrs": {"flag": "--deny-cidr", "multiple": True, "metavar": "CIDR"},
    "default_action": {"flag": "--default-action", "type": click.Choice(["Allow", "Deny"])},
    "session": {"flag": "--session", "metavar": "SourceIP|Header:NAME|Cookie:NAME[:TTL]"},
    "xff_trusted_hops": {"flag": "--xff-trusted-hops", "type": click.IntRange(min=0),
                         "default": 0},
    "filter_order": {"flag": "--filter-order", "multiple": True,
                     "metavar": "FILTER:before|after:FILTER"},
}


def field_options(cls: type, spelling: Mapping[str, Mapping[str, Any]], *,
                  defaults: bool = True,
                  param: Callable[[str, str], str] = lambda name, flag: name,
                  help_before: Mapping[str, str] | None = None) -> Callable[[F], F]:
    """One click option per field of the dataclass ``cls``, spelled as ``spelling`` says
    (``flag``, default ``--field-name``, and click settings; every field must be there);
    the help from the field's metadata (after ``help_before``), a ``choices`` list as a
    Choice, and with ``defaults`` the field's default, shown (an Octal one as octal);
    ``param(name, flag)`` names the click parameter."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if set(fields) != set(spelling):
        raise AssertionError(f"every {cls.__name__} field needs its command-line spelling")
    made = []
    for name, spelled in spelling.items():
        found = fields[name]
        settings = {k: v for k, v in spelled.items() if k != "flag"}
        flag = str(spelled.get("flag", "--" + name.replace("_", "-")))
        if "choices" in found.metadata:
            settings.setdefault("type", click.Choice(found.metadata["choices"]))
        if defaults:
            default = None if found.default is dataclasses.MISSING else found.default
            if default is not None and isinstance(settings.get("type"), Octal):
                default = f"{default:o}"
            settings.update(default=default, show_default=default is not None)
        made.append(click.option(flag, param(name, flag), **settings,
                                 help=(help_before or {}).get(name, "")
                                 + found.metadata["help"]))

    def decorate(function: F) -> F:
        return apply(function, *made)
    return decorate


def policy_options(function: F) -> F:
    """One click option per :class:`~extctl.config.Policy` field."""
    from ..config import Policy

    return field_options(Policy, _POLICY_FLAGS, defaults=False)(function)


def policy(values: dict[str, Any], hash_algorithm: str = "ring_hash") -> Policy:
    """The Policy the policy options describe (their values are popped from ``values``)."""
    from ..config import FilterPosition, Policy, SessionPersistence

    given = {name: values.pop(name) for name in _POLICY_FLAGS}
    session = given.pop("session")
    return Policy(
        **given | {"filter_order": [FilterPosition.parse(p) for p in given["filter_order"]]},
        session=SessionPersistence.parse(session, hash_algorithm) if session else None)
