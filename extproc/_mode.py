"""What a Processor class asks of Envoy, derived in one place.

``derive(cls)`` reads a class once, when it is defined, into a frozen :class:`FilterSpec`:
the processing mode (exactly the hooks it overrides), attributes, mutation rules, metadata
namespaces, timeout, override permission and error policy. The message loop,
``extproc.testing`` and both config generators read the spec, never the class.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.type.v3 import http_status_pb2

from ._responses import status_problem
from .errors import ProcessorDefinitionError, ProtocolError

_PM = processing_mode_pb2.ProcessingMode
_F = TypeVar("_F", bound=Callable[..., Any])


class BodyMode(enum.Enum):
    """How Envoy sends a body (the ext_proc ``BodySendMode``)."""

    STREAMED = "STREAMED"
    """Each chunk as it arrives; the hook sees one chunk at a time."""
    BUFFERED = "BUFFERED"
    """The whole body once; a body over Envoy's buffer limit fails the request."""
    BUFFERED_PARTIAL = "BUFFERED_PARTIAL"
    """The body up to Envoy's buffer limit, once."""
    FULL_DUPLEX_STREAMED = "FULL_DUPLEX_STREAMED"
    """Chunks both ways, decoupled: emit more or less than received, flush at end of stream."""
    GRPC = "GRPC"
    """gRPC messages. Envoy 1.40 forwards them unprocessed unless a whole body is held when
    the headers are answered: then it sends that body once, gRPC framing included."""

    @property
    def proto_value(self) -> int:
        return int(_PM.BodySendMode.Value(self.value))

    @property
    def gateway_name(self) -> str:
        """The Envoy Gateway spelling (``processingMode.*.body``)."""
        return "".join(part.capitalize() for part in self.value.split("_"))

    @classmethod
    def from_proto(cls, value: int) -> BodyMode | None:
        """The mode of a BodySendMode number; ProtocolError for a number this API lacks."""
        try:
            name = _PM.BodySendMode.Name(value)
        except ValueError:
            raise ProtocolError(f"unknown body send mode {value}") from None
        return None if name == "NONE" else cls(name)


_FULL_DUPLEX = BodyMode.FULL_DUPLEX_STREAMED

#: Statuses Envoy takes for ``status_on_error`` (its HttpStatus enum; Envoy Gateway's
#: ``statusOnError`` lists the same 4xx and 5xx codes).
ERROR_STATUSES = frozenset(code for code in http_status_pb2.StatusCode.values()
                           if 400 <= code <= 599)

#: Envoy's ``route_cache_action``: clear when asked (with a header mutation), on every header
#: mutation, or never.
ROUTE_CACHE_ACTIONS = ("default", "clear", "retain")


@dataclass(frozen=True)
class ProcessingMode:
    """Which phases Envoy sends to the processor, and how bodies travel."""

    request_headers: bool = True
    response_headers: bool = True
    request_body: BodyMode | None = None
    response_body: BodyMode | None = None
    request_trailers: bool = False
    response_trailers: bool = False

    def to_proto(self) -> Any:
        """The ``envoy.extensions.filters.http.ext_proc.v3.ProcessingMode`` message."""
        send, skip = _PM.SEND, _PM.SKIP
        return _PM(
            request_header_mode=send if self.request_headers else skip,
            response_header_mode=send if self.response_headers else skip,
            request_body_mode=self.request_body.proto_value if self.request_body else _PM.NONE,
            response_body_mode=self.response_body.proto_value if self.response_body else _PM.NONE,
            request_trailer_mode=send if self.request_trailers else skip,
            response_trailer_mode=send if self.response_trailers else skip,
        )

    @classmethod
    def from_proto(cls, mode: Any, base: ProcessingMode | None = None) -> ProcessingMode:
        """Apply a ProcessingMode message (DEFAULT fields keep ``base``'s value)."""
        base = base or cls()

        def header(value: int, current: bool) -> bool:
            return current if value == _PM.DEFAULT else value == _PM.SEND

        return cls(
            request_headers=header(mode.request_header_mode, base.request_headers),
            response_headers=header(mode.response_header_mode, base.response_headers),
            request_body=BodyMode.from_proto(mode.request_body_mode),
            response_body=BodyMode.from_proto(mode.response_body_mode),
            request_trailers=header(mode.request_trailer_mode, base.request_trailers),
            response_trailers=header(mode.response_trailer_mode, base.response_trailers),
        )

    @functools.cached_property
    def body_proto_values(self) -> tuple[int, int]:
        """(request, response) BodySendMode numbers, as ``protocol_config`` carries them."""
        return (self.request_body.proto_value if self.request_body else 0,
                self.response_body.proto_value if self.response_body else 0)

    @property
    def phases(self) -> tuple[str, ...]:
        """Names of the phases Envoy sends, e.g. ``("request_headers", "response_body")``."""
        names = []
        for field in ("request_headers", "request_body", "request_trailers",
                      "response_headers", "response_body", "response_trailers"):
            if getattr(self, field):
                names.append(field)
        return tuple(names)


