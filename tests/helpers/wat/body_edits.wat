;; A proxy-wasm (ABI 0.2.1) filter that edits each body, both directions, once it has all of
;; it (StopIterationAndBuffer until the end of the stream), to compare where the host lets a
;; module read and write a body buffer. On "abc" it makes, in order:
;;   1. read all of it (start 0, length 0xFFFFFFFF)        -> status
;;   2. append what it read (start 0xFFFFFFFF)             -> "abcabc"
;;   3. append "!" (start 0xFFFFFFFF)                      -> "abcabc!"
;;   4. insert "!" at 2, inside the buffer                 -> status only
;;   5. replace the first byte with "<" (start 0, length 1) -> "<bcabc!"
;;   6. prepend "[" (start 0, length 0)                    -> "[<bcabc!"
;;   7. the buffer's status                                -> status, length
;;   8. append "]" at start = the length                   -> "[<bcabc!]"
;;   9. read 5 bytes from 100, past the end                -> status, size
;;  10. append "]" at start 100, past the end              -> "[<bcabc!]]"
;; then appends "=" and each status (a digit; length and size as a byte count "<n>"), so the
;; body says what the host answered. The headers callbacks drop content-length, since the
;; filter changes the body's size.
(module
  (import "env" "proxy_get_buffer_bytes"
    (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes"
    (func $set_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_status" (func $buffer_status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value"
    (func $remove_header (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  ;; 0..63: slots the host writes into; 64..: constants; 512..: the report being written
  (global $heap (mut i32) (i32.const 4096))
  (global $out (mut i32) (i32.const 512))
  (data (i32.const 64) "content-length")  ;; 14
  (data (i32.const 80) "!<[]=")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $at))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  ;; the report: one byte, or a number as "<n>" (below 1000)
  (func $put (param $byte i32)
    (i32.store8 (global.get $out) (local.get $byte))
    (global.set $out (i32.add (global.get $out) (i32.const 1))))
  (func $status (param $status i32)
    (call $put (i32.add (i32.const 48) (local.get $status))))
  (func $number (param $n i32)
    (call $put (i32.const 60))
    (call $put (i32.add (i32.const 48) (i32.rem_u (i32.div_u (local.get $n) (i32.const 100))
                                                  (i32.const 10))))
    (call $put (i32.add (i32.const 48) (i32.rem_u (i32.div_u (local.get $n) (i32.const 10))
                                                  (i32.const 10))))
    (call $put (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
    (call $put (i32.const 62)))
  (func $edit (param $buffer i32)
    (global.set $out (i32.const 512))
    (call $put (i32.const 61))
    (call $status (call $get_buffer (local.get $buffer) (i32.const 0) (i32.const -1)
                                    (i32.const 8) (i32.const 12)))
    (call $status (call $set_buffer (local.get $buffer) (i32.const -1) (i32.const 0)
                                    (i32.load (i32.const 8)) (i32.load (i32.const 12))))
    (call $status (call $set_buffer (local.get $buffer) (i32.const -1) (i32.const 0)
                                    (i32.const 80) (i32.const 1)))
    (call $status (call $set_buffer (local.get $buffer) (i32.const 2) (i32.const 0)
                                    (i32.const 80) (i32.const 1)))
    (call $status (call $set_buffer (local.get $buffer) (i32.const 0) (i32.const 1)
                                    (i32.const 81) (i32.const 1)))
    (call $status (call $set_buffer (local.get $buffer) (i32.const 0) (i32.const 0)
                                    (i32.const 82) (i32.const 1)))
    (call $status (call $buffer_status (local.get $buffer) (i32.const 16) (i32.const 20)))
    (call $number (i32.load (i32.const 16)))
    (call $status (call $set_buffer (local.get $buffer) (i32.load (i32.const 16)) (i32.const 0)
                                    (i32.const 83) (i32.const 1)))
    (i32.store (i32.const 24) (i32.const 77))
    (call $status (call $get_buffer (local.get $buffer) (i32.const 100) (i32.const 5)
                                    (i32.const 28) (i32.const 24)))
    (call $number (i32.load (i32.const 24)))
    (call $status (call $set_buffer (local.get $buffer) (i32.const 100) (i32.const 0)
                                    (i32.const 83) (i32.const 1)))
    (drop (call $set_buffer (local.get $buffer) (i32.const -1) (i32.const 0) (i32.const 512)
                            (i32.sub (global.get $out) (i32.const 512)))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $remove_header (i32.const 0) (i32.const 64) (i32.const 14)))
    (i32.const 0))
  (func (export "proxy_on_request_body") (param i32 i32) (param $end i32) (result i32)
    (if (i32.eqz (local.get $end)) (then (return (i32.const 1))))
    (call $edit (i32.const 0))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $remove_header (i32.const 2) (i32.const 64) (i32.const 14)))
    (i32.const 0))
  (func (export "proxy_on_response_body") (param i32 i32) (param $end i32) (result i32)
    (if (i32.eqz (local.get $end)) (then (return (i32.const 1))))
    (call $edit (i32.const 1))
    (i32.const 0))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32)))
