"""Reading Envoy's admin endpoint as untrusted input: one deadline, one size limit and one
limit on JSON values for all the questions of a run, each checked before it costs anything.

    with Admin("http://127.0.0.1:19000", timeout=10) as admin:   # e.g. through port-forward
        budget = admin.budget()                                   # shared by what follows
        listeners = admin.json("/config_dump?mask=dynamic_listeners", budget)
        stats = admin.text("/stats?filter=ext_proc", budget)

The deadline covers connecting, the status line, the headers and the body, whatever the server
trickles: every socket operation waits at most for the time left (the registry client's
transport, :mod:`registry.transport`). Parsed JSON costs Python up to ~70 bytes per value
(``[{},{},...]``: 36 bytes of objects per 3 bytes of text), so values are counted at C speed
before ``json.loads``, and a run's answers are refused past :data:`MAX_VALUES` values: peak
memory is bounded whatever the answers, and however many there are.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from ..errors import AdminError

MAX_BYTES = 32 * 1024 * 1024
"""Most bytes read in one run. The doctor asks for listeners and routes only, and ``/stats``
filtered: a big gateway's answers are a few MiB, its ``/clusters`` about 1.2 KiB an endpoint."""
MAX_VALUES = 1_000_000
"""Most JSON values (counted as ``{``, ``[``, ``,`` and ``:`` bytes) parsed in one run: Envoy's
JSON has one per 14 bytes (``/clusters``) to 27 bytes (``/config_dump``), and the costliest
million parse to some 80 MB of Python objects."""
MAX_DIGITS = 40
"""Longest integer read; Envoy writes 64-bit counters as strings, and none has 40 digits."""


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise ValueError(f"a number of {len(text)} digits")
    return int(text)


@dataclass
class Budget:
    """What the questions of one run may take together: answers until ``deadline`` (on
    :func:`time.monotonic`'s clock), ``bytes`` of them, ``values`` JSON values."""

    deadline: float
    bytes: int = MAX_BYTES
    values: int = MAX_VALUES


def _said(response: Any) -> str:
    """The start of an error answer (Envoy says there what it refused), escaped."""
    from registry.untrusted import escape

    head = b""
    for chunk in response.iter_raw():
        head += chunk
        if len(head) >= 200:
            break
    text = escape(head.decode("utf-8", errors="replace").strip(), 200)
    return f": {text}" if text else ""


class Admin:
    """One Envoy admin endpoint: ``http://HOST:PORT`` (a bare ``HOST:PORT`` means http).

    A question asked without a :class:`Budget` gets its own: ``timeout``, ``max_bytes`` and
    ``max_values``.
    """

    def __init__(self, url: str, timeout: float = 10.0, max_bytes: int = MAX_BYTES,
                 max_values: int = MAX_VALUES) -> None:
        if "://" not in url:
            url = "http://" + url
        try:
            parts = urllib.parse.urlsplit(url)
            hostname = parts.hostname
            parts.port  # noqa: B018  # a port that is not a number raises here, not later
        except ValueError:
            raise AdminError(f"admin address {url!r}: give http://HOST:PORT") from None
        if parts.scheme not in ("http", "https") or not hostname:
            raise AdminError(f"admin address {url!r}: give http://HOST:PORT")
        if parts.query or parts.fragment or parts.path not in ("", "/"):
            raise AdminError(f"admin address {url!r}: give only http://HOST:PORT")
        self.url = f"{parts.scheme}://{parts.netloc}"
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_values = max_values
        self._client: Any = None
        self._clock: Any = None

    def budget(self) -> Budget:
        """Limits from now: pass the same one to several questions to bound them together."""
        return Budget(time.monotonic() + self.timeout, self.max_bytes, self.max_values)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def get(self, path: str, budget: Budget | None = None) -> bytearray:
        """The body of ``GET path``, read whole within ``budget`` (default: a new one), whose
        bytes it takes."""
        import httpx

        from registry.errors import LimitExceeded, TransportError
        from registry.transport import Clock, iter_body, make_client

        if self._client is None:
            self._clock = Clock()
            self._client = make_client(self._clock, read_timeout=self.timeout)
        budget = budget or self.budget()
        self._clock.deadline = budget.deadline
        where = f"{self.url}{path}"
        try:
            if self._clock.expired():
                raise httpx.TimeoutException("deadline reached")
            with self._client.stream("GET", where) as response:
                if response.status_code != 200:
                    raise AdminError(f"{where}: HTTP {response.status_code}"
                                     + _said(response))
                body = bytearray()
                for chunk in iter_body(response, budget.bytes, where):
                    body += chunk
                budget.bytes -= len(body)
                return body
        except httpx.TimeoutException:
            raise AdminError(f"{where}: no complete answer within the {self.timeout:g}s "
                             "deadline") from None
        except LimitExceeded:
            raise AdminError(f"{where}: answer larger than {budget.bytes} bytes (the doctor "
                             f"reads at most {self.max_bytes} in all)") from None
        except TransportError as exc:
            raise AdminError(str(exc)) from None
        except (httpx.HTTPError, OSError) as exc:
            raise AdminError(f"cannot read Envoy's admin at {self.url}: "
                             f"{exc or type(exc).__name__}") from None
        finally:
            self._clock.deadline = None

    def json(self, path: str, budget: Budget | None = None) -> Any:
        """The answer parsed, once its size and its number of values are within ``budget``."""
        budget = budget or self.budget()
        body = self.get(path, budget)
        values = sum(body.count(c) for c in (b"{", b"[", b",", b":"))
        if values > budget.values:
            raise AdminError(f"{self.url}{path}: answer of more than {budget.values} JSON "
                             f"values (the doctor parses at most {self.max_values} in all)")
        budget.values -= values
        try:
            return json.loads(body, parse_int=_integer)
        except RecursionError:
            raise AdminError(f"{self.url}{path}: JSON nested too deep") from None
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise AdminError(f"{self.url}{path}: not readable JSON ({exc})") from None

    def text(self, path: str, budget: Budget | None = None) -> str:
        return self.get(path, budget).decode("utf-8", errors="replace")
