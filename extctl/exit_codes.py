"""Exit codes of ``extctl`` commands (documented in the README), and the one way to fail."""

import sys
from typing import NoReturn

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


def fail(message: str, code: int) -> NoReturn:
    """Print ``error: message`` on one line to stderr and exit with ``code``."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)
