"""Errors raised by the ext_proc framework.

    ExtprocError                 base of everything this package raises on purpose
    ├── MutationError            a header/body change Envoy would ignore or reject (raised in hooks)
    ├── ProcessorDefinitionError a Processor subclass that cannot work (raised at class creation)
    ├── ProtocolError            Envoy sent something the ext_proc protocol does not allow
    ├── ImportFromStringError    ``module:Class`` could not be imported
    └── ServeError               the server cannot start (bad address, socket in use, TLS files)

``MutationError`` and ``ProcessorDefinitionError`` are also ``ValueError`` / ``TypeError`` so
plain ``except ValueError`` code keeps working.
"""

from __future__ import annotations


class ExtprocError(Exception):
    """Base class of the errors this package raises."""


class MutationError(ExtprocError, ValueError):
    """A mutation that Envoy would silently ignore or reject, refused where it is made."""


class ProcessorDefinitionError(ExtprocError, TypeError):
    """A Processor subclass whose attributes and hooks contradict each other."""


class ProtocolError(ExtprocError):
    """A message sequence from Envoy that the ext_proc protocol does not allow."""


class ImportFromStringError(ExtprocError):
    """``module:attribute`` could not be resolved to a Processor subclass."""


class ServeError(ExtprocError):
    """The server cannot start with the given settings."""
