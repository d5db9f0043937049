;; A proxy-wasm (ABI 0.2.1) filter that marks every body callback, to compare how the emulator
;; and Envoy frame bodies: each body call appends "<D>" (more data follows) or "<E>" (end of
;; stream) to the buffer it is given, in both directions. The headers callbacks drop
;; content-length, since the filter changes the body's size.
(module
  (import "env" "proxy_remove_header_map_value"
    (func $remove_header (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes"
    (func $set_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 64) "content-length")  ;; 14
  (data (i32.const 80) "<D><E>")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $at))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func $mark (param $buffer i32) (param $end i32)
    ;; append at 0xFFFFFFFF: past the end
    (drop (call $set_buffer (local.get $buffer) (i32.const -1) (i32.const 0)
                            (select (i32.const 83) (i32.const 80) (local.get $end))
                            (i32.const 3))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $remove_header (i32.const 0) (i32.const 64) (i32.const 14)))
    (i32.const 0))
  (func (export "proxy_on_request_body") (param i32 i32) (param $end i32) (result i32)
    (call $mark (i32.const 0) (local.get $end))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $remove_header (i32.const 2) (i32.const 64) (i32.const 14)))
    (i32.const 0))
  (func (export "proxy_on_response_body") (param i32 i32) (param $end i32) (result i32)
    (call $mark (i32.const 1) (local.get $end))
    (i32.const 0))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32)))
