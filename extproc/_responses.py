"""``ImmediateResponse``: end the HTTP request with a locally generated answer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2

from ._headers import header_mutation
from .errors import MutationError


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
    _mutation: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problem = status_problem(self.status)
        if problem is not None:
            raise MutationError(f"ImmediateResponse {problem}")
        grpc_status = self.grpc_status
        if grpc_status is not None and (not isinstance(grpc_status, int)
                                        or isinstance(grpc_status, bool)
                                        or not 0 <= grpc_status <= 16):
            raise MutationError(f"grpc_status must be a gRPC code 0..16, got {grpc_status!r}")
        # Checked here, where the hook builds it: a bad value fails inside the hook.
        if not isinstance(self.body, (bytes, bytearray, memoryview, str)):
            raise MutationError(f"ImmediateResponse body must be bytes or str, got "
                                f"{type(self.body).__name__}")
        if not isinstance(self.details, str):
            raise MutationError(f"ImmediateResponse details must be str, got "
                                f"{type(self.details).__name__}")
        if self.headers is not None and not isinstance(self.headers, Mapping):
            raise MutationError(f"ImmediateResponse headers must be a mapping, got "
                                f"{type(self.headers).__name__}")
        object.__setattr__(self, "_mutation", header_mutation(self.headers))

    def to_proto(self) -> Any:
        body = self.body.encode() if isinstance(self.body, str) else bytes(self.body)
        message = pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=self.status), body=body, details=self.details)
        mutation = self._mutation
        if mutation is not None:
            message.headers.CopyFrom(mutation)
        if self.grpc_status is not None:
            message.grpc_status.status = self.grpc_status
        return message
