"""envoy-extkit's config library: Envoy Gateway resources and a standalone Envoy config from
one :class:`Deployment`, the processor's half derived from its class.

    from extctl.config import Deployment, GatewayOptions, Policy, Target, WasmModule

    Deployment(Redact, addresses=["/var/run/extproc/extproc.sock"],
               policy=Policy(allow_cidrs=["10.0.0.0/8"]), upstreams=["127.0.0.1:8080"],
               gateway=GatewayOptions(targets=[Target("HTTPRoute", "backend")])
               ).write("envoy-configs")
"""

from .deployment import Deployment
from .dynamic_module import DynamicModule
from .envoy import to_json
from .envoy import to_yaml as envoy_yaml
from .errors import ConfigError, GatewayError
from .filter_order import DEFAULT_ORDER, FilterPosition
from .gateway import to_yaml as gateway_yaml
from .model import CalloutCluster, EnvoyOptions, GatewayOptions, ProcessorTls, Target, kebab
from .policy import Policy
from .session import SessionPersistence
from .sidecar import Sidecar
from .wasm import WasmModule

__all__ = [
    "DEFAULT_ORDER",
    "CalloutCluster",
    "ConfigError",
    "Deployment",
    "DynamicModule",
    "EnvoyOptions",
    "FilterPosition",
    "GatewayError",
    "GatewayOptions",
    "Policy",
    "ProcessorTls",
    "SessionPersistence",
    "Sidecar",
    "Target",
    "WasmModule",
    "envoy_yaml",
    "gateway_yaml",
    "kebab",
    "to_json",
]
