;; A proxy-wasm (ABI 0.2.1) filter in plain WAT that calls many host functions, for the
;; emulator's tests (and, where Envoy behaves the same, the differential ones):
;; - configure: keeps the plugin configuration, sets a 1000 ms tick, defines counter "requests";
;; - tick: sets shared data "ticked" = "yes";
;; - request headers: counts the request; copies x-copy into x-copied (replace), removes
;;   x-remove, adds x-path from the request.path property, adds x-ticked when shared data
;;   "ticked" is set, stores the current time (8 bytes) as shared data "time", logs
;;   "request headers";
;; - request body: buffers until the end of the stream, then inserts "prefix:" before it;
;; - response headers: reads all pairs and writes them back, then adds x-config (the plugin
;;   configuration, or "none").
(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes"
    (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes"
    (func $set_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value"
    (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value"
    (func $replace_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value"
    (func $remove_header (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs"
    (func $get_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_header_map_pairs"
    (func $set_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property"
    (func $get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $set_tick (param i32) (result i32)))
  (import "env" "proxy_get_shared_data"
    (func $get_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data"
    (func $set_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define_metric (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $increment_metric (param i32 i64) (result i32)))
  (import "env" "proxy_get_current_time_nanoseconds" (func $now (param i32) (result i32)))
  (memory (export "memory") 2)
  ;; 0..31: slots the host writes pointers, sizes and values into
  (global $heap (mut i32) (i32.const 8192))
  (global $config_ptr (mut i32) (i32.const 0))
  (global $config_len (mut i32) (i32.const 0))
  (global $requests (mut i32) (i32.const 0))
  (data (i32.const 64) "x-copy")          ;; 6
  (data (i32.const 72) "x-copied")        ;; 8
  (data (i32.const 88) "x-remove")        ;; 8
  (data (i32.const 104) "x-path")         ;; 6
  (data (i32.const 112) "request\00path") ;; 12
  (data (i32.const 128) "ticked")         ;; 6
  (data (i32.const 136) "yes")            ;; 3
  (data (i32.const 144) "x-ticked")       ;; 8
  (data (i32.const 160) "time")           ;; 4
  (data (i32.const 168) "requests")       ;; 8
  (data (i32.const 176) "request headers") ;; 15
  (data (i32.const 192) "prefix:")        ;; 7
  (data (i32.const 208) "x-config")       ;; 8
  (data (i32.const 224) "none")           ;; 4
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $at))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (if (i32.eqz (call $get_buffer (i32.const 7) (i32.const 0) (local.get $size)
                                   (i32.const 0) (i32.const 4)))
      (then
        (global.set $config_ptr (i32.load (i32.const 0)))
        (global.set $config_len (i32.load (i32.const 4)))))
    (drop (call $set_tick (i32.const 1000)))
    ;; metric type 0: counter; its id lands at 16
    (drop (call $define_metric (i32.const 0) (i32.const 168) (i32.const 8) (i32.const 16)))
    (global.set $requests (i32.load (i32.const 16)))
    (i32.const 1))
  (func (export "proxy_on_tick") (param i32)
    (drop (call $set_shared (i32.const 128) (i32.const 6) (i32.const 136) (i32.const 3)
                            (i32.const 0))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $increment_metric (global.get $requests) (i64.const 1)))
    ;; x-copy -> x-copied (map 0: request headers)
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 64) (i32.const 6)
                                   (i32.const 0) (i32.const 4)))
      (then
        (drop (call $replace_header (i32.const 0) (i32.const 72) (i32.const 8)
                                    (i32.load (i32.const 0)) (i32.load (i32.const 4))))))
    (drop (call $remove_header (i32.const 0) (i32.const 88) (i32.const 8)))
    (if (i32.eqz (call $get_property (i32.const 112) (i32.const 12) (i32.const 0)
                                     (i32.const 4)))
      (then
        (drop (call $add_header (i32.const 0) (i32.const 104) (i32.const 6)
                                (i32.load (i32.const 0)) (i32.load (i32.const 4))))))
    (if (i32.eqz (call $get_shared (i32.const 128) (i32.const 6) (i32.const 0) (i32.const 4)
                                   (i32.const 8)))
      (then
        (drop (call $add_header (i32.const 0) (i32.const 144) (i32.const 8)
                                (i32.load (i32.const 0)) (i32.load (i32.const 4))))))
    (drop (call $now (i32.const 24)))
    (drop (call $set_shared (i32.const 160) (i32.const 4) (i32.const 24) (i32.const 8)
                            (i32.const 0)))
    (drop (call $log (i32.const 2) (i32.const 176) (i32.const 15)))
    (i32.const 0))
  (func (export "proxy_on_request_body") (param i32) (param $size i32) (param $end i32)
    (result i32)
    (if (i32.eqz (local.get $end)) (then (return (i32.const 1))))  ;; StopIterationAndBuffer
    ;; buffer 0: the request body; replace nothing at 0 with "prefix:"
    (drop (call $set_buffer (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 192)
                            (i32.const 7)))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    ;; map 2: response headers, read and written back whole
    (if (i32.eqz (call $get_pairs (i32.const 2) (i32.const 0) (i32.const 4)))
      (then
        (drop (call $set_pairs (i32.const 2) (i32.load (i32.const 0))
                               (i32.load (i32.const 4))))))
    (if (i32.eqz (global.get $config_len))
      (then
        (drop (call $add_header (i32.const 2) (i32.const 208) (i32.const 8) (i32.const 224)
                                (i32.const 4))))
      (else
        (drop (call $add_header (i32.const 2) (i32.const 208) (i32.const 8)
                                (global.get $config_ptr) (global.get $config_len)))))
    (i32.const 0))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32)))
