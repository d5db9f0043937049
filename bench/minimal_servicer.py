"""A minimal hand-written grpc.aio ext_proc servicer: the baseline envoy-extkit is measured against.

Written the way a careful user would without a framework (generated stubs, an async generator,
the default asyncio loop). It does the same work as the envoy-extkit candidates of each scenario:

- headers:  sets one request header and one response header;
- streamed: rewrites each response body chunk (``secret`` -> ``******``);
- buffered: adds a field to the JSON request body (headers are not sent in this scenario, so
  Envoy drops content-length itself);
- append: appends one byte to the BUFFERED request body, the answer built in place (nested
  constructors would copy the body once per level): ``bench/memory.py``'s large bodies.

Its message limits are raised to 64 MiB, as ``extctl serve --max-message-bytes`` does, so a
large BUFFERED body fits in one message.

    python bench/minimal_servicer.py headers /tmp/minimal.sock      (or 127.0.0.1:9000)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

MAX_MESSAGE = 64 * 1024 * 1024


def _set(name: str, value: bytes = b"1") -> pb.CommonResponse:
    return pb.CommonResponse(header_mutation=pb.HeaderMutation(set_headers=[
        base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=name, raw_value=value))]))


class Minimal(pb_grpc.ExternalProcessorServicer):
    def __init__(self, work: str) -> None:
        self.work = work

    async def Process(self, request_iterator, context):
        async for request in request_iterator:
            which = request.WhichOneof("request")
            if which == "request_headers":
                common = _set("x-minimal") if self.work == "headers" else None
                yield pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=common))
            elif which == "response_headers":
                common = _set("x-minimal-response") if self.work == "headers" else None
                yield pb.ProcessingResponse(response_headers=pb.HeadersResponse(response=common))
            elif which == "request_body" and self.work == "buffered":
                document = json.loads(request.request_body.body)
                document["added_by"] = "minimal"
                body = json.dumps(document).encode()
                yield pb.ProcessingResponse(request_body=pb.BodyResponse(
                    response=pb.CommonResponse(body_mutation=pb.BodyMutation(body=body))))
            elif which == "request_body" and self.work == "append":
                body = request.request_body.body + b"x"
                answer = pb.ProcessingResponse()
                answer.request_body.response.body_mutation.body = body
                yield answer
            elif which == "response_body" and self.work == "streamed":
                chunk = request.response_body.body.replace(b"secret", b"******")
                yield pb.ProcessingResponse(response_body=pb.BodyResponse(
                    response=pb.CommonResponse(body_mutation=pb.BodyMutation(body=chunk))))
            elif which == "request_body":
                yield pb.ProcessingResponse(request_body=pb.BodyResponse())
            elif which == "response_body":
                yield pb.ProcessingResponse(response_body=pb.BodyResponse())
            elif which == "request_trailers":
                yield pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
            else:
                yield pb.ProcessingResponse(response_trailers=pb.TrailersResponse())


async def main(work: str, listen: str) -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                                      ("grpc.max_send_message_length", MAX_MESSAGE)])
    pb_grpc.add_ExternalProcessorServicer_to_server(Minimal(work), server)
    is_uds = not (":" in listen and not listen.startswith("/"))
    server.add_insecure_port("unix:" + listen if is_uds else listen)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)
    if is_uds:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(listen)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
