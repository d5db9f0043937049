"""Test a processor or a Wasm module through a real Envoy (see :mod:`extctl.harness.stack`).

    from extctl.testing import envoy_stack

    def test_denies():
        with envoy_stack(MyProcessor) as stack:
            assert stack.get("/", headers={"x-deny": "1"}).status == 403

and check the Wasm emulator against Envoy on your own module and requests
(:func:`compare_with_envoy`, :mod:`extctl.harness.compare`).
"""

from .harness.compare import Difference, Exchange, compare_with_envoy
from .harness.envoy import EnvoyProcess, find_envoy
from .harness.stack import Reply, Stack, envoy_stack, http, stack

__all__ = ["Difference", "EnvoyProcess", "Exchange", "Reply", "Stack", "compare_with_envoy",
           "envoy_stack", "find_envoy", "http", "stack"]
