"""Python side of the extkit dynamic module (``extkit_dm.c``, loaded by Envoy): an
extproc.Processor's hooks (headers, bodies, trailers) on an asyncio loop in a thread of
Envoy's process.

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
import concurrent.futures
import json
import logging
import sys
import threading
from typing import Any

import _extkit_dm as dm  # type: ignore[import-not-found]  # the C module's, registered first

import extproc
from extproc._headers import _fold

REQUEST_HEADERS, RESPONSE_HEADERS, END = 1, 2, 3
REQUEST_BODY, RESPONSE_BODY, REQUEST_TRAILERS, RESPONSE_TRAILERS = 4, 5, 6, 7
# The phases' names (the hooks are on_<name>); the module's phase numbers index it.
_WHICH = ("", "request_headers", "response_headers", "", "request_body", "response_body",
          "request_trailers", "response_trailers")
# Bits of the phases a config has the module send (Envoy's ext_proc processing mode).
HOOK_REQUEST_HEADERS, HOOK_RESPONSE_HEADERS = 1, 2
HOOK_REQUEST_TRAILERS, HOOK_RESPONSE_TRAILERS = 4, 8
# The body modes the module runs, by its numbers.
_BODY_MODES = {None: 0, extproc.BodyMode.STREAMED: 1, extproc.BodyMode.BUFFERED: 2,
               extproc.BodyMode.BUFFERED_PARTIAL: 3, extproc.BodyMode.FULL_DUPLEX_STREAMED: 4}
_SET, _APPEND, _REMOVE = 0, 1, 2  # extproc.Headers' change kinds
_OP_SET, _OP_ADD, _OP_REMOVE = 0, 1, 2  # the module's header operations
_GATEWAY_TIMEOUT = 504  # what Envoy's ext_proc answers when a message times out
_AFTER_WATCHDOG = 0.05  # seconds
_LIFECYCLE_TIMEOUT = 60.0  # seconds an on_startup / on_shutdown may take

logger = logging.getLogger("extkit_dm")

_loop: asyncio.AbstractEventLoop | None = None
_configs: list[_Config] = []
_processors: dict[int, extproc.Processor] = {}
_started: dict[type[extproc.Processor], int] = {}  # classes started, by configs in use


class _Config:
    """One filter config: the class, what it asks of Envoy, and what Envoy's ext_proc filter
    takes from the policy: the message timeout (seconds) and whether a phase with no answer in
    time goes on (``fail_open``) instead of a 504. With headers only, the phase after which
    the stream's Processor is done (``last``); otherwise it is dropped when Envoy ends the
    stream."""

    def __init__(self, cls: type[extproc.Processor], timeout: float, fail_open: bool) -> None:
        spec = cls.filter_spec()
        mode = spec.mode
        self.cls = cls
        self.spec = spec
        self.timeout = timeout
        self.fail_open = fail_open
        self.hooks = ((HOOK_REQUEST_HEADERS if mode.request_headers else 0)
                      | (HOOK_RESPONSE_HEADERS if mode.response_headers else 0)
                      | (HOOK_REQUEST_TRAILERS if mode.request_trailers else 0)
                      | (HOOK_RESPONSE_TRAILERS if mode.response_trailers else 0))
        self.body_modes = (_BODY_MODES[mode.request_body], _BODY_MODES[mode.response_body])
        headers_only = not (mode.request_body or mode.response_body or mode.request_trailers
                            or mode.response_trailers)
        self.last = (0 if not headers_only
                     else RESPONSE_HEADERS if mode.response_headers else REQUEST_HEADERS)


def configure(raw: str) -> tuple[int, int, int, bool, int, int]:
    """A filter config (JSON: ``processor``, ``path``): its handle, the phases it has the
    module send, its message timeout (ms) and fail_open, which the module keeps in C too (a
    hook that blocks the loop still gets Envoy's answer to a timeout), and its body modes.
    Runs on Envoy's main thread; starts the loop thread the first time."""
    options = json.loads(raw or "{}")
    for entry in reversed(options.get("path", [])):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    cls = extproc.import_processor(options["processor"])
    mode = cls.filter_spec().mode
    for name in ("request_body", "response_body"):
        if getattr(mode, name) not in _BODY_MODES:
            raise extproc.ServeError(f"{cls.__name__}.{name}_mode is "
                                     f"{getattr(mode, name).name}: the dynamic module runs "
                                     "STREAMED, BUFFERED, BUFFERED_PARTIAL and "
                                     "FULL_DUPLEX_STREAMED bodies")
    timeout = float(options.get("message_timeout") or cls.filter_spec().timeout)
    config = _Config(cls, timeout, bool(options.get("fail_open", False)))
    _start()
    if not _started.get(cls):
        # once per class in this Envoy, as once per server process; a failure refuses the
        # config (Envoy does not start, or rejects the update), its traceback on stderr
        _on_loop(cls.on_startup(), f"{cls.__name__}.on_startup")
    _started[cls] = _started.get(cls, 0) + 1
    _configs.append(config)
    return (len(_configs) - 1, config.hooks, max(1, round(timeout * 1000)), config.fail_open,
            *config.body_modes)


def release(config_id: int) -> None:
    """Envoy dropped a filter config (an update, or Envoy stopping): the class's
    ``on_shutdown`` runs once no config of it is left. Streams still open keep running."""
    cls = _configs[config_id].cls
    _started[cls] -= 1
    if _started[cls] == 0:
        del _started[cls]
        try:
            _on_loop(cls.on_shutdown(), f"{cls.__name__}.on_shutdown")
        except Exception:
            logger.exception("%s.on_shutdown failed", cls.__name__)


def _on_loop(coroutine: Any, what: str) -> None:
    """Run ``coroutine`` on the loop thread and wait for it (from Envoy's main thread)."""
    assert _loop is not None
    future = asyncio.run_coroutine_threadsafe(coroutine, _loop)
    try:
        future.result(_LIFECYCLE_TIMEOUT)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise extproc.ServeError(f"{what} took more than {_LIFECYCLE_TIMEOUT:.0f}s") from None


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
    for handle, kind, config_id, payload, eos in dm.take():
        if kind == END:
            # After the steps of tasks created above: a stream that ended before its first
            # phase ran would otherwise get its Processor after this.
            _loop.call_soon(_processors.pop, handle, None)
            continue
        _loop.create_task(_phase(_configs[config_id], handle, kind, payload, eos))


async def _phase(config: _Config, handle: int, kind: int, payload: Any, eos: bool) -> None:
    """Run one phase's hook and answer the module exactly once (a second answer would drop
    the stream's reference twice)."""
    spec = config.spec
    which = _WHICH[kind]
    direction, _, part = which.partition("_")
    answered = False

    def answer(operations: list[tuple[int, bytes, bytes | None]] | None,
               body: bytes | None = None, clear_route: bool = False) -> None:
        nonlocal answered
        done = kind == config.last
        # raises before delivering, or delivers
        dm.answer(handle, kind, done, operations, body, clear_route)
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
        arg: Any
        if part == "body":
            arg = extproc.Body(payload, eos)
        else:
            arg = extproc.Headers(payload, kind="trailers" if part == "trailers" else direction,
                                  allow_routing=spec.allow_routing_mutations,
                                  allow_envoy=spec.allow_envoy_mutations)
            setattr(proc, which, arg)
        proc._phase = which
        if f"on_{which}" not in spec.hooks:  # a phase Envoy's mode sends without a hook
            _pass(proc, which, arg, eos, answer)
            return
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
            result = await hook(arg)
            if proc._replacement is not None:
                proc._replacement = None
                raise extproc.MutationError("replace_body() is not run by the dynamic module "
                                            "yet: change the body in a body hook")
        except asyncio.CancelledError:
            if not expired:
                raise
            logger.error("%s.on_%s: no answer within %ss", spec.name, which, config.timeout)
            if config.fail_open:
                answer(None)  # the module has gone on already, with no more phases
            else:
                reply(_GATEWAY_TIMEOUT, [], b"", "extproc_message_timeout")
            return
        except Exception:
            logger.exception("%s.on_%s failed", spec.name, which)
            if spec.fail_open:
                if part == "body":
                    arg = extproc.Body(payload, eos)  # forward what Envoy sent
                _pass(proc, which, arg, eos, answer)
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
        _pass(proc, which, arg, eos, answer)
    finally:
        if not answered:  # the bridge itself failed (or the loop is closing): let it through
            logger.error("extkit_dm: %s of stream %#x got no answer; continuing", which, handle)
            answer(None)


def _pass(proc: extproc.Processor, which: str, arg: Any, eos: bool, answer: Any) -> None:
    """Answer a phase with what its hook changed (``arg``: its Headers or Body), as the
    ext_proc message loop does: a BUFFERED body's answer carries the headers' changes too
    (they are held until then), with content-length following a changed body."""
    direction, _, part = which.partition("_")
    body_mode = getattr(proc._effective_mode, f"{direction}_body")
    # Envoy's route_cache_action: "default" re-routes on clear_route_cache(), "clear" on any
    # request header change too, "retain" never (clear_route_cache() refuses it).
    clear_route = proc._clear_route_cache
    proc._clear_route_cache = False
    if part == "body":
        headers: extproc.Headers | None = getattr(proc, f"{direction}_headers")
        buffered = (body_mode is extproc.BodyMode.BUFFERED and headers is not None
                    and headers._locked is None)
        operations = None
        if buffered:
            assert headers is not None
            if arg._changed and "content-length" in headers:
                # Envoy keeps content-length in BUFFERED mode and rejects a mismatch.
                headers["content-length"] = str(len(arg._data))
            operations = _operations(headers)
            headers._lock(f"{direction} headers were already sent on")
        answer(operations, arg._data if arg._changed else None,
               _reroutes(proc, direction, clear_route, operations))
        return
    operations = _operations(arg)
    if part == "trailers" or body_mode is not extproc.BodyMode.BUFFERED or eos:
        arg._lock(f"{which} were already sent on")
    answer(operations, None, part == "headers" and _reroutes(proc, direction, clear_route,
                                                             operations))


def _reroutes(proc: extproc.Processor, direction: str, cleared: bool,
              operations: list[Any] | None) -> bool:
    """Whether this answer has Envoy pick the route again (``route_cache_action``)."""
    if direction != "request":
        return False
    action = type(proc).filter_spec().route_cache_action
    return action != "retain" and (cleared or (action == "clear" and bool(operations)))


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
