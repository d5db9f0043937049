"""``Processor``: subclass it, override the hooks for the phases you handle."""

from __future__ import annotations

import dataclasses
import inspect
import sys
import warnings
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from google.protobuf import json_format, struct_pb2

from ._body import Body
from ._headers import Headers
from ._mode import BodyMode, FilterSpec, ProcessingMode, default_hook, derive, misnamed_hooks
from ._responses import ImmediateResponse
from .errors import HookNameWarning, MutationError, ServeError

HookResult = ImmediateResponse | None

# The namespace Envoy's ext_proc filter uses for its own attributes and metadata.
EXT_PROC_NAMESPACE = "envoy.filters.http.ext_proc"
_NO_METADATA: Mapping[str, str] = MappingProxyType({})


class Processor:
    """One instance per HTTP request (one gRPC ``Process`` stream).

    Override only the hooks you need: Envoy is told to send only those phases
    (see :meth:`processing_mode`). A hook returns ``None`` to continue, or an
    :class:`ImmediateResponse` to answer the client at once.
    """

    #: How Envoy sends the request body; None: not at all.
    request_body_mode: ClassVar[BodyMode | None] = None
    #: How Envoy sends the response body; None: not at all.
    response_body_mode: ClassVar[BodyMode | None] = None
    #: On a hook exception: True continues unchanged, False answers ``error_status``.
    fail_open: ClassVar[bool] = False
    #: Status of the answer when a hook fails and ``fail_open`` is False.
    error_status: ClassVar[int] = 500
    #: Body of that answer (never the exception text).
    error_body: ClassVar[bytes] = b"processor error\n"
    #: Allow :meth:`override_mode` (Envoy's ``allow_mode_override``).
    allow_mode_override: ClassVar[bool] = False
    #: Allow changing host, :authority, :scheme, :method (Envoy's mutation_rules.allow_all_routing).
    allow_routing_mutations: ClassVar[bool] = False
    #: Allow changing x-envoy-* headers (Envoy's mutation_rules.allow_envoy).
    allow_envoy_mutations: ClassVar[bool] = False
    #: Envoy attributes to send with the request headers (e.g. ``"source.address"``).
    request_attributes: ClassVar[tuple[str, ...]] = ()
    #: Envoy attributes to send with the response headers (e.g. ``"response.code"``).
    response_attributes: ClassVar[tuple[str, ...]] = ()
    #: Namespaces :meth:`set_dynamic_metadata` may write (Envoy's receiving_namespaces).
    dynamic_metadata_namespaces: ClassVar[tuple[str, ...]] = ()
    #: How long Envoy waits for each answer, in seconds (None: Envoy's default, 200 ms).
    message_timeout: ClassVar[float | None] = None
    #: The longest wait :meth:`extend_timeout` may ask for (Envoy's max_message_timeout).
    max_message_timeout: ClassVar[float | None] = None
    #: What Envoy answers when the processor fails it: unreachable, stream error (Envoy's
    #: status_on_error, 4xx/5xx; None: 500). A message timeout stays 504.
    status_on_error: ClassVar[int | None] = None
    #: Metadata namespaces Envoy forwards in ``metadata_context`` (untyped / typed).
    forwarding_namespaces: ClassVar[tuple[str, ...]] = ()
    typed_forwarding_namespaces: ClassVar[tuple[str, ...]] = ()
    #: gRPC metadata Envoy adds to every ``Process`` stream (read as :attr:`grpc_metadata`).
    grpc_initial_metadata: ClassVar[Mapping[str, str] | tuple[tuple[str, str], ...]] = ()
    #: Envoy sends every phase without waiting for answers (it ignores them): for watching.
    observability_mode: ClassVar[bool] = False
    #: Seconds Envoy keeps an observability stream open after the request ends.
    deferred_close_timeout: ClassVar[float | None] = None
    #: ``"default"``: clear_route_cache() re-routes; ``"clear"``: every header change
    #: re-routes; ``"retain"``: never (Envoy's route_cache_action).
    route_cache_action: ClassVar[str] = "default"
    #: Envoy refuses ImmediateResponse answers (a hook failing closed ends the stream).
    disable_immediate_response: ClassVar[bool] = False
    #: The modes :meth:`override_mode` may switch to (empty: any).
    allowed_override_modes: ClassVar[tuple[ProcessingMode, ...]] = ()
    #: STREAMED bodies are sent before the headers are answered.
    send_body_without_waiting_for_header_response: ClassVar[bool] = False

    _spec: ClassVar[FilterSpec]

    # Per-request state, filled in by the message loop before each hook runs.
    request_headers: Headers | None
    response_headers: Headers | None
    request_trailers: Headers | None
    response_trailers: Headers | None

    def _init_state(self) -> None:
        # Called by the message loop right after construction, so a subclass __init__ that
        # forgets super().__init__() still gets a working instance.
        self.request_headers = None
        self.response_headers = None
        self.request_trailers = None
        self.response_trailers = None
        self._attributes: dict[str, Any] = {}
        self._raw_attributes: list[Any] = []
        self._metadata_context: Any = None
        self._dynamic_metadata: dict[str, dict[str, Any]] | None = None  # protobuf Values
        self._clear_route_cache = False
        self._mode_override: ProcessingMode | None = None
        self._effective_mode = type(self)._spec.mode
        self._phase = ""
        self._grpc_metadata: Mapping[str, str] | None = None
        self._raw_grpc_metadata: Callable[[], Any] = tuple
        self._replacement: bytes | None = None
        self._extended = False  # this message's answer already got more time
        self._extend: Callable[[float], Awaitable[None]] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for method, message in misnamed_hooks(cls):  # before derive: a typo may be why it fails
            _warn_at(method, message, cls.__module__)
        cls._spec = derive(cls)

    @classmethod
    def processing_mode(cls) -> ProcessingMode:
        """The phases Envoy must send for this class: exactly the hooks it overrides."""
        return cls._spec.mode

    @classmethod
    def filter_spec(cls) -> FilterSpec:
        """Everything this class asks of Envoy (mode, attributes, rules, timeouts)."""
        return cls._spec

    # -- lifecycle (class level, once per server process) ------------------------------------

    @classmethod
    async def on_startup(cls) -> None:
        """Called once per server process before serving: open shared clients, caches."""

    @classmethod
    async def on_shutdown(cls) -> None:
        """Called once per server process after the last stream ended."""

    # -- hooks --------------------------------------------------------------------------------

    @default_hook
    async def on_request_headers(self, headers: Headers) -> HookResult:
        raise NotImplementedError  # never called: the phase is not requested

    @default_hook
    async def on_request_body(self, body: Body) -> HookResult:
        raise NotImplementedError  # never called: the phase is not requested

    @default_hook
    async def on_request_trailers(self, trailers: Headers) -> HookResult:
        raise NotImplementedError  # never called: the phase is not requested

    @default_hook
    async def on_response_headers(self, headers: Headers) -> HookResult:
        raise NotImplementedError  # never called: the phase is not requested

    @default_hook
    async def on_response_body(self, body: Body) -> HookResult:
        raise NotImplementedError  # never called: the phase is not requested

    @default_hook
    async def on_response_trailers(self, trailers: Headers) -> HookResult:
        raise NotImplementedError  # never called: the phase is not requested

    # -- per-request helpers --------------------------------------------------------------

    @property
    def attributes(self) -> dict[str, Any]:
        """Envoy attributes received so far (``request_attributes``/``response_attributes``)."""
        if self._raw_attributes:
            for struct_map in self._raw_attributes:
                for struct in struct_map.values():
                    self._attributes.update(json_format.MessageToDict(struct))
            self._raw_attributes.clear()
        return self._attributes

    @property
    def metadata_context(self) -> dict[str, Any]:
        """The metadata Envoy forwards: ``forwarding_namespaces`` and
        ``typed_forwarding_namespaces`` (as JSON, with ``@type``)."""
        raw = self._metadata_context
        if raw is None:
            return {}
        metadata = {ns: json_format.MessageToDict(s) for ns, s in raw.filter_metadata.items()}
        # Typed namespaces as JSON: {"@type": "type.googleapis.com/...", ...fields}.
        metadata.update((ns, json_format.MessageToDict(typed))
                        for ns, typed in raw.typed_filter_metadata.items())
        return metadata

    def set_dynamic_metadata(self, namespace: str, key: str, value: Any) -> None:
        """Emit ``value`` as Envoy dynamic metadata ``namespace.key`` with the next answer."""
        if namespace not in type(self)._spec.dynamic_metadata_namespaces:
            raise MutationError(
                f"Envoy drops dynamic metadata in namespace {namespace!r}: add it to "
                f"{type(self).__name__}.dynamic_metadata_namespaces")
        if not isinstance(key, str):
            raise MutationError(f"dynamic metadata keys are str, got {type(key).__name__}")
        # Converted now, so a value Envoy cannot carry fails inside the hook (the class's
        # fail_open policy applies) and later changes to a mutable value are not sent.
        converted = struct_pb2.Struct()
        try:
            converted.update({key: value})
        except (TypeError, ValueError, RecursionError):
            raise MutationError(
                f"dynamic metadata {namespace}.{key}: a {type(value).__name__} cannot be sent; "
                "Envoy's metadata holds JSON values (None, bool, int, float, str, and lists "
                "and dicts with str keys of those)") from None
        if self._dynamic_metadata is None:
            self._dynamic_metadata = {}
        self._dynamic_metadata.setdefault(namespace, {})[key] = converted.fields[key]

    @property
    def grpc_metadata(self) -> Mapping[str, str]:
        """The ``Process`` stream's gRPC metadata: trace context (``traceparent`` ...) and
        ``grpc_initial_metadata``. Read-only."""
        metadata = self._grpc_metadata
        if metadata is None:
            pairs: dict[str, str] = {}
            for key, value in self._raw_grpc_metadata() or ():
                # A repeated key's values joined, as Headers does.
                pairs[key] = f"{pairs[key]}, {value}" if key in pairs else value
            metadata = self._grpc_metadata = MappingProxyType(pairs) if pairs else _NO_METADATA
        return metadata

    def clear_route_cache(self) -> None:
        """Make Envoy pick the route again (after changing headers the route matches on)."""
        spec = type(self)._spec
        if self._phase not in ("request_headers", "request_body"):
            raise MutationError("Envoy clears the route cache only in answer to request headers "
                                f"or body (called from {self._phase or 'outside a hook'})")
        headers = self.request_headers
        if self._phase == "request_body" and (headers is None or headers._locked is not None):
            raise MutationError("Envoy already chose the route: the request headers were sent "
                                "on (clear it from on_request_headers, or in BUFFERED mode)")
        if spec.route_cache_action == "retain":
            raise MutationError(f"{spec.name}.route_cache_action is 'retain': Envoy never "
                                "clears the route cache")
        self._clear_route_cache = True

    def replace_body(self, data: bytes | str) -> None:
        """From a headers hook: Envoy forwards ``data`` as the whole body, never sends this
        direction's body or trailers, and drops content-length (CONTINUE_AND_REPLACE)."""
        if self._phase not in ("request_headers", "response_headers"):
            raise MutationError("Envoy replaces a body only in answer to headers (called from "
                                f"{self._phase or 'outside a hook'})")
        self._replacement = data.encode() if isinstance(data, str) else bytes(data)

    async def extend_timeout(self, seconds: float) -> None:
        """Ask Envoy to wait ``seconds`` (from now) for this hook's answer; once per message,
        up to the class's ``max_message_timeout``."""
        spec = type(self)._spec
        if spec.max_message_timeout is None:
            raise MutationError(f"{spec.name}.max_message_timeout is None: Envoy ignores "
                                "timeout extensions; set it")
        if not 0.001 <= seconds <= spec.max_message_timeout:
            raise MutationError(f"Envoy honours an extension from 1 ms to max_message_timeout "
                                f"({spec.max_message_timeout}s), not {seconds}s")
        if not self._phase or self._extend is None:
            raise MutationError("extend_timeout() is for hooks")
        if self._extended:
            raise MutationError("Envoy honours one extension per message")
        self._extended = True
        await self._extend(seconds)

    def override_mode(
        self,
        *,
        request_body: BodyMode | bool | None = False,
        response_headers: bool | None = None,
        response_body: BodyMode | bool | None = False,
        request_trailers: bool | None = None,
        response_trailers: bool | None = None,
    ) -> None:
        """Change which later phases Envoy sends for this request only.

        Only from ``on_request_headers`` / ``on_response_headers``, and only when the class
        sets ``allow_mode_override = True``. ``False`` (the default) keeps a body mode as is;
        ``None`` stops sending that body.
        """
        cls = type(self)
        spec = cls._spec
        if not spec.allow_mode_override:
            raise MutationError(f"{cls.__name__}.allow_mode_override is False: Envoy would "
                                "ignore the override; set it to True")
        if self._phase not in ("request_headers", "response_headers"):
            raise MutationError("Envoy honours a mode override only in answer to headers "
                                f"(called from {self._phase or 'outside a hook'})")
        current = self._mode_override or self._effective_mode
        if BodyMode.FULL_DUPLEX_STREAMED in (current.request_body, current.response_body):
            raise MutationError("Envoy drops every mode override when a body is "
                                "FULL_DUPLEX_STREAMED")
        changes: dict[str, Any] = {}
        for name, value in (("request_body", request_body), ("response_body", response_body)):
            if value is not False:
                if value is True or not (value is None or isinstance(value, BodyMode)):
                    raise MutationError(f"{name} must be a BodyMode or None")
                if BodyMode.FULL_DUPLEX_STREAMED in (value, getattr(current, name)):
                    raise MutationError("Envoy does not switch to or from FULL_DUPLEX_STREAMED "
                                        "per request")
                hook = f"on_{name}"
                if value is not None and hook not in spec.hooks:
                    raise MutationError(f"{cls.__name__} does not define {hook}")
                changes[name] = value
        for name, flag in (("response_headers", response_headers),
                           ("request_trailers", request_trailers),
                           ("response_trailers", response_trailers)):
            if flag is not None:
                changes[name] = bool(flag)
        override = dataclasses.replace(current, **changes)
        if not spec.override_allowed(override):
            raise MutationError(f"Envoy ignores this override: it is not one of "
                                f"{cls.__name__}.allowed_override_modes")
        self._mode_override = override

    # Set by the message loop: the mode in force for this request.
    _effective_mode: ProcessingMode


Processor._spec = derive(Processor)


def require_processor(processor: object) -> None:
    """ServeError unless ``processor`` is a Processor subclass (what every server serves)."""
    if not (isinstance(processor, type) and issubclass(processor, Processor)):
        raise ServeError(f"{processor!r} is not a subclass of extproc.Processor")


def _warn_at(method: Any, message: str, module: str) -> None:
    """A HookNameWarning shown at the method's own ``def`` line, where the typo is (the class
    statement may be any number of ``__init_subclass__`` frames up)."""
    code = getattr(inspect.unwrap(getattr(method, "__func__", method)), "__code__", None)
    if code is None:
        warnings.warn(message, HookNameWarning, stacklevel=3)
        return
    loaded = sys.modules.get(module)
    warnings.warn_explicit(message, HookNameWarning, code.co_filename, code.co_firstlineno,
                           module=module, registry=None if loaded is None else
                           vars(loaded).setdefault("__warningregistry__", {}))
