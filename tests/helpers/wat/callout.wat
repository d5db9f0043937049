;; A proxy-wasm (ABI 0.2.1) filter that checks each request with an HTTP callout before
;; letting it through:
;; - request headers: calls cluster "upstream" (GET /check, :authority auth) with
;;   x-echo-status 403 when the request has x-deny, else 200, timeout 1000 ms, and stops;
;;   when the call cannot be made it lets the request through untouched;
;; - the call's reply (to the root context, as every callout's): selects the stream that
;;   made the call (proxy_set_effective_context), then on status 200 adds request headers x-call-status (the reply's status)
;;   and x-call-body (the reply body's first byte) and continues the request; otherwise
;;   answers 403 "denied by callout" itself.
(module
  (import "env" "proxy_get_header_map_value"
    (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call"
    (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes"
    (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $set_context (param i32) (result i32)))
  (import "env" "proxy_send_local_response"
    (func $local_reply (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; 0..63: slots the host writes pointers, sizes and tokens into
  (global $heap (mut i32) (i32.const 4096))
  ;; the call's headers, serialised (95 bytes each): x-echo-status 200, then 403
  (data (i32.const 256) "\04\00\00\00\07\00\00\00\03\00\00\00\05\00\00\00\06\00\00\00\0a\00\00\00\04\00\00\00\0d\00\00\00\03\00\00\00:method\00GET\00:path\00/check\00:authority\00auth\00x-echo-status\00200\00")
  (data (i32.const 512) "\04\00\00\00\07\00\00\00\03\00\00\00\05\00\00\00\06\00\00\00\0a\00\00\00\04\00\00\00\0d\00\00\00\03\00\00\00:method\00GET\00:path\00/check\00:authority\00auth\00x-echo-status\00403\00")
  (data (i32.const 1024) "upstream")           ;; 8
  (data (i32.const 1040) "x-deny")             ;; 6
  (data (i32.const 1056) ":status")            ;; 7
  (data (i32.const 1072) "x-call-status")      ;; 13
  (data (i32.const 1088) "x-call-body")        ;; 11
  (data (i32.const 1104) "denied by callout")  ;; 17
  (data (i32.const 1136) "callout_denied")     ;; 14
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $at))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param $context i32) (param i32 i32) (result i32)
    (local $map i32)
    (local.set $map (select (i32.const 512) (i32.const 256)
      (i32.eqz (call $get_header (i32.const 0) (i32.const 1040) (i32.const 6) (i32.const 0)
                                 (i32.const 4)))))
    (if (result i32)
        (call $http_call (i32.const 1024) (i32.const 8) (local.get $map) (i32.const 95)
                         (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
                         (i32.const 1000) (i32.const 8))
      (then (i32.const 0))     ;; not called: let the request through
      (else
        ;; which stream made call <token>: kept at 3072 + 4 * (token mod 256)
        (i32.store (i32.add (i32.const 3072)
                            (i32.shl (i32.and (i32.load (i32.const 8)) (i32.const 255))
                                     (i32.const 2)))
                   (local.get $context))
        (i32.const 1))))   ;; StopIteration until the reply
  (func (export "proxy_on_http_call_response")
        (param i32) (param $token i32) (param i32) (param $body i32) (param i32)
    (drop (call $set_context
      (i32.load (i32.add (i32.const 3072)
                         (i32.shl (i32.and (local.get $token) (i32.const 255)) (i32.const 2))))))
    (drop (call $get_header (i32.const 6) (i32.const 1056) (i32.const 7) (i32.const 16)
                            (i32.const 20)))
    (if (i32.and (i32.eq (i32.load (i32.const 20)) (i32.const 3))
                 (i32.eq (i32.load8_u (i32.load (i32.const 16))) (i32.const 50)))  ;; "2.."
      (then
        (drop (call $add_header (i32.const 0) (i32.const 1072) (i32.const 13)
                                (i32.load (i32.const 16)) (i32.load (i32.const 20))))
        (drop (call $get_buffer (i32.const 4) (i32.const 0) (i32.const 1) (i32.const 24)
                                (i32.const 28)))
        (drop (call $add_header (i32.const 0) (i32.const 1088) (i32.const 11)
                                (i32.load (i32.const 24)) (i32.load (i32.const 28))))
        (drop (call $continue (i32.const 0))))
      (else
        (drop (call $local_reply (i32.const 403) (i32.const 1136) (i32.const 14)
                                 (i32.const 1104) (i32.const 17) (i32.const 0) (i32.const 0)
                                 (i32.const -1))))))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32)))
