"""PII redaction of response bodies as they stream: e-mail addresses and payment card numbers
(Luhn-checked) are masked, even when one is split across two chunks.

Each chunk is scanned together with the tail held back from the one before; the last
``HOLD`` bytes stay held until the next chunk (or the end of the body), so a match cannot be
cut in two. Two classes, one per streaming mode:

- ``PiiRedactStreamed`` (STREAMED): Envoy waits for each answer before passing the chunk on;
- ``PiiRedactFullDuplex`` (FULL_DUPLEX_STREAMED): chunks flow both ways independently, and
  what is emitted is exactly what the processor says (Envoy requires trailers to be sent in
  this mode, which the framework does).
"""

from __future__ import annotations

import re

import extproc

EMAIL = rb"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
CARD = rb"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"
PATTERN = re.compile(rb"(?P<email>" + EMAIL + rb")|(?P<card>" + CARD + rb")")
HOLD = 96  # longer than any match we mask


def luhn_valid(digits: bytes) -> bool:
    numbers = [int(d) for d in digits.decode()[::-1]]
    total = sum(numbers[0::2]) + sum(sum(divmod(2 * d, 10)) for d in numbers[1::2])
    return total % 10 == 0


def _mask(match: re.Match[bytes]) -> bytes:
    if match.group("email"):
        return b"[email]"
    digits = re.sub(rb"\D", b"", match.group("card"))
    return b"[card]" if luhn_valid(digits) else match.group(0)


def redact(data: bytes) -> bytes:
    return PATTERN.sub(_mask, data)


class PiiRedactStreamed(extproc.Processor):
    response_body_mode = extproc.BodyMode.STREAMED

    def __init__(self) -> None:
        self.held = b""

    async def on_response_headers(self, headers: extproc.Headers) -> None:
        # The body's length changes: it goes out chunked instead.
        del headers["content-length"]

    async def on_response_body(self, body: extproc.Body) -> None:
        data = self.held + body.data
        if body.end_of_stream:
            self.held, body.data = b"", redact(data)
            return
        cut = max(0, len(data) - HOLD)
        for match in PATTERN.finditer(data):
            if match.start() < cut < match.end():
                cut = match.start()  # never emit half a match
                break
        self.held, body.data = data[cut:], redact(data[:cut])


class PiiRedactFullDuplex(PiiRedactStreamed):
    response_body_mode = extproc.BodyMode.FULL_DUPLEX_STREAMED
