;; wasm-tagger: a proxy-wasm filter (ABI 0.2.1) in plain WebAssembly text, no toolchain needed.
;; - requests carrying an `x-deny` header are answered 403 "denied by wasm" at once, with
;;   `x-denied-by: wasm`;
;; - every other response gets `x-filter: <plugin configuration>` ("on" when it is empty).
(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes"
    (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value"
    (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response"
    (func $send_local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  ;; bytes 0..7: slots where the host writes a pointer and a size
  (global $heap (mut i32) (i32.const 8192))
  (global $value_ptr (mut i32) (i32.const 64))
  (global $value_len (mut i32) (i32.const 2))
  (data (i32.const 64) "on")
  (data (i32.const 128) "x-filter")
  (data (i32.const 144) "x-deny")
  (data (i32.const 160) "denied by wasm\n")
  (data (i32.const 192) "wasm_denied")
  (data (i32.const 208) "filter configured")
  ;; the local response's headers, serialised as the ABI wants: the number of pairs, each
  ;; pair's name and value sizes (u32, little-endian), then each name and value NUL-ended
  (data (i32.const 256) "\01\00\00\00" "\0b\00\00\00\04\00\00\00" "x-denied-by\00wasm\00")
  (func (export "proxy_abi_version_0_2_1"))
  ;; the host copies strings in through memory the module hands out
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $at))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (if (i32.gt_u (local.get $size) (i32.const 0))
      (then
        ;; buffer type 7: the plugin configuration
        (if (i32.eqz (call $get_buffer (i32.const 7) (i32.const 0) (local.get $size)
                                       (i32.const 0) (i32.const 4)))
          (then
            (global.set $value_ptr (i32.load (i32.const 0)))
            (global.set $value_len (i32.load (i32.const 4)))))))
    ;; log level 2: info
    (drop (call $log (i32.const 2) (i32.const 208) (i32.const 17)))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    ;; map type 0: request headers; status 0: the header is there
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 144) (i32.const 6)
                                   (i32.const 0) (i32.const 4)))
      (then
        (drop (call $send_local_response (i32.const 403) (i32.const 192) (i32.const 11)
                                         (i32.const 160) (i32.const 15)
                                         (i32.const 256) (i32.const 29) (i32.const -1)))
        (return (i32.const 1))))  ;; 1: stop iteration, the local response is sent
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    ;; map type 2: response headers
    (drop (call $add_header (i32.const 2) (i32.const 128) (i32.const 8)
                            (global.get $value_ptr) (global.get $value_len)))
    (i32.const 0))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32)))
