"""Helpers of the ``extctl serve`` tests (tests/extproc/test_serve*.py, the TLS and socket
tests under tests/extctl): start it on a transport, ask its gRPC health service, wait for
files, an Envoy in front of it, one raw ext_proc exchange."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extctl.config import Deployment
from extctl.testing import EnvoyProcess
from extproc import SERVICE_NAME
from tests.helpers.procs import Slow

__all__ = ["NOT_SERVING", "SERVING", "_envoy_for", "_headers_request", "_health",
           "_process_once", "_wait_not_serving", "serve", "wait_for_path"]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING



def serve(extctl, transport, *args, **kwargs):
    """``extctl serve ARGS`` on ``transport``."""
    return extctl("serve", *args, "--transport", transport, **kwargs)


def _health(target: str, service: str = "", credentials: grpc.ChannelCredentials | None = None,
            **channel_options: str) -> int:
    options = list(channel_options.items())
    channel = (grpc.secure_channel(target, credentials, options=options) if credentials
               else grpc.insecure_channel(target))
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def _envoy_for(addresses: list[str], workdir: Path, processor: type = Slow) -> EnvoyProcess:
    return EnvoyProcess(Deployment.build(processor, addresses=addresses).envoy_bootstrap(),
                        workdir)


def wait_for_path(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout}s"
        time.sleep(0.02)


def _wait_not_serving(target: str, timeout: float = 10) -> None:
    """Until the server says NOT_SERVING (it took the first signal) or stops answering."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _health(target) == NOT_SERVING:
                return
        except grpc.RpcError:
            return
        time.sleep(0.02)
    raise AssertionError("the server never started draining")



def _headers_request(**headers: str) -> pb.ProcessingRequest:
    values = [base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in
              {":path": "/", ":method": "GET", **headers}.items()]
    return pb.ProcessingRequest(request_headers=pb.HttpHeaders(
        headers=base_pb2.HeaderMap(headers=values), end_of_stream=True))


def _process_once(target: str, request: pb.ProcessingRequest, timeout: float = 30) -> list:
    with grpc.insecure_channel(target) as channel:
        call = channel.stream_stream(
            f"/{SERVICE_NAME}/Process", request_serializer=pb.ProcessingRequest.SerializeToString,
            response_deserializer=pb.ProcessingResponse.FromString)
        return list(call(iter([request]), timeout=timeout))

