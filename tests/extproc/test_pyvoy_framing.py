"""The pyvoy transport's gRPC framing over ASGI body events (no Envoy: the events are what
pyvoy hands the app, cut anywhere, as HTTP/2 DATA frames cut a message)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from extproc.transports.pyvoy_app import _Messages, _Status, frame


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
