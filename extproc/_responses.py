"""``ImmediateResponse``: end the HTTP request with a locally generated answer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2

from ._errors import MutationError
from ._headers import header_mutation


def status_problem(status: object) -> str | None:
    """Why Envoy would not answer with ``status``, or None when it would.

    Envoy sends any code from 200 on as given (418, 451, 499 too, in its HttpStatus enum or
    not) and substitutes 200 below that; from 1000 on the status line is no HTTP status.
    """
    if not isinstance(status, int) or isinstance(status, bool):
        return f"status must be an int, got {status!r}"
    if status < 200:
        return f"status {status}: Envoy answers 200 for any status below 200"
    if status > 999:
        return f"status {status} is not a three-digit HTTP status (Envoy sends it as is)"
    return None


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
        problem = status_problem(self.status)
        if problem is not None:
            raise MutationError(f"ImmediateResponse {problem}")
        if self.grpc_status is not None and not 0 <= self.grpc_status <= 16:
            raise MutationError(f"grpc_status must be a gRPC code 0..16, got {self.grpc_status}")

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
