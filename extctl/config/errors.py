"""Errors of the config library.

    ConfigError          a configuration that cannot be generated: the message names the input
    └── GatewayError     a resource Envoy Gateway (or a CEL rule of its CRDs) would refuse
"""

from __future__ import annotations

from ..errors import ExtctlError


class ConfigError(ExtctlError):
    """A configuration that cannot be generated: the message names the offending input."""


class GatewayError(ConfigError):
    """A resource Envoy Gateway would refuse (or a CEL rule of its CRDs would)."""
