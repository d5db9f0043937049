"""The pyvoy transport's gRPC framing over ASGI body events, and its answers as pyvoy takes
them (no Envoy: the events are what pyvoy hands the app, cut anywhere, as HTTP/2 DATA frames
cut a message; pyvoy's send as it behaves, sending when called)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from extproc.transports.pyvoy_app import _Answers, _Messages, _Status, frame


def _read(pieces: list[bytes], limit: int = 1 << 20) -> list[bytes]:
    events = [{"type": "http.request", "body": p, "more_body": True} for p in pieces]
    events.append({"type": "http.request", "body": b"", "more_body": False})
    feed = iter(events)

    async def receive() -> dict[str, Any]:
        return next(feed)

    async def main() -> list[bytes]:
        messages = _Messages(receive, limit)
        found = []
        while (message := await messages.next()) is not None:
            found.append(message)
        return found

    return asyncio.run(main())


def test_messages_cut_anywhere_into_events_come_out_whole() -> None:
    rng = random.Random(7)
    for _ in range(300):
        # empty messages too (a health check's request), and ones of many DATA frames
        sent = [rng.randbytes(rng.choice([0, 1, 4, 5, 6, 300, 70_000]))
                for _ in range(rng.randrange(1, 6))]
        data = b"".join(frame(m) for m in sent)
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(8))))
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert _read(pieces) == sent


def test_a_message_ending_early_or_too_large_is_an_error() -> None:
    with pytest.raises(_Status, match="ended inside a message"):
        _read([frame(b"abcdef")[:-2]])
    with pytest.raises(_Status, match="exceeds max_message_bytes"):
        _read([frame(b"x" * 100)], limit=10)


class _FakeSend:
    """pyvoy's send as the app sees it: it sends when called; a body's future is Envoy's
    word that the data went on, which the test gives."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.acks: list[asyncio.Future[None]] = []
        self.gone = False  # the client went: pyvoy answers a send with what raises

    def __call__(self, event: dict[str, Any]) -> Any:
        self.sent.append(event)
        if self.gone:
            return _Raising()
        if event["type"] != "http.response.body" or not event.get("more_body"):
            return _Ready()  # pyvoy's EmptyAwaitable: start, a last body, trailers
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks.append(future)
        return future

    def bodies(self) -> list[bytes]:
        return [e["body"] for e in self.sent if e["type"] == "http.response.body"]


class _Ready:
    """An awaitable that is not a Future and answers at once (pyvoy's EmptyAwaitable)."""

    def __await__(self) -> Any:
        return iter(())


class _Raising:
    """pyvoy's ErrorAwaitable once the client has gone: raises when awaited."""

    def __await__(self) -> Any:
        raise ConnectionResetError("the client went")
        yield  # a generator (never reached)


class _Answer:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:
        return self.data


def test_answers_go_at_once_or_with_the_next_one_when_another_message_is_here() -> None:
    async def main() -> None:
        send = _FakeSend()
        answers = _Answers(send)
        answers.add(_Answer(b"a"), more=False)  # nothing else to answer: sent now
        assert [e["type"] for e in send.sent] == ["http.response.start", "http.response.body"]
        assert send.bodies() == [frame(b"a")]
        answers.add(_Answer(b"b"), more=True)  # another message is here: b waits for it
        answers.add(_Answer(b"c"), more=False)
        assert send.bodies() == [frame(b"a"), frame(b"b") + frame(b"c")]
        answers.add(_Answer(b"d"), more=True)  # ... but not past the loop's next turn
        assert len(send.bodies()) == 2
        await asyncio.sleep(0)
        assert send.bodies()[-1] == frame(b"d")

    asyncio.run(main())


def test_at_most_two_sends_wait_for_envoys_word() -> None:
    async def main() -> None:
        send = _FakeSend()
        answers = _Answers(send)
        for data in (b"a", b"b"):
            answers.add(_Answer(data), more=False)
            await answers.settle(2)  # returns: two unacknowledged sends are allowed
        answers.add(_Answer(b"c"), more=False)
        waiting = asyncio.ensure_future(answers.settle(2))
        await asyncio.sleep(0)
        assert not waiting.done()  # three unacknowledged: waits for the first word
        send.acks[0].set_result(None)
        await asyncio.wait_for(waiting, 5)
        send.acks[1].set_exception(OSError("reset"))  # the client went
        with pytest.raises(OSError):
            await answers.settle(0)
        answers.close()  # the unacknowledged third's outcome taken, none left behind
        assert not answers.acks
        # once gone, pyvoy's send returns what raises at once: the next settle says so
        send.gone = True
        answers.add(_Answer(b"d"), more=False)
        with pytest.raises(ConnectionResetError):
            await answers.settle(2)

    asyncio.run(main())


def test_answers_given_before_an_error_go_before_its_trailers() -> None:
    """Two request-headers messages in one event: the first is answered, the second is a
    protocol error; the answer goes out, then the error (as grpcio sends them)."""
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

    import extproc
    from extproc.transports.pyvoy_app import GrpcApp

    class Tag(extproc.Processor):
        async def on_request_headers(self, headers: Any) -> None:
            headers["x-tag"] = "1"

    message = frame(pb.ProcessingRequest(request_headers=pb.HttpHeaders()).SerializeToString())
    events = iter([{"type": "http.request", "body": message * 2, "more_body": True}])

    async def receive() -> dict[str, Any]:
        return next(events)

    async def main() -> _FakeSend:
        send = _FakeSend()

        def acknowledging(event: dict[str, Any]) -> Any:
            result = send(event)
            if isinstance(result, asyncio.Future):
                result.set_result(None)
            return result

        app = GrpcApp(Tag, 1 << 20)
        await app({"type": "http", "path": "/envoy.service.ext_proc.v3.ExternalProcessor/Process",
                   "headers": []}, receive, acknowledging)
        return send

    send = asyncio.run(main())
    answers = [body for body in send.bodies() if body]
    assert len(answers) == 1
    answer = pb.ProcessingResponse.FromString(answers[0][5:])
    assert answer.request_headers.response.header_mutation.set_headers[0].header.key == "x-tag"
    trailers = send.sent[-1]
    assert trailers["type"] == "http.response.trailers"
    assert (b"grpc-status", b"3") in trailers["headers"]  # INVALID_ARGUMENT, after the answer
