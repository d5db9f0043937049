"""Exit codes of ``extctl`` (documented in docs/reference/exit-codes.md) and the one table that
maps the libraries' errors to them.

Commands raise the libraries' own exceptions; the command group turns any of them into a
:class:`Failure`, which carries its exit code (as click's exceptions do) and prints one line.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import IO, Any

import click

OK = 0
ERROR = 1  # an error not listed below; also: serve cut in-flight streams (2nd SIGINT, SIGQUIT)
USAGE = 2  # bad options or arguments (click's own usage errors use 2 as well)
STARTUP = 3  # the server could not start: socket in use, address taken, on_startup failed
IMPORT = 4  # MODULE:CLASS could not be imported or is not a valid Processor
ENVOY = 5  # Envoy is missing, exited at start, never became ready; a port dev needs is taken
DIGEST = 6  # a digest/sha256 did not match; nothing was written
AUTH = 7  # the registry refused the credentials (401/403) or none were found
NOT_FOUND = 8  # repository, tag or blob not found
INVALID = 9  # not a Wasm module, unsupported image layout, unsafe archive, bad reference
TRANSPORT = 10  # TLS failure, connection refused, repeated 5xx; Envoy's admin unreadable
UNHEALTHY = 11  # health: a worker is NOT_SERVING, or did not answer within the deadline
FINDINGS = 12  # doctor: the running Envoy lacks something expected (the report says what)
BUILD = 13  # gen module: the dynamic module cannot be built here (compiler, libpython, Envoy)

class Failure(click.ClickException):
    """An expected failure: ``error: MESSAGE`` on one line, and its exit code; under it,
    ``where``: the user's own traceback lines when their code raised (an import, a hook)."""

    def __init__(self, message: str, exit_code: int = ERROR, where: str = "") -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click declares a class default
        self.where = where

    def show(self, file: IO[Any] | None = None) -> None:
        # Messages quote what servers and files said: never raw escape sequences.
        from registry.untrusted import escape

        message = escape(self.format_message(), 2000)
        logs = sys.modules.get("extproc.logs")
        if file is None and logs is not None and logs.current_format() == "json":
            # --log-format json: every line on stderr is a JSON object, this one too.
            import logging

            extra: dict[str, Any] = {"exit_code": self.exit_code}
            if self.where:
                extra["where"] = self.where
            logging.getLogger("extctl").error("error: %s", message, extra=extra)
            return
        click.echo(f"error: {message}", err=True, file=file)
        if self.where:
            click.echo(self.where, err=True, file=file)


# Error class (module, name) -> exit code, most specific first: the first match wins. Named,
# not imported: an exception's class is loaded by the time it is raised, so a class whose
# module was never imported cannot match, and failing imports nothing.
TABLE: tuple[tuple[str, str, int], ...] = (
    ("registry.errors", "DigestMismatch", DIGEST),
    ("wasm.errors", "DigestMismatch", DIGEST),
    ("registry.errors", "AuthError", AUTH),
    ("registry.errors", "NotFound", NOT_FOUND),
    ("registry.errors", "TransportError", TRANSPORT),
    ("registry.errors", "InvalidReference", INVALID),
    ("registry.errors", "UnsupportedImage", INVALID),
    ("registry.errors", "UnsafeArchive", INVALID),
    ("wasm.errors", "InvalidModule", INVALID),
    ("registry.errors", "RegistryError", ERROR),
    ("extproc.errors", "ImportFromStringError", IMPORT),
    ("extproc.errors", "ProcessorDefinitionError", IMPORT),
    ("extproc.errors", "ServeError", STARTUP),
    ("extproc.errors", "BuildError", BUILD),
    ("extctl.errors", "EnvoyError", ENVOY),
    ("extctl.errors", "PortInUse", ENVOY),
    ("extctl.errors", "Unhealthy", UNHEALTHY),
    ("extctl.errors", "DoctorFindings", FINDINGS),
    ("extctl.errors", "AdminError", TRANSPORT),
    ("extctl.errors", "UsageError", USAGE),
    ("extctl.config.errors", "ConfigError", USAGE),
    ("extctl.errors", "ScaffoldError", ERROR),
    ("extctl.errors", "ExtctlError", ERROR),
    ("wasm.errors", "WasmError", ERROR),
)


def failure(exc: BaseException,
            spell: Callable[[str], str | None] | None = None) -> Failure | None:
    """The Failure an error of the libraries becomes, or None for anything else (a bug);
    ``spell`` names a parameter the message names as the command's flag (see
    :meth:`extproc.errors.ExtkitError.spelled`)."""
    if isinstance(exc, Failure):
        return exc
    for module, name, code in TABLE:
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(exc, getattr(loaded, name)):
            spelled = getattr(exc, "spelled", None)
            message = spelled(spell) if spelled is not None and spell is not None else str(exc)
            return Failure(message, code, getattr(exc, "where", ""))
    return None
