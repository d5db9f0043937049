;; A proxy-wasm (ABI 0.2.1) filter that fails: proxy_on_request_headers traps when the request
;; has x-trap, proxy_on_done traps for the root context (1: only when the VM goes); otherwise it
;; adds "x-wasm: ok" to responses.
(module
  (import "env" "proxy_get_header_map_value"
    (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 16) "x-trap")
  (data (i32.const 32) "x-wasm")
  (data (i32.const 48) "ok")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $at))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (i32.eqz (call $get (i32.const 0) (i32.const 16) (i32.const 6) (i32.const 64) (i32.const 68)))
      (then unreachable))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $add (i32.const 2) (i32.const 32) (i32.const 6) (i32.const 48) (i32.const 2)))
    (i32.const 0))
  (func (export "proxy_on_done") (param $context i32) (result i32)
    (if (i32.eq (local.get $context) (i32.const 1)) (then unreachable))
    (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32)))
