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
nothing of the project, so that every package may derive from it.

An error about the caller's arguments names them as the library's parameters (``uds``,
``client_gateway``), never as the flags a command line maps them to: it is made with
:meth:`ExtkitError.naming`, whose template marks each parameter, and ``extctl`` renders it with
:meth:`ExtkitError.spelled`, each parameter as its flag (``--uds``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

E = TypeVar("E", bound="ExtkitError")


class ExtkitError(Exception):
    """The root of every error envoy-extkit raises on purpose.

    ``where``: when the error reports an exception the user's own code raised (importing
    their module, their ``on_startup``), the traceback lines of their frames, for a command
    line to show under its one-line message; empty otherwise.
    """

    where: str = ""
    _template: str | None = None
    _values: Mapping[str, Any] = {}

    @classmethod
    def naming(cls: type[E], template: str, *args: Any, **values: Any) -> E:
        """An error whose message names parameters of the caller's: in ``template`` (the
        syntax of :meth:`str.format`), ``{name}`` is ``values[name]`` when given, else the
        parameter ``name``; ``{name=key}`` is the parameter ``name`` set to ``values[key]``.
        ``str()`` spells parameters as the library does (``uds``, ``transport='grpcio'``);
        ``args`` go to the class's constructor after the message."""
        return cls(template, *args).parameterized(template, **values)

    def parameterized(self: E, template: str, **values: Any) -> E:
        """This error, its message made from ``template`` as :meth:`naming` makes it (for a
        class whose constructor takes more than the message: ``TransportError("",
        url=url).parameterized(...)``)."""
        self.args = (_render(template, values, None), *self.args[1:])
        self._template, self._values = template, values
        return self

    def recast(self, cls: type[E]) -> E:
        """The same message, its parameters and ``where``, as an error of ``cls`` (whose
        constructor takes the message alone): a ServeError that is a usage error to a CLI."""
        error = cls(str(self))
        error._template, error._values, error.where = self._template, self._values, self.where
        return error

    def spelled(self, spell: Callable[[str], str | None]) -> str:
        """The message with each parameter it names spelled ``spell(name)`` (a flag such as
        ``--uds``; None keeps the parameter's name), a value after it as a command line
        gives it (``--transport grpcio``; a flag alone for True)."""
        if self._template is None:
            return str(self)
        return _render(self._template, self._values, spell)


def spell_parameters(template: str, spell: Callable[[str], str | None] | None = None,
                     **values: Any) -> str:
    """``template`` rendered as :meth:`ExtkitError.naming` renders it, each parameter spelled
    ``spell(name)`` (None: as the parameter): for text other than an error's (comments a
    generator writes) that names its caller's parameters too."""
    return _render(template, values, spell)


def _render(template: str, values: Mapping[str, Any],
            spell: Callable[[str], str | None] | None) -> str:
    import shlex
    import string

    formatter = string.Formatter()
    parts = []
    for literal, field, spec, conversion in formatter.parse(template):
        parts.append(literal)
        if field is None:
            continue
        if field in values:
            value = formatter.convert_field(values[field], conversion)
            parts.append(formatter.format_field(value, spec or ""))
            continue
        name, has_value, key = field.partition("=")
        flag = spell(name) if spell is not None else None
        if not has_value:
            parts.append(flag or name)
        elif flag is None:
            parts.append(f"{name}={values[key]!r}")
        else:
            value = values[key]
            parts.append(flag if value is True else f"{flag} {shlex.quote(str(value))}")
    return "".join(parts)


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


class BuildError(ExtprocError):
    """The dynamic module cannot be built here (a compiler, a shared libpython or Python's
    headers missing, or an Envoy that lacks what it calls)."""


class HookNameWarning(UserWarning):
    """A Processor subclass defines an ``on_*`` method that is not a hook (``on_request_header``
    for ``on_request_headers``): no phase calls it, and Envoy is not told to send one for it.
    Silence it for a helper with ``warnings.filterwarnings("ignore",
    category=extproc.HookNameWarning)``, or name the helper without ``on_``."""
