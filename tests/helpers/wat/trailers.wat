;; A proxy-wasm (ABI 0.2.1) filter that records the callbacks of each direction, to compare
;; how the emulator and Envoy end a body with trailers. Per direction it writes down "H" and
;; the headers' end of stream (0/1), "D" for each body call with more to come, "E" for one
;; that ends the stream, and "T" and the trailers' count for the trailers; and, as
;; framing.wat, each body call appends "<D>" or "<E>" to the buffer it is given.
;; - request trailers: adds x-calls, the request's record;
;; - response headers: adds x-request-calls, the request's record;
;; - response trailers: adds x-calls, the response's record.
;; The headers callbacks drop content-length, since the filter changes the body's size.
(module
  (import "env" "proxy_remove_header_map_value"
    (func $remove_header (param i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes"
    (func $set_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 8192))
  ;; the records: the request's at 1024, the response's at 2048 (index 0 and 1)
  (global $request_size (mut i32) (i32.const 0))
  (global $response_size (mut i32) (i32.const 0))
  (data (i32.const 64) "content-length")   ;; 14
  (data (i32.const 80) "<D><E>")
  (data (i32.const 96) "x-calls")          ;; 7
  (data (i32.const 112) "x-request-calls") ;; 15
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $at))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  ;; write $byte down in record $record (0: request, 1: response)
  (func $note (param $record i32) (param $byte i32)
    (if (local.get $record)
      (then
        (i32.store8 (i32.add (i32.const 2048) (global.get $response_size)) (local.get $byte))
        (global.set $response_size (i32.add (global.get $response_size) (i32.const 1))))
      (else
        (i32.store8 (i32.add (i32.const 1024) (global.get $request_size)) (local.get $byte))
        (global.set $request_size (i32.add (global.get $request_size) (i32.const 1))))))
  (func $digit (param $n i32) (result i32)
    (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
  ;; add header $name (at 96 + 16 * $which: x-calls, x-request-calls) to map $map, valued
  ;; record $record
  (func $report (param $map i32) (param $which i32) (param $record i32)
    (drop (call $add_header (local.get $map)
                (i32.add (i32.const 96) (i32.shl (local.get $which) (i32.const 4)))
                (select (i32.const 15) (i32.const 7) (local.get $which))
                (select (i32.const 2048) (i32.const 1024) (local.get $record))
                (select (global.get $response_size) (global.get $request_size)
                        (local.get $record)))))
  (func $body (param $record i32) (param $end i32)
    (call $note (local.get $record) (select (i32.const 69) (i32.const 68) (local.get $end)))
    ;; append at 0xFFFFFFFF: past the end
    (drop (call $set_buffer (local.get $record) (i32.const -1) (i32.const 0)
                            (select (i32.const 83) (i32.const 80) (local.get $end))
                            (i32.const 3))))
  (func (export "proxy_on_request_headers") (param i32 i32) (param $end i32) (result i32)
    (global.set $request_size (i32.const 0))
    (call $note (i32.const 0) (i32.const 72))
    (call $note (i32.const 0) (call $digit (local.get $end)))
    (drop (call $remove_header (i32.const 0) (i32.const 64) (i32.const 14)))
    (i32.const 0))
  (func (export "proxy_on_request_body") (param i32 i32) (param $end i32) (result i32)
    (call $body (i32.const 0) (local.get $end))
    (i32.const 0))
  (func (export "proxy_on_request_trailers") (param i32) (param $count i32) (result i32)
    (call $note (i32.const 0) (i32.const 84))
    (call $note (i32.const 0) (call $digit (local.get $count)))
    (call $report (i32.const 1) (i32.const 0) (i32.const 0))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32) (param $end i32) (result i32)
    (call $report (i32.const 2) (i32.const 1) (i32.const 0))
    (global.set $response_size (i32.const 0))
    (call $note (i32.const 1) (i32.const 72))
    (call $note (i32.const 1) (call $digit (local.get $end)))
    (drop (call $remove_header (i32.const 2) (i32.const 64) (i32.const 14)))
    (i32.const 0))
  (func (export "proxy_on_response_body") (param i32 i32) (param $end i32) (result i32)
    (call $body (i32.const 1) (local.get $end))
    (i32.const 0))
  (func (export "proxy_on_response_trailers") (param i32) (param $count i32) (result i32)
    (call $note (i32.const 1) (i32.const 84))
    (call $note (i32.const 1) (call $digit (local.get $count)))
    (call $report (i32.const 3) (i32.const 0) (i32.const 1))
    (i32.const 0))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32)))
