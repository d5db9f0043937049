"""Test a processor or a Wasm module through a real Envoy.

    from extctl.testing import EnvoyClient

    def test_denies():
        with EnvoyClient(MyProcessor) as client:   # extproc.testing.Client: in-process
            assert client.get("/", headers={"x-deny": "1"}).status == 403

:class:`EnvoyClient` answers and records as the in-process doubles (``extproc.testing.Client``,
``wasm.ProxyWasm``) do, with the same ``request`` and the same result shape
(:mod:`extproc.exchange`); :func:`envoy_stack` puts an echo upstream behind Envoy instead
(:mod:`extctl.harness.stack`); :func:`compare_with_envoy` checks the Wasm emulator against
Envoy on your own module and requests (:mod:`extctl.harness.compare`); :class:`LocalRegistry`
is an OCI registry on loopback (:mod:`extctl.harness.registry`).
"""

from .harness.client import EnvoyClient
from .harness.compare import Difference, Differences, Exchange, compare_with_envoy
from .harness.envoy import EnvoyProcess, find_envoy
from .harness.registry import LocalRegistry
from .harness.stack import Reply, Stack, envoy_stack, http, stack

__all__ = ["Difference", "Differences", "EnvoyClient", "EnvoyProcess", "Exchange",
           "LocalRegistry", "Reply", "Stack", "compare_with_envoy", "envoy_stack", "find_envoy",
           "http", "stack"]
