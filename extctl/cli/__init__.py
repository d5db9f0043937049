"""``extctl``: thin click commands over library calls.

Every option is also an environment variable: ``EXTCTL_<COMMAND>_<OPTION>``
(e.g. ``EXTCTL_SERVE_UDS``). Exit codes are in :mod:`extctl.cli.exits`. A command's module is
imported only when that command runs, so ``extctl pull`` never loads gRPC or wasmtime.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

import click

from .. import __version__
from . import options
from .exits import failure

# name -> "module:attribute", in the order --help lists them.
_COMMANDS = {
    "serve": "extctl.cli.serve:serve",
    "dev": "extctl.cli.dev:dev",
    "new": "extctl.cli.new:new",
    "gen": "extctl.cli.gen:gen",
    "push": "extctl.cli.wasm:push",
    "pull": "extctl.cli.wasm:pull",
    "inspect": "extctl.cli.wasm:inspect",
    "verify": "extctl.cli.wasm:verify",
    "check": "extctl.cli.wasm:check",
    "health": "extctl.cli.health:health",
    "doctor": "extctl.cli.doctor:doctor",
    "registry": "extctl.cli.registry:registry",
}


class _Commands(click.Group):
    """Commands imported on first use; the libraries' errors become one-line failures."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attribute = target.partition(":")
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return _failing_in_its_terms(command)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # click's own: it prints and exits with their codes
        except Exception as exc:
            mapped = failure(exc)
            if mapped is None:
                raise
            raise mapped from None


def _failing_in_its_terms(command: click.Command) -> click.Command:
    """``command`` (and a group's subcommands), its callback turning the libraries' errors into
    Failures whose messages name the parameters they mention as its flags (``uds`` ->
    ``--uds``; more in the callback's ``__extctl_flags__``, see :func:`options.flags`)."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _failing_in_its_terms(sub)
    callback = command.callback
    if callback is None or getattr(callback, "__extctl_wrapped__", False):
        return command
    flags = options.flags_of(command)

    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            mapped = failure(exc, flags.get)
            if mapped is None:
                raise
            raise mapped from None

    run.__extctl_wrapped__ = True  # type: ignore[attr-defined]
    command.callback = run
    return command


@click.group(cls=_Commands, context_settings={"auto_envvar_prefix": "EXTCTL",
                                              "help_option_names": ["-h", "--help"]})
@click.version_option(version=__version__, prog_name="extctl")
def cli() -> None:
    """envoy-extkit: extend Envoy and Envoy Gateway with ext_proc processors and Wasm
    modules."""


def main() -> None:
    cli(prog_name="extctl")
