"""``Processor``: subclass it, override the hooks for the phases you handle."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from google.protobuf import json_format

from ._body import Body
from ._errors import MutationError
from ._headers import Headers
from ._mode import BodyMode, FilterSpec, ProcessingMode, default_hook, derive
from ._responses import ImmediateResponse

HookResult = ImmediateResponse | None

# The namespace Envoy's ext_proc filter uses for its own attributes and metadata.
EXT_PROC_NAMESPACE = "envoy.filters.http.ext_proc"


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
        self._dynamic_metadata: dict[str, dict[str, Any]] | None = None
        self._clear_route_cache = False
        self._mode_override: ProcessingMode | None = None
        self._effective_mode = type(self)._spec.mode
        self._phase = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
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
        """The metadata Envoy forwards (``metadata_options.forwarding_namespaces``)."""
        raw = self._metadata_context
        if raw is None:
            return {}
        return {ns: json_format.MessageToDict(s) for ns, s in raw.filter_metadata.items()}

    def set_dynamic_metadata(self, namespace: str, key: str, value: Any) -> None:
        """Emit ``value`` as Envoy dynamic metadata ``namespace.key`` with the next answer."""
        if namespace not in type(self).dynamic_metadata_namespaces:
            raise MutationError(
                f"Envoy drops dynamic metadata in namespace {namespace!r}: add it to "
                f"{type(self).__name__}.dynamic_metadata_namespaces")
        if self._dynamic_metadata is None:
            self._dynamic_metadata = {}
        self._dynamic_metadata.setdefault(namespace, {})[key] = value

    def clear_route_cache(self) -> None:
        """Make Envoy pick the route again (after changing headers the route matches on)."""
        if not self._phase.startswith("request"):
            raise MutationError("Envoy ignores clear_route_cache outside request phases")
        self._clear_route_cache = True

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
        if not cls.allow_mode_override:
            raise MutationError(f"{cls.__name__}.allow_mode_override is False: Envoy would "
                                "ignore the override; set it to True")
        if self._phase not in ("request_headers", "response_headers"):
            raise MutationError("Envoy honours a mode override only in answer to headers "
                                f"(called from {self._phase or 'outside a hook'})")
        current = self._mode_override or self._effective_mode
        changes: dict[str, Any] = {}
        for name, value in (("request_body", request_body), ("response_body", response_body)):
            if value is not False:
                if value is True or not (value is None or isinstance(value, BodyMode)):
                    raise MutationError(f"{name} must be a BodyMode or None")
                if BodyMode.FULL_DUPLEX_STREAMED in (value, getattr(current, name)):
                    raise MutationError("Envoy does not switch to or from FULL_DUPLEX_STREAMED "
                                        "per request")
                hook = f"on_{name}"
                if value is not None and hook not in cls._spec.hooks:
                    raise MutationError(f"{cls.__name__} does not define {hook}")
                changes[name] = value
        for name, flag in (("response_headers", response_headers),
                           ("request_trailers", request_trailers),
                           ("response_trailers", response_trailers)):
            if flag is not None:
                changes[name] = bool(flag)
        self._mode_override = dataclasses.replace(current, **changes)

    # Set by the message loop: the mode in force for this request.
    _effective_mode: ProcessingMode


Processor._spec = derive(Processor)
