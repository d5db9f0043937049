"""Exit codes of ``extctl`` (documented in the README) and the one table that maps the
libraries' errors to them.

Commands raise the libraries' own exceptions; the command group turns any of them into a
:class:`Failure`, which carries its exit code (as click's exceptions do) and prints one line.
"""

from __future__ import annotations

from typing import IO, Any

import click

OK = 0
ERROR = 1  # an error not listed below; also: serve cut in-flight streams after a second signal
USAGE = 2  # bad options or arguments (click's own usage errors use 2 as well)
STARTUP = 3  # the server could not start: socket in use, address taken, on_startup failed
IMPORT = 4  # MODULE:CLASS could not be imported or is not a valid Processor
ENVOY = 5  # Envoy is missing, exited at start, or never became ready
DIGEST = 6  # a digest/sha256 did not match; nothing was written
AUTH = 7  # the registry refused the credentials (401/403) or none were found
NOT_FOUND = 8  # repository, tag or blob not found
INVALID = 9  # not a Wasm module, unsupported image layout, unsafe archive, bad reference
TRANSPORT = 10  # TLS failure, connection refused, repeated 5xx

class Failure(click.ClickException):
    """An expected failure: ``error: MESSAGE`` on one line, and its exit code."""

    def __init__(self, message: str, exit_code: int = ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click declares a class default

    def show(self, file: IO[Any] | None = None) -> None:
        # Messages quote what servers and files said: never raw escape sequences.
        from registry.untrusted import escape

        click.echo(f"error: {escape(self.format_message(), 2000)}", err=True, file=file)


def table() -> tuple[tuple[type[BaseException], int], ...]:
    """Exception class -> exit code, most specific first (the first match wins).

    Built on first use so that commands that never fail import nothing for it.
    """
    import extproc
    import registry
    import wasm

    from ..config import ConfigError
    from ..errors import EnvoyError, ExtctlError, ScaffoldError, UsageError

    return (
        (registry.DigestMismatch, DIGEST),
        (wasm.DigestMismatch, DIGEST),
        (registry.AuthError, AUTH),
        (registry.NotFound, NOT_FOUND),
        (registry.TransportError, TRANSPORT),
        (registry.InvalidReference, INVALID),
        (registry.UnsupportedImage, INVALID),
        (registry.UnsafeArchive, INVALID),
        (wasm.InvalidModule, INVALID),
        (registry.RegistryError, ERROR),
        (extproc.ImportFromStringError, IMPORT),
        (extproc.ProcessorDefinitionError, IMPORT),
        (extproc.ServeError, STARTUP),
        (EnvoyError, ENVOY),
        (UsageError, USAGE),
        (ConfigError, USAGE),
        (ScaffoldError, ERROR),
        (ExtctlError, ERROR),
        (wasm.WasmError, ERROR),
    )


def failure(exc: BaseException) -> Failure | None:
    """The Failure an error of the libraries becomes, or None for anything else (a bug)."""
    if isinstance(exc, Failure):
        return exc
    for kind, code in table():
        if isinstance(exc, kind):
            return Failure(str(exc), code)
    return None
