"""A minimal hand-written grpc.aio ext_proc servicer: the baseline envoy-extkit is measured against.

It sets one request header and one response header and passes bodies through unchanged,
written the way a careful user would without a framework (generated stubs, async generator).

    python bench/minimal_servicer.py /tmp/minimal.sock
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc


def _set(name: str) -> pb.CommonResponse:
    return pb.CommonResponse(header_mutation=pb.HeaderMutation(set_headers=[
        base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=name, raw_value=b"1"))]))


class Minimal(pb_grpc.ExternalProcessorServicer):
    async def Process(self, request_iterator, context):
        async for request in request_iterator:
            which = request.WhichOneof("request")
            if which == "request_headers":
                yield pb.ProcessingResponse(
                    request_headers=pb.HeadersResponse(response=_set("x-minimal")))
            elif which == "response_headers":
                yield pb.ProcessingResponse(
                    response_headers=pb.HeadersResponse(response=_set("x-minimal-response")))
            elif which == "request_body":
                yield pb.ProcessingResponse(request_body=pb.BodyResponse())
            elif which == "response_body":
                yield pb.ProcessingResponse(response_body=pb.BodyResponse())
            elif which == "request_trailers":
                yield pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
            else:
                yield pb.ProcessingResponse(response_trailers=pb.TrailersResponse())


async def main(path: str) -> None:
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(Minimal(), server)
    server.add_insecure_port("unix:" + path)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
