"""Admin answers the ``extctl doctor`` tests share (tests/extctl/cli)."""

from __future__ import annotations

__all__ = ["one_ext_proc_listener"]


def one_ext_proc_listener() -> dict:
    """A listeners config dump with one route running one ext_proc filter, whose cluster is
    ``x``."""
    return {"configs": [{
        "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
        "static_listeners": [{"listener": {"name": "l", "filter_chains": [{"filters": [{
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network."
                         "http_connection_manager.v3.HttpConnectionManager",
                "route_config": {"virtual_hosts": [{"routes": [{"match": {"prefix": "/"}}]}]},
                "http_filters": [{"name": "envoy.filters.http.ext_proc/p", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3."
                             "ExternalProcessor",
                    "grpc_service": {"envoy_grpc": {"cluster_name": "x"}}}}]}}]}]}}]}]}

