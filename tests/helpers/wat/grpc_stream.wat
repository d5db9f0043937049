;; A proxy-wasm (ABI 0.2.1) filter that opens a gRPC stream for each request and logs, at
;; warn, every step and every callback of it (so that Envoy's log and the emulator's can be
;; compared line by line):
;; - request headers: proxy_grpc_stream to the cluster named by x-cluster (default "grpc";
;;   wrapped in a serialised GrpcService when x-proto is present), service test.Chat, method
;;   Talk, initial metadata x-from: filter; logs "open <status> <token>"; when that fails the
;;   request goes on untouched. Then sends the request's :path, and
;;     x-end: sends "bye" with end of stream; x-cancel: cancels the stream and lets the
;;     request go; otherwise: proxy_grpc_close (half-close);
;;     x-keep: neither (the stream stays open on the filter's side);
;;   logs "sent <status> <status>" and stops the request until the stream ends.
;; - with x-last: instead, closes, sends on and cancels the last stream opened, logs
;;   "last <status> <status> <status>" and lets the request go.
;; - proxy_on_grpc_receive_initial_metadata: "initial <count> <map>" (a map as k|v|k|v|)
;; - proxy_on_grpc_receive: "message <token> <bytes>"
;; - proxy_on_grpc_receive_trailing_metadata: "trailing <count> <map>"
;; - proxy_on_grpc_close: "close <token> <status> <message>" and "after <status>" (a send on
;;   the token then), then adds request header x-grpc-close: <status> to the stream that
;;   opened it and continues it.
(module
  (import "env" "proxy_get_header_map_value"
    (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs"
    (func $get_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes"
    (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_stream"
    (func $grpc_stream (param i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_send" (func $grpc_send (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_close" (func $grpc_close (param i32) (result i32)))
  (import "env" "proxy_grpc_cancel" (func $grpc_cancel (param i32) (result i32)))
  (import "env" "proxy_get_status" (func $get_status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $set_context (param i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; 0..63: slots the host writes pointers, sizes and tokens into
  ;; 3072..4095: the context that opened stream <token>, at 3072 + 4 * ((token / 2) mod 256)
  ;; 4096..4351: a serialised GrpcService; 8192..16383: the log line being built
  (global $heap (mut i32) (i32.const 16384))
  (global $line (mut i32) (i32.const 0))
  (global $last (mut i32) (i32.const 0))
  (data (i32.const 256) "x-cluster")     ;; 9
  (data (i32.const 272) "x-proto")       ;; 7
  (data (i32.const 288) "x-end")         ;; 5
  (data (i32.const 304) "x-cancel")      ;; 8
  (data (i32.const 320) "test.Chat")     ;; 9
  (data (i32.const 336) "Talk")          ;; 4
  (data (i32.const 352) ":path")         ;; 5
  (data (i32.const 368) "bye")           ;; 3
  (data (i32.const 384) "grpc")          ;; 4
  (data (i32.const 400) "x-grpc-close")  ;; 12
  (data (i32.const 416) "x-keep")        ;; 6
  (data (i32.const 432) "x-last")        ;; 6
  (data (i32.const 448) "last ")         ;; 5
  ;; initial metadata x-from: filter, serialised (26 bytes)
  (data (i32.const 512) "\01\00\00\00\06\00\00\00\06\00\00\00x-from\00filter\00")
  (data (i32.const 1024) "open ")        ;; 5
  (data (i32.const 1040) "sent ")        ;; 5
  (data (i32.const 1056) "initial ")     ;; 8
  (data (i32.const 1072) "message ")     ;; 8
  (data (i32.const 1088) "trailing ")    ;; 9
  (data (i32.const 1104) "close ")       ;; 6
  (data (i32.const 1120) "after ")       ;; 6
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $at))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))

  ;; the log line
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
  (func $map (param $ptr i32) (param $size i32)
    ;; a serialised map's names and values, each followed by "|"
    (local $at i32) (local $end i32) (local $c i32)
    (local.set $end (i32.add (local.get $ptr) (local.get $size)))
    (local.set $at (i32.add (local.get $ptr)
      (i32.add (i32.const 4) (i32.shl (i32.load (local.get $ptr)) (i32.const 3)))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $at) (local.get $end)))
        (local.set $c (i32.load8_u (local.get $at)))
        (call $char (select (i32.const 124) (local.get $c) (i32.eqz (local.get $c))))
        (local.set $at (i32.add (local.get $at) (i32.const 1)))
        (br $next))))
  (func $emit
    (drop (call $log (i32.const 3) (i32.const 8192) (global.get $line)))
    (global.set $line (i32.const 0)))

  (func $slot (param $token i32) (result i32)
    (i32.add (i32.const 3072)
             (i32.shl (i32.and (i32.shr_u (local.get $token) (i32.const 1)) (i32.const 255))
                      (i32.const 2))))

  (func (export "proxy_on_request_headers") (param $context i32) (param i32 i32) (result i32)
    (local $cluster i32) (local $cluster_size i32) (local $service i32) (local $size i32)
    (local $status i32) (local $token i32) (local $sent i32) (local $ended i32)
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 432) (i32.const 6) (i32.const 0)
                                   (i32.const 4)))
      (then
        (call $text (i32.const 448) (i32.const 5))
        (call $number (call $grpc_close (global.get $last)))
        (call $char (i32.const 32))
        (call $number (call $grpc_send (global.get $last) (i32.const 368) (i32.const 3)
                                       (i32.const 0)))
        (call $char (i32.const 32))
        (call $number (call $grpc_cancel (global.get $last)))
        (call $emit)
        (return (i32.const 0))))
    (local.set $cluster (i32.const 384))
    (local.set $cluster_size (i32.const 4))
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 256) (i32.const 9) (i32.const 0)
                                   (i32.const 4)))
      (then (local.set $cluster (i32.load (i32.const 0)))
            (local.set $cluster_size (i32.load (i32.const 4)))))
    (local.set $service (local.get $cluster))
    (local.set $size (local.get $cluster_size))
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 272) (i32.const 7) (i32.const 0)
                                   (i32.const 4)))
      (then ;; GrpcService { envoy_grpc { cluster_name } }
        (i32.store8 (i32.const 4096) (i32.const 10))
        (i32.store8 (i32.const 4097) (i32.add (local.get $cluster_size) (i32.const 2)))
        (i32.store8 (i32.const 4098) (i32.const 10))
        (i32.store8 (i32.const 4099) (local.get $cluster_size))
        (memory.copy (i32.const 4100) (local.get $cluster) (local.get $cluster_size))
        (local.set $service (i32.const 4096))
        (local.set $size (i32.add (local.get $cluster_size) (i32.const 4)))))
    (i32.store (i32.const 8) (i32.const 0))
    (local.set $status (call $grpc_stream (local.get $service) (local.get $size)
                                          (i32.const 320) (i32.const 9) (i32.const 336)
                                          (i32.const 4) (i32.const 512) (i32.const 26)
                                          (i32.const 8)))
    (local.set $token (i32.load (i32.const 8)))
    (call $text (i32.const 1024) (i32.const 5))
    (call $number (local.get $status))
    (call $char (i32.const 32))
    (call $number (local.get $token))
    (call $emit)
    (if (local.get $status) (then (return (i32.const 0))))
    (global.set $last (local.get $token))
    (i32.store (call $slot (local.get $token)) (local.get $context))
    (drop (call $get_header (i32.const 0) (i32.const 352) (i32.const 5) (i32.const 16)
                            (i32.const 20)))
    (local.set $sent (call $grpc_send (local.get $token) (i32.load (i32.const 16))
                                      (i32.load (i32.const 20)) (i32.const 0)))
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 304) (i32.const 8) (i32.const 24)
                                   (i32.const 28)))
      (then
        (local.set $ended (call $grpc_cancel (local.get $token)))
        (call $text (i32.const 1040) (i32.const 5))
        (call $number (local.get $sent))
        (call $char (i32.const 32))
        (call $number (local.get $ended))
        (call $emit)
        (return (i32.const 0))))
    (local.set $ended
      (if (result i32)
          (i32.eqz (call $get_header (i32.const 0) (i32.const 288) (i32.const 5) (i32.const 24)
                                     (i32.const 28)))
        (then (call $grpc_send (local.get $token) (i32.const 368) (i32.const 3) (i32.const 1)))
        (else
          (if (result i32)
              (i32.eqz (call $get_header (i32.const 0) (i32.const 416) (i32.const 6)
                                         (i32.const 24) (i32.const 28)))
            (then (i32.const 0))
            (else (call $grpc_close (local.get $token)))))))
    (call $text (i32.const 1040) (i32.const 5))
    (call $number (local.get $sent))
    (call $char (i32.const 32))
    (call $number (local.get $ended))
    (call $emit)
    (i32.const 1))

  (func (export "proxy_on_grpc_receive_initial_metadata") (param i32 i32) (param $count i32)
    (drop (call $get_pairs (i32.const 4) (i32.const 32) (i32.const 36)))
    (call $text (i32.const 1056) (i32.const 8))
    (call $number (local.get $count))
    (call $char (i32.const 32))
    (if (local.get $count)
      (then (call $map (i32.load (i32.const 32)) (i32.load (i32.const 36)))))
    (call $emit))
  (func (export "proxy_on_grpc_receive") (param i32) (param $token i32) (param $size i32)
    (i32.store (i32.const 44) (i32.const 0))
    (drop (call $get_buffer (i32.const 5) (i32.const 0) (local.get $size) (i32.const 40)
                            (i32.const 44)))
    (call $text (i32.const 1072) (i32.const 8))
    (call $number (local.get $token))
    (call $char (i32.const 32))
    (call $text (i32.load (i32.const 40)) (i32.load (i32.const 44)))
    (call $emit))
  (func (export "proxy_on_grpc_receive_trailing_metadata") (param i32 i32) (param $count i32)
    (drop (call $get_pairs (i32.const 5) (i32.const 32) (i32.const 36)))
    (call $text (i32.const 1088) (i32.const 9))
    (call $number (local.get $count))
    (call $char (i32.const 32))
    (if (local.get $count)
      (then (call $map (i32.load (i32.const 32)) (i32.load (i32.const 36)))))
    (call $emit))
  (func (export "proxy_on_grpc_close") (param i32) (param $token i32) (param $status i32)
    (i32.store (i32.const 56) (i32.const 0))
    (drop (call $get_status (i32.const 48) (i32.const 52) (i32.const 56)))
    (call $text (i32.const 1104) (i32.const 6))
    (call $number (local.get $token))
    (call $char (i32.const 32))
    (call $number (local.get $status))
    (call $char (i32.const 32))
    (call $text (i32.load (i32.const 52)) (i32.load (i32.const 56)))
    (call $emit)
    (call $text (i32.const 1120) (i32.const 6))
    (call $number (call $grpc_send (local.get $token) (i32.const 368) (i32.const 3)
                                   (i32.const 0)))
    (call $emit)
    (if (i32.eqz (call $set_context (i32.load (call $slot (local.get $token)))))
      (then
        (call $number (local.get $status))
        (drop (call $add_header (i32.const 0) (i32.const 400) (i32.const 12) (i32.const 8192)
                                (global.get $line)))
        (global.set $line (i32.const 0))
        (drop (call $continue (i32.const 0))))))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1)))
