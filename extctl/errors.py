"""Errors of the control side (CLI, config generation, the local Envoy runner), under
``extproc.errors.ExtkitError``, envoy-extkit's root.

    ExtctlError          base; the CLI prints its message on one line
    ├── EnvoyError       the Envoy binary is missing, exits at start, or never gets ready
    ├── PortInUse        a port the local stack must listen on is taken (exit code 5)
    ├── UsageError       options that contradict each other (exit code 2)
    ├── ConfigError      a configuration that cannot be generated (extctl.config; exit 2)
    │   └── GatewayError     a resource Envoy Gateway (or its CRDs' CEL rules) would refuse
    ├── OutputError      a file that cannot be written (the path and why)
    ├── ScaffoldError    a template could not be rendered (a bug of the template)
    ├── Unhealthy        a processor is not SERVING or cannot be reached (extctl health)
    ├── AdminError       Envoy's admin endpoint is unreachable or its answer unreadable
    └── DoctorFindings   a running Envoy lacks something expected (extctl doctor)
"""

from __future__ import annotations

from extproc.errors import ExtkitError


class ExtctlError(ExtkitError):
    """Base class of the errors extctl raises on purpose."""


class EnvoyError(ExtctlError):
    """Envoy could not be found or started; ``log`` holds Envoy's output when there is one."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log


class PortInUse(ExtctlError):
    """Another process listens on an address the local stack (``extctl dev``) needs: refused
    before anything starts, since Envoy's listeners set SO_REUSEPORT and would share it."""

    def __init__(self, message: str, address: str) -> None:
        super().__init__(message)
        self.address = address


class UsageError(ExtctlError):
    """Options that cannot work together."""


class OutputError(ExtctlError):
    """A file that cannot be written: no such directory, permissions, disk full."""


class ScaffoldError(ExtctlError):
    """A project template could not be rendered (a bug of the template, not of the input)."""


class Unhealthy(ExtctlError):
    """A processor answered its health check with something other than SERVING, or did not
    answer within the deadline."""


class AdminError(ExtctlError):
    """Envoy's admin endpoint could not be read: unreachable, too slow, too large, not JSON."""


class DoctorFindings(ExtctlError):
    """A running Envoy lacks something expected; the report says what."""
