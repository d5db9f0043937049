"""Test a processor or a Wasm module through a real Envoy (see :mod:`extctl.harness.stack`).

    from extctl.testing import envoy_stack

    def test_denies():
        with envoy_stack(MyProcessor) as stack:
            assert stack.get("/", headers={"x-deny": "1"}).status == 403
"""

from .harness.envoy import EnvoyProcess, find_envoy
from .harness.stack import Reply, Stack, envoy_stack, http, stack

__all__ = ["EnvoyProcess", "Reply", "Stack", "envoy_stack", "find_envoy", "http", "stack"]
