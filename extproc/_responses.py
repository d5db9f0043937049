"""``ImmediateResponse``: end the HTTP request with a locally generated answer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2

from ._headers import header_mutation

# Envoy validates HttpStatus against its enum: any other code fails the whole response.
ENVOY_STATUS_CODES = frozenset(c for c in http_status_pb2.StatusCode.values() if c)


@dataclass(frozen=True)
class ImmediateResponse:
    """Returned from a hook: Envoy answers the client with this and stops processing.

    ``ImmediateResponse(403, body=b"denied\\n", headers={"x-why": "policy"})``
    """

    status: int
    body: bytes | str = b""
    headers: Mapping[str, str | bytes] | None = field(default=None)
    grpc_status: int | None = None
    details: str = ""

    def __post_init__(self) -> None:
        if self.status not in ENVOY_STATUS_CODES:
            raise ValueError(
                f"ImmediateResponse status {self.status} is not one Envoy accepts "
                "(its HttpStatus enum, e.g. 400, 401, 403, 404, 429, 500, 503)")
        if self.grpc_status is not None and not 0 <= self.grpc_status <= 16:
            raise ValueError(f"grpc_status must be a gRPC code 0..16, got {self.grpc_status}")

    def to_proto(self) -> Any:
        body = self.body.encode() if isinstance(self.body, str) else bytes(self.body)
        message = pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=self.status), body=body, details=self.details)
        mutation = header_mutation(self.headers)
        if mutation is not None:
            message.headers.CopyFrom(mutation)
        if self.grpc_status is not None:
            message.grpc_status.status = self.grpc_status
        return message
