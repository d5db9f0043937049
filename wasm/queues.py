"""Host functions for shared queues and foreign functions.

Queues follow proxy-wasm-cpp-host: a queue is named within its VM id; tokens count from 1;
registering a name again keeps its token and makes the registering root context the one
woken; every enqueue wakes it with ``proxy_on_queue_ready`` once the running callback returns
(Envoy posts it to the dispatcher); a dequeue from an empty queue answers EMPTY.

Foreign functions are the ones given to the emulator (``foreign_functions={"name": fn}``, a
function of the argument bytes returning the result bytes), then those Envoy ships that SDKs
call:

- ``declare_property`` (its ``DeclarePropertyArguments`` message): a declared read-only
  property can be set once per stream; declaring a name twice, or bytes that are not the
  message, is BAD_ARGUMENT; a declaration from a stream's context is kept on that context,
  where Envoy never looks, so it changes nothing;
- ``compress`` and ``uncompress``: zlib data (the zlib format, default level), bytes that are
  not zlib data SERIALIZATION_FAILURE;
- ``clear_route_cache``: counted on the stream (``HttpResult.route_cache_cleared``).

Any other name is NOT_FOUND, as in Envoy for a function it does not ship (``sign``,
``verify_signature``, ``set_envoy_filter_state`` and the CEL ``expr_*`` functions are not
emulated: give your own under the name).
"""

from __future__ import annotations

import zlib

from .abi import Status
from .errors import HostError
from .memory import Memory
from .protowire import LENGTH_DELIMITED, VARINT, message
from .state import ROOT_CONTEXT_ID, DeclaredProperty, PluginState


class QueueFunctions:
    def __init__(self, state: PluginState, memory: Memory) -> None:
        self.state = state
        self.memory = memory

    def proxy_register_shared_queue(self, name_ptr: int, name_size: int,
                                    token_ptr: int) -> int:
        name = self.memory.text("proxy_register_shared_queue", name_ptr, name_size)
        state = self.state
        # The queue wakes the root context of the context that registered it.
        token = state.queues.register(state.vm_id, name, state.root_context_of(state.context_id))
        self.memory.put_u32("proxy_register_shared_queue", token_ptr, token)
        return Status.OK

    def proxy_resolve_shared_queue(self, vm_id_ptr: int, vm_id_size: int, name_ptr: int,
                                   name_size: int, token_ptr: int) -> int:
        vm_id = self.memory.text("proxy_resolve_shared_queue", vm_id_ptr, vm_id_size)
        name = self.memory.text("proxy_resolve_shared_queue", name_ptr, name_size)
        token = self.state.queues.resolve(vm_id, name)
        if token is None:
            return Status.NOT_FOUND
        self.memory.put_u32("proxy_resolve_shared_queue", token_ptr, token)
        return Status.OK

    def proxy_enqueue_shared_queue(self, token: int, ptr: int, size: int) -> int:
        data = self.memory.read("proxy_enqueue_shared_queue", ptr, size)
        queues = self.state.queues
        if token not in queues.items:
            return Status.NOT_FOUND
        queues.items[token].append(data)
        self.state.pending.append(("queue", token, queues.owners[token]))
        return Status.OK

    def proxy_dequeue_shared_queue(self, token: int, ptr_ptr: int, size_ptr: int) -> int:
        items = self.state.queues.items.get(token)
        if items is None:
            return Status.NOT_FOUND
        if not items:
            return Status.EMPTY
        return self.memory.hand_back("proxy_dequeue_shared_queue", items.popleft(), ptr_ptr,
                                     size_ptr)

    def proxy_call_foreign_function(self, name_ptr: int, name_size: int, arg_ptr: int,
                                    arg_size: int, ret_ptr_ptr: int, ret_size_ptr: int) -> int:
        name = self.memory.text("proxy_call_foreign_function", name_ptr, name_size)
        argument = self.memory.read("proxy_call_foreign_function", arg_ptr, arg_size)
        function = self.state.foreign_functions.get(name)
        if function is None and name == "declare_property":
            return self._declare_property(argument)
        if function is None and name == "clear_route_cache":
            if self.state.stream is not None:
                self.state.stream.route_cache_cleared += 1
            return Status.OK
        if function is None and name in ("compress", "uncompress"):
            result = _zlib(name, argument)
            if result is None:
                return Status.SERIALIZATION_FAILURE
            return self.memory.hand_back("proxy_call_foreign_function", result, ret_ptr_ptr,
                                         ret_size_ptr)
        if function is None:
            return Status.NOT_FOUND
        try:
            result = function(argument)
        except Exception as exc:
            raise HostError(f"foreign function {name!r} (called from "
                            f"{self.state.current_callback}) raised "
                            f"{type(exc).__name__}: {exc}") from exc
        return self.memory.hand_back("proxy_call_foreign_function", bytes(result), ret_ptr_ptr,
                                     ret_size_ptr)

    def _declare_property(self, argument: bytes) -> int:
        # DeclarePropertyArguments: name 1, readonly 2, type 3, schema 4, span 5
        values = message(argument, {1: LENGTH_DELIMITED, 2: VARINT, 3: VARINT,
                                    4: LENGTH_DELIMITED, 5: VARINT})
        if values is None:
            return Status.BAD_ARGUMENT
        name, readonly = values.get(1, b""), values.get(2, 0)
        kind, span = values.get(3, 0), values.get(5, 0)
        assert isinstance(name, bytes) and isinstance(readonly, int)
        assert isinstance(kind, int) and isinstance(span, int)
        state = self.state
        if state.context_id != ROOT_CONTEXT_ID:
            return Status.OK
        if name in state.declared:
            return Status.BAD_ARGUMENT  # Envoy keeps the first declaration
        state.declared[name] = DeclaredProperty(name, bool(readonly), kind, span)
        return Status.OK


_MAX_UNCOMPRESSED = 64 * 1024 * 1024


def _zlib(name: str, data: bytes) -> bytes | None:
    """``compress`` or ``uncompress`` as Envoy's zlib calls do them; None for data that is not
    zlib's (or would uncompress past 64 MiB, which a test treats as not zlib's)."""
    if name == "compress":
        return zlib.compress(data)
    decompressor = zlib.decompressobj()
    try:
        result = decompressor.decompress(data, _MAX_UNCOMPRESSED)
    except zlib.error:
        return None
    if not decompressor.eof or decompressor.unconsumed_tail:
        return None  # cut short, or larger than the cap
    return result
