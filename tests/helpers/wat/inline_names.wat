;; A proxy-wasm (ABI 0.2.1) filter that adds each header name of its plugin configuration
;; (names separated by spaces) twice, "w1" then "w2", to every header map it is lent (request
;; headers and trailers, response headers and trailers), shows the map, then removes those
;; names again (all but "host" from the request headers, where it is :authority), so that
;; the exchange goes on as it came. Envoy keeps an inline name's values in one entry
;; ("w1,w2"), another name's in two. Each view is one warn log line, as in header_maps.wat:
;; a tag ("rq", "rt", "ps", "pt"), then "name|value|name|value|...".
(module
  (import "env" "proxy_get_header_map_pairs" (func $get_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value"
    (func $remove (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes"
    (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 8)
  ;; 0..63: slots the host writes into; 64..1023: constants; 1024..: the line being written;
  ;; 65536..: the heap (the configuration, then each view's map, emptied after it)
  (global $heap (mut i32) (i32.const 65536))
  (global $base (mut i32) (i32.const 65536))
  (global $config (mut i32) (i32.const 0))
  (global $config_size (mut i32) (i32.const 0))
  (data (i32.const 64) "w1w2")
  (data (i32.const 512) "rq |rt |ps |pt |")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $at))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32) (param $size i32) (result i32)
    (if (local.get $size)
      (then
        (drop (call $get_buffer (i32.const 7) (i32.const 0) (local.get $size) (i32.const 8)
                                (i32.const 12)))
        (global.set $config (i32.load (i32.const 8)))
        (global.set $config_size (i32.load (i32.const 12)))))
    (global.set $base (global.get $heap))
    (i32.const 1))
  ;; log map $kind (0..3, its tag at 512 + 4 * $kind)
  (func $show (param $kind i32)
    (local $at i32) (local $end i32) (local $out i32)
    (i32.store (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (i32.const 0))
    (drop (call $get_pairs (local.get $kind) (i32.const 16) (i32.const 20)))
    (i32.store (i32.const 1024) (i32.load (i32.add (i32.const 512)
                                                   (i32.shl (local.get $kind) (i32.const 2)))))
    (local.set $out (i32.const 1028))
    (if (i32.load (i32.const 20))
      (then
        ;; the names and values start after the count and the sizes; each NUL becomes "|"
        (local.set $at (i32.add (i32.load (i32.const 16))
          (i32.add (i32.const 4) (i32.shl (i32.load (i32.load (i32.const 16))) (i32.const 3)))))
        (local.set $end (i32.add (i32.load (i32.const 16)) (i32.load (i32.const 20))))
        (block $done
          (loop $next
            (br_if $done (i32.ge_u (local.get $at) (local.get $end)))
            (i32.store8 (local.get $out)
              (select (i32.load8_u (local.get $at)) (i32.const 124)
                      (i32.load8_u (local.get $at))))
            (local.set $at (i32.add (local.get $at) (i32.const 1)))
            (local.set $out (i32.add (local.get $out) (i32.const 1)))
            (br $next)))))
    (drop (call $log (i32.const 3) (i32.const 1024) (i32.sub (local.get $out) (i32.const 1024))))
    (global.set $heap (global.get $base)))
  ;; each name of the configuration: added twice to map $kind, or ($remove) removed from it
  (func $each (param $kind i32) (param $remove i32)
    (local $at i32) (local $end i32) (local $start i32) (local $size i32)
    (local.set $at (global.get $config))
    (local.set $end (i32.add (global.get $config) (global.get $config_size)))
    (block $done
      (loop $next
        ;; skip spaces
        (block $word
          (loop $space
            (br_if $done (i32.ge_u (local.get $at) (local.get $end)))
            (br_if $word (i32.ne (i32.load8_u (local.get $at)) (i32.const 32)))
            (local.set $at (i32.add (local.get $at) (i32.const 1)))
            (br $space)))
        (local.set $start (local.get $at))
        (block $word_end
          (loop $letter
            (br_if $word_end (i32.ge_u (local.get $at) (local.get $end)))
            (br_if $word_end (i32.eq (i32.load8_u (local.get $at)) (i32.const 32)))
            (local.set $at (i32.add (local.get $at) (i32.const 1)))
            (br $letter)))
        (local.set $size (i32.sub (local.get $at) (local.get $start)))
        (if (local.get $remove)
          (then
            ;; "host" stays in the request headers (it is :authority there)
            (if (i32.eqz (i32.and (i32.eqz (local.get $kind))
                                  (i32.and (i32.eq (local.get $size) (i32.const 4))
                                           (i32.eq (i32.load (local.get $start))
                                                   (i32.const 0x74736f68)))))
              (then (drop (call $remove (local.get $kind) (local.get $start)
                                        (local.get $size))))))
          (else
            (drop (call $add (local.get $kind) (local.get $start) (local.get $size)
                             (i32.const 64) (i32.const 2)))
            (drop (call $add (local.get $kind) (local.get $start) (local.get $size)
                             (i32.const 66) (i32.const 2)))))
        (br $next))))
  (func $lent (param $kind i32)
    (call $each (local.get $kind) (i32.const 0))
    (call $show (local.get $kind))
    (call $each (local.get $kind) (i32.const 1)))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $lent (i32.const 0))
    (i32.const 0))
  (func (export "proxy_on_request_trailers") (param i32 i32) (result i32)
    (call $lent (i32.const 1))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (call $lent (i32.const 2))
    (i32.const 0))
  (func (export "proxy_on_response_trailers") (param i32 i32) (result i32)
    (call $lent (i32.const 3))
    (i32.const 0))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32)))
