"""What a Processor class decides about Envoy's ext_proc filter, in both generated configs:
every field in the standalone Envoy config (validated by Envoy), the ones Envoy Gateway has
in the EnvoyExtensionPolicy (validated against its CRDs), the others refused there."""

from __future__ import annotations

import http.client as http_client
import json
import subprocess
import time
from typing import Any

import pytest
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2

import extproc
from extctl.config import GatewayError, to_json
from extctl.harness.envoy import find_envoy
from extproc import BodyMode, Headers
from tests.helpers.gateway import _config, _valid, resources
from tests.helpers.patched_envoy import envoy_config, ext_proc, patched_stack
from tests.helpers.procs import FullDuplexRedact
from tests.helpers.protocol_procs import (
    EarlyBody,
    Everything,
    ForwardedMetadata,
    FullDuplexFailing,
    NoImmediate,
    Shadow,
    SlowWithStatus,
)


def _filter(processor: type[extproc.Processor], **options: Any) -> Any:
    config = envoy_config(processor, ["/tmp/x.sock"], None, **options)
    with ext_proc(config) as message:
        found = ext_proc_pb2.ExternalProcessor()
        found.CopyFrom(message)
    return found


def _envoy_validates(config: Any, tmp_path: Any) -> None:
    path = tmp_path / "envoy.json"
    path.write_text(to_json(config))
    check = subprocess.run([find_envoy(), "--mode", "validate", "-c", str(path)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_standalone_config_carries_every_field_the_class_decides(tmp_path):
    message = _filter(Everything)
    assert message.status_on_error.code == 503
    assert message.max_message_timeout.ToMilliseconds() == 3000
    forwarding = message.metadata_options.forwarding_namespaces
    assert (list(forwarding.untyped), list(forwarding.typed)) == (["extkit.test"],
                                                                  ["extkit.typed"])
    assert [(h.key, h.value) for h in message.grpc_service.initial_metadata] == [
        ("x-tenant", "blue")]
    assert message.route_cache_action == ext_proc_pb2.ExternalProcessor.CLEAR
    assert message.disable_immediate_response
    assert [m.response_body_mode for m in message.allowed_override_modes] == [
        BodyMode.BUFFERED.proto_value]
    assert message.send_body_without_waiting_for_header_response
    shadow = _filter(Shadow)
    assert shadow.observability_mode and shadow.deferred_close_timeout.ToMilliseconds() == 1000
    _envoy_validates(envoy_config(Everything, ["/tmp/x.sock"], None), tmp_path)
    _envoy_validates(envoy_config(Shadow, ["/tmp/x.sock"], None), tmp_path)


def _post_body_later(envoy: Any, headers: dict[str, str], stat: str) -> tuple[int, bytes]:
    """A chunked POST whose body follows the headers once Envoy's counter ``stat`` has gone up
    (Envoy has the headers' answer, or their failure, before any body byte)."""
    stat = f"http.ingress.ext_proc.{stat}"
    before = envoy.stats(stat)[stat]
    conn = http_client.HTTPConnection("127.0.0.1", envoy.port, timeout=10)
    try:
        conn.putrequest("POST", "/up")
        for name, value in {**headers, "transfer-encoding": "chunked"}.items():
            conn.putheader(name, value)
        conn.endheaders()
        deadline = time.monotonic() + 10
        while envoy.stats(stat)[stat] == before:
            assert time.monotonic() < deadline, f"{stat} stayed at {before}"
            time.sleep(0.01)
        conn.send(b"4\r\ntop \r\n6\r\nsecret\r\n0\r\n\r\n")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_standalone_fail_open_with_full_duplex_bodies(sock_dir, echo, tmp_path):
    """Envoy 1.40 takes failure_mode_allow with FULL_DUPLEX_STREAMED: a processor failing
    before the first body byte is skipped; after it, the request fails."""
    with patched_stack(FullDuplexFailing, sock_dir, echo.address, fail_open=True) as s:
        _envoy_validates(s.envoy.config, tmp_path)
        # the body only once Envoy has failed open on the headers
        early_status, early_body = _post_body_later(s.envoy, {"x-boom-headers": "1"},
                                                    "failure_mode_allowed")
        # the body only once Envoy has the headers' answer
        late_status, _ = _post_body_later(s.envoy, {"x-boom-body": "1"}, "stream_msgs_received")
        failed_open = s.envoy.stats("http.ingress.ext_proc.failure_mode_allowed")
    assert early_status == 200 and json.loads(early_body)["body"] == "top secret"
    assert late_status == 500
    assert failed_open == {"http.ingress.ext_proc.failure_mode_allowed": 1}  # the early one


def test_gateway_policy_carries_what_envoy_gateway_expresses():
    class Watch(extproc.Processor):
        observability_mode = True
        forwarding_namespaces = ("extkit.test",)
        dynamic_metadata_namespaces = ("extkit.out",)
        status_on_error = 502

        async def on_request_headers(self, headers: Headers) -> None:
            pass

    docs = resources(_config(Watch))
    for doc in docs:
        _valid(doc)
    policy = docs[0]["spec"]["extProc"][0]
    assert policy["shadowMode"] is True and policy["statusOnError"] == 502
    assert policy["metadata"] == {"accessibleNamespaces": ["extkit.test"],
                                  "writableNamespaces": ["extkit.out"]}


@pytest.mark.parametrize(("processor", "message"), [
    (Everything, "typed metadata forwarding"),
    (ForwardedMetadata, "typed metadata forwarding"),
    (SlowWithStatus, "timeout extensions"),
    (NoImmediate, "disable_immediate_response"),
    (EarlyBody, "send_body_without_waiting_for_header_response"),
    (Shadow, "deferred_close_timeout"),
])
def test_gateway_refuses_what_envoy_gateway_cannot_express(processor, message):
    with pytest.raises(GatewayError, match=message):
        resources(_config(processor))


def test_gateway_shadow_mode_takes_streamed_bodies_only():
    class WatchBuffered(extproc.Processor):
        observability_mode = True
        request_body_mode = BodyMode.BUFFERED

        async def on_request_body(self, body: extproc.Body) -> None:
            pass

    with pytest.raises(GatewayError, match="shadowMode takes Streamed bodies only"):
        resources(_config(WatchBuffered))


def test_gateway_still_refuses_fail_open_with_full_duplex():
    with pytest.raises(GatewayError, match="failOpen cannot be true with FullDuplexStreamed"):
        resources(_config(FullDuplexRedact, fail_open=True))
