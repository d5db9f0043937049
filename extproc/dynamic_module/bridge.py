"""Python side of the extkit dynamic module (``extkit_dm.c``, loaded by Envoy): an
extproc.Processor's header hooks on an asyncio loop in a thread of Envoy's process.

The module queues one event per phase and wakes the loop through an eventfd; each event runs
the class's hook as a task, with the class's ``message_timeout`` and ``fail_open`` meaning
what they mean for ext_proc (no answer in time: 504, or continue unchanged when failing open;
a hook that raises: ``error_status``, or continue unchanged). The answer goes back through
``_extkit_dm.answer`` / ``reply``, which have Envoy's scheduler resume the stream on its worker.

One Processor instance per HTTP stream, as with ext_proc: created at the stream's first phase,
dropped after its last one (or when Envoy ends the stream before it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
from typing import Any

import _extkit_dm as dm  # type: ignore[import-not-found]  # the C module's, registered first

import extproc
from extproc._headers import _fold

REQUEST_HEADERS, RESPONSE_HEADERS, END = 1, 2, 3
HOOK_REQUEST_HEADERS, HOOK_RESPONSE_HEADERS = 1, 2
_SET, _APPEND, _REMOVE = 0, 1, 2  # extproc.Headers' change kinds
_OP_SET, _OP_ADD, _OP_REMOVE = 0, 1, 2  # the module's header operations
_SUPPORTED = {"on_request_headers", "on_response_headers"}
_GATEWAY_TIMEOUT = 504  # what Envoy's ext_proc answers when a message times out
_AFTER_WATCHDOG = 0.05  # seconds

logger = logging.getLogger("extkit_dm")

_loop: asyncio.AbstractEventLoop | None = None
_configs: list[_Config] = []
_processors: dict[int, extproc.Processor] = {}


class _Config:
    """One filter config: the class, what it asks of Envoy, the phase after which it is done,
    and what Envoy's ext_proc filter takes from the policy: the message timeout (seconds) and
    whether a phase with no answer in time goes on (``fail_open``) instead of a 504."""

    def __init__(self, cls: type[extproc.Processor], timeout: float, fail_open: bool) -> None:
        spec = cls.filter_spec()
        self.cls = cls
        self.spec = spec
        self.timeout = timeout
        self.fail_open = fail_open
        self.hooks = ((HOOK_REQUEST_HEADERS if "on_request_headers" in spec.hooks else 0)
                      | (HOOK_RESPONSE_HEADERS if "on_response_headers" in spec.hooks else 0))
        self.last = RESPONSE_HEADERS if self.hooks & HOOK_RESPONSE_HEADERS else REQUEST_HEADERS


def configure(raw: str) -> tuple[int, int, int, bool]:
    """A filter config (JSON: ``processor``, ``path``): its handle, the hooks it has, and its
    message timeout (ms) and fail_open, which the module keeps in C too (a hook that blocks
    the loop still gets Envoy's answer to a timeout). Runs on Envoy's main thread; starts the
    loop thread the first time."""
    options = json.loads(raw or "{}")
    for entry in reversed(options.get("path", [])):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    cls = extproc.import_processor(options["processor"])
    unsupported = cls.filter_spec().hooks - _SUPPORTED
    if unsupported:
        raise extproc.ServeError(f"{cls.__name__} defines {', '.join(sorted(unsupported))}: "
                                 "the dynamic module runs header hooks only")
    timeout = float(options.get("message_timeout") or cls.filter_spec().timeout)
    config = _Config(cls, timeout, bool(options.get("fail_open", False)))
    _configs.append(config)
    _start()
    return len(_configs) - 1, config.hooks, max(1, round(timeout * 1000)), config.fail_open


def _start() -> None:
    global _loop
    if _loop is not None:
        return
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    loop.add_reader(dm.wake_fd(), _drain)
    _loop = loop
    threading.Thread(target=loop.run_forever, name="extkit-dm-loop", daemon=True).start()


def _drain() -> None:
    assert _loop is not None
    for handle, kind, config_id, pairs in dm.take():
        if kind == END:
            # After the steps of tasks created above: a stream that ended before its first
            # phase ran would otherwise get its Processor after this.
            _loop.call_soon(_processors.pop, handle, None)
            continue
        _loop.create_task(_phase(_configs[config_id], handle, kind, pairs))


async def _phase(config: _Config, handle: int, kind: int, pairs: list[tuple[str, str]]) -> None:
    """Run one phase's hook and answer the module exactly once (a second answer would drop
    the stream's reference twice)."""
    spec = config.spec
    which = "request_headers" if kind == REQUEST_HEADERS else "response_headers"
    answered = False

    def answer(operations: list[tuple[int, bytes, bytes | None]] | None, done: bool) -> None:
        nonlocal answered
        dm.answer(handle, kind, done, operations)  # raises before delivering, or delivers
        answered = True
        if done:
            _processors.pop(handle, None)

    def reply(status: int, headers: list[tuple[bytes, bytes]], body: bytes,
              details: str) -> None:
        nonlocal answered
        dm.reply(handle, kind, status, headers, body, details.encode())
        answered = True
        _processors.pop(handle, None)

    try:
        proc = _processors.get(handle)
        if proc is None:
            proc = config.cls()
            proc._init_state()
            _processors[handle] = proc
        headers = extproc.Headers(pairs, kind=which.partition("_")[0],
                                  allow_routing=spec.allow_routing_mutations,
                                  allow_envoy=spec.allow_envoy_mutations)
        setattr(proc, which, headers)
        proc._phase = which
        hook = getattr(proc, f"on_{which}")
        # The message timeout as a timer on this task (asyncio.wait_for would add a task).
        expired = False
        task = asyncio.current_task()
        assert task is not None and _loop is not None

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        # The module answers Envoy at the timeout itself (its watchdog, in C); this timer,
        # a little later, stops the hook and is Envoy's answer only if the watchdog is not
        # running.
        timer = _loop.call_later(config.timeout + _AFTER_WATCHDOG, expire)
        try:
            result = await hook(headers)
        except asyncio.CancelledError:
            if not expired:
                raise
            logger.error("%s.on_%s: no answer within %ss", spec.name, which, config.timeout)
            if config.fail_open:
                answer(None, True)  # as Envoy's ext_proc: no more phases for this stream
            else:
                reply(_GATEWAY_TIMEOUT, [], b"", "extproc_message_timeout")
            return
        except Exception:
            logger.exception("%s.on_%s failed", spec.name, which)
            if spec.fail_open:
                answer(None, kind == config.last)
            else:
                reply(spec.error_status, [], spec.error_body, "extproc_processor_error")
            return
        finally:
            timer.cancel()
        if isinstance(result, extproc.ImmediateResponse):
            body = result.body.encode() if isinstance(result.body, str) else bytes(result.body)
            reply_headers = [(name.lower().encode("latin-1"),
                              value if isinstance(value, bytes) else value.encode("latin-1"))
                             for name, value in (result.headers or {}).items()]
            reply(result.status, reply_headers, body,
                  result.details or "extproc_immediate_response")
            return
        operations = _operations(headers)
        headers._lock(f"{which} were already sent on")
        answer(operations, kind == config.last)
    finally:
        if not answered:  # the bridge itself failed (or the loop is closing): let it through
            logger.error("extkit_dm: %s of stream %#x got no answer; continuing", which, handle)
            answer(None, True)


def _operations(headers: extproc.Headers) -> list[tuple[int, bytes, bytes | None]] | None:
    """The hook's header changes as the module's operations, folded into ``headers`` so later
    phases read them (as the ext_proc message loop does once they are sent)."""
    changes: Any = headers._changes
    if not changes:
        return None
    operations: list[tuple[int, bytes, bytes | None]] = []
    for name, (op, values) in changes.items():
        key = name.encode("latin-1")
        if op == _REMOVE:
            operations.append((_OP_REMOVE, key, None))
            continue
        first = _OP_SET if op == _SET else _OP_ADD
        for value in values:
            operations.append((first, key, value.encode("latin-1")))
            first = _OP_ADD
    headers._changes = None
    if headers._index is not None:
        _fold(headers._index, changes)
    return operations
