"""What a Processor class decides about the ext_proc filter beyond its processing mode,
attributes and mutation rules, from its FilterSpec: every field for the standalone Envoy config
(:func:`apply_spec`), Envoy Gateway's few for the EnvoyExtensionPolicy (:func:`gateway_fields`),
which refuses the rest rather than dropping them.
"""

from __future__ import annotations

from typing import Any

from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from google.protobuf import duration_pb2

from extproc import BodyMode, FilterSpec

from .errors import GatewayError

_ROUTE_CACHE_ACTION = {
    "default": ext_proc_pb2.ExternalProcessor.DEFAULT,
    "clear": ext_proc_pb2.ExternalProcessor.CLEAR,
    "retain": ext_proc_pb2.ExternalProcessor.RETAIN,
}


def _duration(seconds: float) -> Any:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


def apply_spec(filter_config: Any, spec: FilterSpec) -> None:
    """Set on an ``ExternalProcessor`` message what ``spec`` asks of Envoy beyond the mode."""
    if spec.status_on_error is not None:
        filter_config.status_on_error.code = spec.status_on_error
    if spec.max_message_timeout is not None:
        filter_config.max_message_timeout.CopyFrom(_duration(spec.max_message_timeout))
    if spec.forwarding_namespaces or spec.typed_forwarding_namespaces:
        forwarding = filter_config.metadata_options.forwarding_namespaces
        forwarding.untyped.extend(spec.forwarding_namespaces)
        forwarding.typed.extend(spec.typed_forwarding_namespaces)
    for key, value in spec.grpc_initial_metadata:
        filter_config.grpc_service.initial_metadata.add(key=key, value=value)
    filter_config.observability_mode = spec.observability_mode
    if spec.deferred_close_timeout is not None:
        filter_config.deferred_close_timeout.CopyFrom(_duration(spec.deferred_close_timeout))
    filter_config.route_cache_action = _ROUTE_CACHE_ACTION[spec.route_cache_action]
    filter_config.disable_immediate_response = spec.disable_immediate_response
    for mode in spec.allowed_override_modes:
        filter_config.allowed_override_modes.append(mode.to_proto())
    filter_config.send_body_without_waiting_for_header_response = (
        spec.send_body_without_waiting_for_header_response)


# FilterSpec fields Envoy Gateway's extProc (v1.9) has no field for, with what they do.
_GATEWAY_LACKS = {
    "typed_forwarding_namespaces": "typed metadata forwarding",
    "grpc_initial_metadata": "gRPC initial metadata",
    "max_message_timeout": "timeout extensions (max_message_timeout)",
    "route_cache_action": "route_cache_action",
    "disable_immediate_response": "disable_immediate_response",
    "allowed_override_modes": "allowed_override_modes",
    "send_body_without_waiting_for_header_response":
        "send_body_without_waiting_for_header_response",
    "deferred_close_timeout": "deferred_close_timeout",
}


def gateway_fields(spec: FilterSpec) -> dict[str, Any]:
    """The extProc fields of an EnvoyExtensionPolicy for what ``spec`` asks beyond the mode;
    GatewayError for what Envoy Gateway cannot express (dropped, it would change behaviour)."""
    default = FilterSpec(name=spec.name, mode=spec.mode, hooks=spec.hooks)
    problems = [what for name, what in _GATEWAY_LACKS.items()
                if getattr(spec, name) != getattr(default, name)]
    if problems:
        raise GatewayError(f"{spec.name} sets {', '.join(problems)}, which Envoy Gateway "
                           "cannot express: use the standalone Envoy config (gen envoy)")
    fields: dict[str, Any] = {}
    if spec.status_on_error is not None:
        fields["statusOnError"] = spec.status_on_error
    if spec.observability_mode:
        if {spec.mode.request_body, spec.mode.response_body} - {None, BodyMode.STREAMED}:
            raise GatewayError(f"{spec.name}: Envoy Gateway's shadowMode takes Streamed bodies "
                               "only (its CEL rule)")
        fields["shadowMode"] = True
    if spec.forwarding_namespaces:
        fields["metadata"] = {"accessibleNamespaces": list(spec.forwarding_namespaces)}
    return fields
