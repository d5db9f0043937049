;; A proxy-wasm (ABI 0.2.1) filter making a unary gRPC call for each request: to cluster
;; "grpc", service test.Chat, method Talk, the request's :path as the message, timeout 2 s;
;; logs at warn "call <status> <token>", then, from the reply's callbacks,
;; "message <token> <bytes>" or "close <token> <status> <message>". The request goes on
;; at once (the call is not waited for).
(module
  (import "env" "proxy_get_header_map_value"
    (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes"
    (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_call"
    (func $grpc_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_status" (func $get_status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 16384))
  (global $line (mut i32) (i32.const 0))
  (data (i32.const 256) "grpc")        ;; 4
  (data (i32.const 272) "test.Chat")   ;; 9
  (data (i32.const 288) "Talk")        ;; 4
  (data (i32.const 304) ":path")       ;; 5
  (data (i32.const 320) "call ")       ;; 5
  (data (i32.const 336) "message ")    ;; 8
  (data (i32.const 352) "close ")      ;; 6
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $at))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func $text (param $ptr i32) (param $size i32)
    (memory.copy (i32.add (i32.const 8192) (global.get $line)) (local.get $ptr) (local.get $size))
    (global.set $line (i32.add (global.get $line) (local.get $size))))
  (func $char (param $c i32)
    (i32.store8 (i32.add (i32.const 8192) (global.get $line)) (local.get $c))
    (global.set $line (i32.add (global.get $line) (i32.const 1))))
  (func $number (param $value i32)
    (if (i32.ge_u (local.get $value) (i32.const 10))
      (then (call $number (i32.div_u (local.get $value) (i32.const 10)))))
    (call $char (i32.add (i32.const 48) (i32.rem_u (local.get $value) (i32.const 10)))))
  (func $emit
    (drop (call $log (i32.const 3) (i32.const 8192) (global.get $line)))
    (global.set $line (i32.const 0)))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $get_header (i32.const 0) (i32.const 304) (i32.const 5) (i32.const 0)
                            (i32.const 4)))
    (i32.store (i32.const 8) (i32.const 0))
    (call $text (i32.const 320) (i32.const 5))
    (call $number (call $grpc_call (i32.const 256) (i32.const 4) (i32.const 272) (i32.const 9)
                                   (i32.const 288) (i32.const 4) (i32.const 0) (i32.const 0)
                                   (i32.load (i32.const 0)) (i32.load (i32.const 4))
                                   (i32.const 2000) (i32.const 8)))
    (call $char (i32.const 32))
    (call $number (i32.load (i32.const 8)))
    (call $emit)
    (i32.const 0))
  (func (export "proxy_on_grpc_receive") (param i32) (param $token i32) (param $size i32)
    (i32.store (i32.const 20) (i32.const 0))
    (drop (call $get_buffer (i32.const 5) (i32.const 0) (local.get $size) (i32.const 16)
                            (i32.const 20)))
    (call $text (i32.const 336) (i32.const 8))
    (call $number (local.get $token))
    (call $char (i32.const 32))
    (call $text (i32.load (i32.const 16)) (i32.load (i32.const 20)))
    (call $emit))
  (func (export "proxy_on_grpc_close") (param i32) (param $token i32) (param $status i32)
    (i32.store (i32.const 32) (i32.const 0))
    (drop (call $get_status (i32.const 24) (i32.const 28) (i32.const 32)))
    (call $text (i32.const 352) (i32.const 6))
    (call $number (local.get $token))
    (call $char (i32.const 32))
    (call $number (local.get $status))
    (call $char (i32.const 32))
    (call $text (i32.load (i32.const 28)) (i32.load (i32.const 32)))
    (call $emit))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1)))
