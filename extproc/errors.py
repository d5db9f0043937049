"""The errors of envoy-extkit: one root a user can catch, each package's tree under it.

    ExtkitError                  everything any envoy-extkit package raises on purpose
    ├── ExtprocError             this package (below)
    ├── wasm.WasmError           the Wasm tools and the emulator (``wasm.errors``)
    ├── registry.RegistryError   the OCI client (``registry.errors``)
    └── extctl.errors.ExtctlError  the CLI, config generation, the Envoy harness

    ExtprocError                 base of everything this package raises on purpose
    ├── MutationError            a header/body change Envoy would ignore or reject (raised in hooks)
    ├── ProcessorDefinitionError a Processor subclass that cannot work (raised at class creation)
    ├── ProtocolError            Envoy sent something the ext_proc protocol does not allow
    ├── ImportFromStringError    ``module:Class`` could not be imported
    └── ServeError               the server cannot start (bad address, socket in use, TLS files)

    HookNameWarning (a UserWarning)  an ``on_*`` method of a Processor subclass that is no
                                 hook (a typo): warned when the class is defined

``MutationError`` and ``ProcessorDefinitionError`` are also ``ValueError`` / ``TypeError`` so
plain ``except ValueError`` code keeps working. The root lives here, in a module that imports
nothing, so that every package may derive from it.
"""

from __future__ import annotations


class ExtkitError(Exception):
    """The root of every error envoy-extkit raises on purpose."""


class ExtprocError(ExtkitError):
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


class HookNameWarning(UserWarning):
    """A Processor subclass defines an ``on_*`` method that is not a hook (``on_request_header``
    for ``on_request_headers``): no phase calls it, and Envoy is not told to send one for it.
    Silence it for a helper with ``warnings.filterwarnings("ignore",
    category=extproc.HookNameWarning)``, or name the helper without ``on_``."""