# -- what a Processor class asks of Envoy ---------------------------------------------------

HOOKS = (
    "on_request_headers", "on_request_body", "on_request_trailers",
    "on_response_headers", "on_response_body", "on_response_trailers",
)


#: The other ``on_*`` names a Processor may define (classmethods run once per server).
LIFECYCLE = ("on_startup", "on_shutdown")


def misnamed_hooks(cls: type[Any]) -> list[tuple[Any, str]]:
    """The ``on_*`` methods ``cls`` itself defines that are no hook nor lifecycle method, each
    with a message naming the closest real one: a typo there (``on_request_header``) would
    otherwise leave its phase unsent without a word."""
    known = (*HOOKS, *LIFECYCLE)
    found = []
    for name, value in vars(cls).items():
        if not name.startswith("on_") or name in known:
            continue
        if not (callable(value) or isinstance(value, (classmethod, staticmethod))):
            continue
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]}?" if close else f"the hooks are {', '.join(HOOKS)}"
        found.append((value, f"{cls.__name__}.{name} is not a hook, so no phase calls it: "
                             f"{hint}"))
    return found


def default_hook(function: _F) -> _F:
    """Marks a base-class hook: a class that keeps it does not handle that phase."""
    function.__extproc_default__ = True  # type: ignore[attr-defined]
    return function


