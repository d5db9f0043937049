;; A proxy-wasm (ABI 0.2.1) filter that shows each header map the host lends it, then edits
;; it and shows it again, to compare what a module sees (order, repeated names,
;; pseudo-headers) and where its edits land. Each view is one warn log line: a tag, then
;; the pairs as proxy_get_header_map_pairs gives them, "name|value|name|value|...".
;; - request headers ("rq", after the edits "rq+"): adds x-dup "added", user-agent
;;   "added", cache-control "added", x-new "1" and :x-pseudo "p"; replaces x-mid and :path
;;   ("/replaced");
;; - response headers ("ps", "ps+"): adds x-dup, via, cache-control, x-new and :x-pseudo;
;;   replaces x-mid and server;
;; - trailers ("rt"/"rt+", "pt"/"pt+"): adds x-dup "added", replaces x-mid.
(module
  (import "env" "proxy_get_header_map_pairs" (func $get_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value"
    (func $replace (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 4)
  ;; 0..63: slots the host writes into; 64..1023: names, values and tags; 1024..: the line
  ;; being written; 65536..: the heap, emptied after each view
  (global $heap (mut i32) (i32.const 65536))
  (data (i32.const 64) "x-dup")          ;; 5
  (data (i32.const 80) "user-agent")     ;; 10
  (data (i32.const 96) "cache-control")  ;; 13
  (data (i32.const 112) "x-new")         ;; 5
  (data (i32.const 128) ":x-pseudo")     ;; 9
  (data (i32.const 144) "x-mid")         ;; 5
  (data (i32.const 160) ":path")         ;; 5
  (data (i32.const 176) "via")           ;; 3
  (data (i32.const 192) "server")        ;; 6
  (data (i32.const 256) "added")         ;; 5
  (data (i32.const 272) "replaced")      ;; 8
  (data (i32.const 288) "/replaced")     ;; 9
  (data (i32.const 304) "1")             ;; 1
  (data (i32.const 320) "p")             ;; 1
  (data (i32.const 512) "rq |rq+|rt |rt+|ps |ps+|pt |pt+|")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $at))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  ;; log map $kind as view $view (0..7: the tags at 512, four bytes each)
  (func $show (param $kind i32) (param $view i32)
    (local $at i32) (local $end i32) (local $out i32)
    (i32.store (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (i32.const 0))
    (drop (call $get_pairs (local.get $kind) (i32.const 16) (i32.const 20)))
    (i32.store (i32.const 1024) (i32.load (i32.add (i32.const 512)
                                                   (i32.shl (local.get $view) (i32.const 2)))))
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
    (global.set $heap (i32.const 65536)))
  (func $add_value (param $kind i32) (param $name i32) (param $name_size i32) (param $value i32)
                   (param $value_size i32)
    (drop (call $add (local.get $kind) (local.get $name) (local.get $name_size)
                     (local.get $value) (local.get $value_size))))
  (func $replace_value (param $kind i32) (param $name i32) (param $name_size i32)
                       (param $value i32) (param $value_size i32)
    (drop (call $replace (local.get $kind) (local.get $name) (local.get $name_size)
                         (local.get $value) (local.get $value_size))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $show (i32.const 0) (i32.const 0))
    (call $add_value (i32.const 0) (i32.const 64) (i32.const 5) (i32.const 256) (i32.const 5))
    (call $add_value (i32.const 0) (i32.const 80) (i32.const 10) (i32.const 256) (i32.const 5))
    (call $add_value (i32.const 0) (i32.const 96) (i32.const 13) (i32.const 256) (i32.const 5))
    (call $add_value (i32.const 0) (i32.const 112) (i32.const 5) (i32.const 304) (i32.const 1))
    (call $add_value (i32.const 0) (i32.const 128) (i32.const 9) (i32.const 320) (i32.const 1))
    (call $replace_value (i32.const 0) (i32.const 144) (i32.const 5) (i32.const 272)
                         (i32.const 8))
    (call $replace_value (i32.const 0) (i32.const 160) (i32.const 5) (i32.const 288)
                         (i32.const 9))
    (call $show (i32.const 0) (i32.const 1))
    (i32.const 0))
  (func (export "proxy_on_request_trailers") (param i32 i32) (result i32)
    (call $show (i32.const 1) (i32.const 2))
    (call $add_value (i32.const 1) (i32.const 64) (i32.const 5) (i32.const 256) (i32.const 5))
    (call $replace_value (i32.const 1) (i32.const 144) (i32.const 5) (i32.const 272)
                         (i32.const 8))
    (call $show (i32.const 1) (i32.const 3))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (call $show (i32.const 2) (i32.const 4))
    (call $add_value (i32.const 2) (i32.const 64) (i32.const 5) (i32.const 256) (i32.const 5))
    (call $add_value (i32.const 2) (i32.const 176) (i32.const 3) (i32.const 256) (i32.const 5))
    (call $add_value (i32.const 2) (i32.const 96) (i32.const 13) (i32.const 256) (i32.const 5))
    (call $add_value (i32.const 2) (i32.const 112) (i32.const 5) (i32.const 304) (i32.const 1))
    (call $add_value (i32.const 2) (i32.const 128) (i32.const 9) (i32.const 320) (i32.const 1))
    (call $replace_value (i32.const 2) (i32.const 144) (i32.const 5) (i32.const 272)
                         (i32.const 8))
    (call $replace_value (i32.const 2) (i32.const 192) (i32.const 6) (i32.const 272)
                         (i32.const 8))
    (call $show (i32.const 2) (i32.const 5))
    (i32.const 0))
  (func (export "proxy_on_response_trailers") (param i32 i32) (result i32)
    (call $show (i32.const 3) (i32.const 6))
    (call $add_value (i32.const 3) (i32.const 64) (i32.const 5) (i32.const 256) (i32.const 5))
    (call $replace_value (i32.const 3) (i32.const 144) (i32.const 5) (i32.const 272)
                         (i32.const 8))
    (call $show (i32.const 3) (i32.const 7))
    (i32.const 0))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32)))
