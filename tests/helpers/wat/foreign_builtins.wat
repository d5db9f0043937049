;; A proxy-wasm (ABI 0.2.1) filter calling the foreign functions Envoy ships besides
;; declare_property: on each request it compresses a text, uncompresses the result,
;; uncompresses bytes that are not zlib data and clears the route cache, then logs at warn
;; "compress <s> uncompress <s> <text> garbage <s> clear <s>".
(module
  (import "env" "proxy_call_foreign_function"
    (func $foreign (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 16384))
  (global $line (mut i32) (i32.const 0))
  (data (i32.const 256) "compress")            ;; 8
  (data (i32.const 272) "uncompress")          ;; 10
  (data (i32.const 288) "clear_route_cache")   ;; 17
  (data (i32.const 320) "hello hello hello")   ;; 17
  (data (i32.const 352) "\01\02\03")           ;; 3
  (data (i32.const 400) "compress ")           ;; 9
  (data (i32.const 416) " uncompress ")        ;; 12
  (data (i32.const 432) " garbage ")           ;; 9
  (data (i32.const 448) " clear ")             ;; 7
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
  (func $digit (param $value i32)
    (i32.store8 (i32.add (i32.const 8192) (global.get $line))
                (i32.add (i32.const 48) (local.get $value)))
    (global.set $line (i32.add (global.get $line) (i32.const 1))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $compressed i32) (local $compressed_size i32)
    (call $text (i32.const 400) (i32.const 9))
    (call $digit (call $foreign (i32.const 256) (i32.const 8) (i32.const 320) (i32.const 17)
                                (i32.const 8) (i32.const 12)))
    (local.set $compressed (i32.load (i32.const 8)))
    (local.set $compressed_size (i32.load (i32.const 12)))
    (call $text (i32.const 416) (i32.const 12))
    (i32.store (i32.const 20) (i32.const 0))
    (call $digit (call $foreign (i32.const 272) (i32.const 10) (local.get $compressed)
                                (local.get $compressed_size) (i32.const 16) (i32.const 20)))
    (call $digit (i32.const -16))  ;; a space
    (call $text (i32.load (i32.const 16)) (i32.load (i32.const 20)))
    (call $text (i32.const 432) (i32.const 9))
    (call $digit (call $foreign (i32.const 272) (i32.const 10) (i32.const 352) (i32.const 3)
                                (i32.const 24) (i32.const 28)))
    (call $text (i32.const 448) (i32.const 7))
    (call $digit (call $foreign (i32.const 288) (i32.const 17) (i32.const 0) (i32.const 0)
                                (i32.const 24) (i32.const 28)))
    (drop (call $log (i32.const 3) (i32.const 8192) (global.get $line)))
    (global.set $line (i32.const 0))
    (i32.const 0))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1)))