@dataclass(frozen=True)
class FilterSpec:
    """Everything a Processor class asks of Envoy, derived once by :func:`derive`.

    The message loop, ``extproc.testing`` and both config generators read this, never the
    class attributes themselves, so one rule cannot be applied in one place and not another.
    """

    name: str
    mode: ProcessingMode
    """The phases Envoy sends: exactly the hooks the class overrides."""
    hooks: frozenset[str]
    """Names of the hooks the class overrides."""
    request_attributes: tuple[str, ...] = ()
    response_attributes: tuple[str, ...] = ()
    allow_mode_override: bool = False
    allow_routing_mutations: bool = False
    allow_envoy_mutations: bool = False
    dynamic_metadata_namespaces: tuple[str, ...] = ()
    message_timeout: float | None = None
    fail_open: bool = False
    """A hook's exception continues the request unchanged (else ``error_status``)."""
    error_status: int = 500
    error_body: bytes = b""
    status_on_error: int | None = None
    """What Envoy answers when it gets no answer (None: Envoy's 500)."""
    max_message_timeout: float | None = None
    """The longest ``extend_timeout`` Envoy honours (None: no extension)."""
    forwarding_namespaces: tuple[str, ...] = ()
    typed_forwarding_namespaces: tuple[str, ...] = ()
    grpc_initial_metadata: tuple[tuple[str, str], ...] = ()
    observability_mode: bool = False
    deferred_close_timeout: float | None = None
    route_cache_action: str = "default"
    disable_immediate_response: bool = False
    allowed_override_modes: tuple[ProcessingMode, ...] = ()
    send_body_without_waiting_for_header_response: bool = False
    import_path: str = ""
    """``module:QualName`` the class is imported by (what ``extctl serve`` is given)."""

    @property
    def timeout(self) -> float:
        """Seconds Envoy waits for each answer (its default is 200 ms)."""
        return self.message_timeout if self.message_timeout is not None else 0.2

    def override_allowed(self, mode: ProcessingMode) -> bool:
        """Envoy applies ``mode`` as a mode_override (``allowed_override_modes`` empty: any)."""
        if not self.allowed_override_modes:
            return True
        # Envoy compares without request_header_mode: the request headers are already sent.
        return any(dataclasses.replace(allowed, request_headers=mode.request_headers) == mode
                   for allowed in self.allowed_override_modes)

    @property
    def importable(self) -> bool:
        """Another process can import the class by :attr:`import_path` (it is defined at the
        top level of a module, not in ``__main__`` or a function)."""
        module, _, name = self.import_path.partition(":")
        return module not in ("", "__main__") and "<" not in name

    @property
    def full_duplex(self) -> bool:
        """A body travels FULL_DUPLEX_STREAMED in either direction."""
        return _FULL_DUPLEX in (self.mode.request_body, self.mode.response_body)

    @property
    def buffers_bodies(self) -> bool:
        """Envoy holds a whole body for the processor (BUFFERED or BUFFERED_PARTIAL)."""
        return any(body in (BodyMode.BUFFERED, BodyMode.BUFFERED_PARTIAL)
                   for body in (self.mode.request_body, self.mode.response_body))

    def with_mode(self, mode: ProcessingMode) -> FilterSpec:
        """The same filter asking Envoy for another processing mode (a hand-picked one)."""
        return dataclasses.replace(self, mode=mode)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values: for a process that cannot import the class itself."""
        data = dataclasses.asdict(self)
        data["hooks"] = sorted(self.hooks)
        data["error_body"] = self.error_body.decode("latin-1")
        data["mode"] = _mode_to_dict(self.mode)
        data["allowed_override_modes"] = [_mode_to_dict(m) for m in self.allowed_override_modes]
        data["grpc_initial_metadata"] = [list(pair) for pair in self.grpc_initial_metadata]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FilterSpec:
        """The inverse of :meth:`to_dict`."""
        tuples = ("request_attributes", "response_attributes", "dynamic_metadata_namespaces",
                  "forwarding_namespaces", "typed_forwarding_namespaces")
        return cls(**{**data, "mode": _mode_from_dict(data["mode"]),
                      "hooks": frozenset(data["hooks"]),
                      "error_body": data["error_body"].encode("latin-1"),
                      "allowed_override_modes": tuple(
                          _mode_from_dict(m) for m in data.get("allowed_override_modes", ())),
                      "grpc_initial_metadata": tuple(
                          (k, v) for k, v in data.get("grpc_initial_metadata", ())),
                      **{name: tuple(data.get(name, ())) for name in tuples}})

    @classmethod
    def of(cls, processor: type[Any] | FilterSpec) -> FilterSpec:
        """The spec of a Processor subclass (derived when the class was defined)."""
        if isinstance(processor, FilterSpec):
            return processor
        spec = processor.__dict__.get("_spec")
        if not isinstance(spec, FilterSpec):
            spec = derive(processor)
        return spec


def _mode_to_dict(mode: ProcessingMode) -> dict[str, Any]:
    return {k: v.value if isinstance(v, BodyMode) else v
            for k, v in dataclasses.asdict(mode).items()}


def _mode_from_dict(data: dict[str, Any]) -> ProcessingMode:
    fields: dict[str, Any] = {k: BodyMode(v) if isinstance(v, str) else v
                              for k, v in data.items()}
    return ProcessingMode(**fields)


def derive(cls: type[Any]) -> FilterSpec:
    """What ``cls`` asks of Envoy, from its hooks and class attributes; refuses classes that
    cannot work with ProcessorDefinitionError. Pure: reads the class, changes nothing."""
    name = cls.__name__
    hooks = frozenset(hook for hook in HOOKS
                      if not getattr(getattr(cls, hook), "__extproc_default__", False))
    for direction in ("request", "response"):
        mode = getattr(cls, f"{direction}_body_mode")
        hook = f"on_{direction}_body"
        if mode is not None and not isinstance(mode, BodyMode):
            raise ProcessorDefinitionError(
                f"{name}.{direction}_body_mode must be a BodyMode or None, got {mode!r}")
        if mode is not None and hook not in hooks:
            raise ProcessorDefinitionError(
                f"{name} sets {direction}_body_mode but does not define {hook}")
        if mode is None and hook in hooks and not cls.allow_mode_override:
            raise ProcessorDefinitionError(
                f"{name} defines {hook} but {direction}_body_mode is None, so Envoy "
                f"would never send the body: set {direction}_body_mode = BodyMode.STREAMED "
                "(or BUFFERED ...), or allow_mode_override = True to enable it per request")
    problem = status_problem(cls.error_status)
    if problem is not None:
        raise ProcessorDefinitionError(f"{name}.error_{problem}")
    request_fd = cls.request_body_mode is _FULL_DUPLEX
    response_fd = cls.response_body_mode is _FULL_DUPLEX
    if BodyMode.GRPC in (cls.request_body_mode, cls.response_body_mode):
        raise ProcessorDefinitionError(
            f"{name}: Envoy 1.40 forwards gRPC messages without sending them in GRPC body "
            "mode (only a body already held when the headers are answered reaches the "
            "processor): use STREAMED, which sends the framed messages")
    if cls.allow_mode_override and (request_fd or response_fd):
        raise ProcessorDefinitionError(
            f"{name}: Envoy drops every mode_override when a body is FULL_DUPLEX_STREAMED; "
            "set allow_mode_override = False")
    mode = ProcessingMode(
        request_headers="on_request_headers" in hooks,
        response_headers="on_response_headers" in hooks,
        request_body=cls.request_body_mode,
        response_body=cls.response_body_mode,
        # Envoy requires trailers SEND with FULL_DUPLEX_STREAMED: they mark the body's end.
        request_trailers="on_request_trailers" in hooks or request_fd,
        response_trailers="on_response_trailers" in hooks or response_fd,
    )
    timeout = _seconds(name, "message_timeout", cls.message_timeout)
    max_timeout = _seconds(name, "max_message_timeout", cls.max_message_timeout)
    if max_timeout is not None and max_timeout < (timeout or 0.2):
        raise ProcessorDefinitionError(
            f"{name}.max_message_timeout ({max_timeout}s) is shorter than message_timeout "
            f"({timeout or 0.2}s): an extension could only shorten the wait")
    status_on_error = cls.status_on_error
    if status_on_error is not None and status_on_error not in ERROR_STATUSES:
        raise ProcessorDefinitionError(
            f"{name}.status_on_error must be a 4xx or 5xx status of Envoy's HttpStatus enum "
            f"(what Envoy and Envoy Gateway accept), got {status_on_error!r}")
    deferred = _seconds(name, "deferred_close_timeout", cls.deferred_close_timeout)
    if deferred is not None and not cls.observability_mode:
        raise ProcessorDefinitionError(
            f"{name}.deferred_close_timeout applies to observability_mode only")
    action = cls.route_cache_action
    if action not in ROUTE_CACHE_ACTIONS:
        raise ProcessorDefinitionError(
            f"{name}.route_cache_action must be one of {', '.join(ROUTE_CACHE_ACTIONS)}, "
            f"got {action!r}")
    allowed = tuple(cls.allowed_override_modes)
    if allowed and not cls.allow_mode_override:
        raise ProcessorDefinitionError(
            f"{name}.allowed_override_modes needs allow_mode_override = True")
    if not all(isinstance(m, ProcessingMode) for m in allowed):
        raise ProcessorDefinitionError(
            f"{name}.allowed_override_modes must hold ProcessingMode values")
    metadata = cls.grpc_initial_metadata
    pairs = tuple(metadata.items()) if isinstance(metadata, Mapping) else tuple(metadata)
    for key, value in pairs:
        if not (isinstance(key, str) and isinstance(value, str) and key == key.lower()
                and key and not key.startswith(":")):
            raise ProcessorDefinitionError(
                f"{name}.grpc_initial_metadata: {key!r}: {value!r} is not a lower-case "
                "gRPC metadata name with a str value")
    return FilterSpec(
        name=name, mode=mode, hooks=hooks,
        request_attributes=tuple(cls.request_attributes),
        response_attributes=tuple(cls.response_attributes),
        allow_mode_override=bool(cls.allow_mode_override),
        allow_routing_mutations=bool(cls.allow_routing_mutations),
        allow_envoy_mutations=bool(cls.allow_envoy_mutations),
        dynamic_metadata_namespaces=tuple(cls.dynamic_metadata_namespaces),
        message_timeout=timeout,
        fail_open=bool(cls.fail_open), error_status=int(cls.error_status),
        error_body=bytes(cls.error_body),
        status_on_error=status_on_error,
        max_message_timeout=max_timeout,
        forwarding_namespaces=tuple(cls.forwarding_namespaces),
        typed_forwarding_namespaces=tuple(cls.typed_forwarding_namespaces),
        grpc_initial_metadata=pairs,
        observability_mode=bool(cls.observability_mode),
        deferred_close_timeout=deferred,
        route_cache_action=action,
        disable_immediate_response=bool(cls.disable_immediate_response),
        allowed_override_modes=allowed,
        send_body_without_waiting_for_header_response=bool(
            cls.send_body_without_waiting_for_header_response),
        import_path=f"{cls.__module__}:{cls.__qualname__}",
    )


def _seconds(name: str, attribute: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ProcessorDefinitionError(
            f"{name}.{attribute} must be a positive number of seconds, got {value!r}")
    return float(value)
