;; A proxy-wasm (ABI 0.2.1) probe of the properties a host gives: its plugin configuration is a
;; list of property paths, one a line, dots between the segments ("xds.cluster_name" is read
;; as the segments "xds" and "cluster_name", joined by \0 as proxy_get_property takes them).
;; In each phase (configure, request_headers, response_headers, log) it reads every path and
;; logs at info "<phase> <path>=<value as lower-case hex>", or "<phase> <path>=NOT_FOUND",
;; or "<phase> <path>=status <n>" for any other status. A request with an x-probe-deny header
;; is answered locally after its request headers are read: 403 "denied", details
;; "denied by probe".
(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes"
    (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value"
    (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response"
    (func $local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property"
    (func $get_property (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  ;; 0..7: where the host writes a value's pointer and size
  (data (i32.const 64) "0123456789abcdef")
  (data (i32.const 96) "configure")         ;; 9
  (data (i32.const 112) "request_headers")  ;; 15
  (data (i32.const 128) "response_headers") ;; 16
  (data (i32.const 160) "log")              ;; 3
  (data (i32.const 176) "NOT_FOUND")        ;; 9
  (data (i32.const 192) "status ")          ;; 7
  (data (i32.const 208) "x-probe-deny")     ;; 12
  (data (i32.const 224) "denied by probe")  ;; 15
  (global $heap (mut i32) (i32.const 4096))
  (global $mark (mut i32) (i32.const 4096))
  (global $config_ptr (mut i32) (i32.const 0))
  (global $config_len (mut i32) (i32.const 0))
  (global $out (mut i32) (i32.const 0))
  (func (export "proxy_abi_version_0_2_1"))
  (func $alloc (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (block $enough
      (loop $grow
        (br_if $enough (i32.le_u (global.get $heap)
                                 (i32.mul (memory.size) (i32.const 65536))))
        (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then (unreachable)))
        (br $grow)))
    (local.get $at))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    ;; buffer 7: the plugin configuration
    (if (i32.eqz (call $get_buffer (i32.const 7) (i32.const 0) (local.get $size)
                                   (i32.const 0) (i32.const 4)))
      (then
        (global.set $config_ptr (i32.load (i32.const 0)))
        (global.set $config_len (i32.load (i32.const 4)))))
    (global.set $mark (global.get $heap))
    (call $probe (i32.const 96) (i32.const 9))
    (i32.const 1))
  ;; appending to the line being written at $out
  (func $put (param $byte i32)
    (i32.store8 (global.get $out) (local.get $byte))
    (global.set $out (i32.add (global.get $out) (i32.const 1))))
  (func $text (param $ptr i32) (param $size i32)
    (memory.copy (global.get $out) (local.get $ptr) (local.get $size))
    (global.set $out (i32.add (global.get $out) (local.get $size))))
  (func $hex (param $ptr i32) (param $size i32)
    (local $end i32)
    (local.set $end (i32.add (local.get $ptr) (local.get $size)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $ptr) (local.get $end)))
        (call $put (i32.load8_u (i32.add (i32.const 64)
                                         (i32.shr_u (i32.load8_u (local.get $ptr))
                                                    (i32.const 4)))))
        (call $put (i32.load8_u (i32.add (i32.const 64)
                                         (i32.and (i32.load8_u (local.get $ptr))
                                                  (i32.const 15)))))
        (local.set $ptr (i32.add (local.get $ptr) (i32.const 1)))
        (br $next))))
  ;; one path: read it, log the line
  (func $read (param $phase i32) (param $phase_len i32) (param $line i32) (param $len i32)
    (local $path i32) (local $i i32) (local $byte i32) (local $status i32)
    (local $size i32) (local $start i32)
    ;; the path with \0 for each dot
    (local.set $path (call $alloc (local.get $len)))
    (block $copied
      (loop $copy
        (br_if $copied (i32.ge_u (local.get $i) (local.get $len)))
        (local.set $byte (i32.load8_u (i32.add (local.get $line) (local.get $i))))
        (i32.store8 (i32.add (local.get $path) (local.get $i))
                    (select (i32.const 0) (local.get $byte)
                            (i32.eq (local.get $byte) (i32.const 46))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $copy)))
    (i32.store (i32.const 4) (i32.const 0))
    (local.set $status (call $get_property (local.get $path) (local.get $len)
                                           (i32.const 0) (i32.const 4)))
    (local.set $size (select (i32.load (i32.const 4)) (i32.const 0)
                             (i32.eqz (local.get $status))))
    (local.set $start
      (call $alloc (i32.add (i32.add (local.get $phase_len) (local.get $len))
                            (i32.add (i32.const 16) (i32.shl (local.get $size) (i32.const 1))))))
    (global.set $out (local.get $start))
    (call $text (local.get $phase) (local.get $phase_len))
    (call $put (i32.const 32))
    (call $text (local.get $line) (local.get $len))
    (call $put (i32.const 61))
    (if (i32.eqz (local.get $status))
      (then (call $hex (i32.load (i32.const 0)) (local.get $size)))
      (else
        (if (i32.eq (local.get $status) (i32.const 1))
          (then (call $text (i32.const 176) (i32.const 9)))
          (else
            (call $text (i32.const 192) (i32.const 7))
            (if (i32.ge_u (local.get $status) (i32.const 10))
              (then (call $put (i32.add (i32.const 48)
                                        (i32.div_u (local.get $status) (i32.const 10))))))
            (call $put (i32.add (i32.const 48)
                                (i32.rem_u (local.get $status) (i32.const 10))))))))
    (drop (call $log (i32.const 2) (local.get $start)
                     (i32.sub (global.get $out) (local.get $start)))))
  ;; every path of the configuration, in order
  (func $probe (param $phase i32) (param $phase_len i32)
    (local $i i32) (local $start i32) (local $end i32)
    (global.set $heap (global.get $mark))  ;; what the last probe allocated is free again
    (block $done
      (loop $line
        (br_if $done (i32.ge_u (local.get $i) (global.get $config_len)))
        (local.set $start (local.get $i))
        (block $found
          (loop $scan
            (br_if $found (i32.ge_u (local.get $i) (global.get $config_len)))
            (br_if $found (i32.eq (i32.load8_u (i32.add (global.get $config_ptr)
                                                        (local.get $i)))
                                  (i32.const 10)))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $scan)))
        (local.set $end (local.get $i))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (if (i32.gt_u (local.get $end) (local.get $start))
          (then
            (call $read (local.get $phase) (local.get $phase_len)
                        (i32.add (global.get $config_ptr) (local.get $start))
                        (i32.sub (local.get $end) (local.get $start)))))
        (br $line))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $probe (i32.const 112) (i32.const 15))
    ;; map 0: the request headers
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 208) (i32.const 12)
                                   (i32.const 0) (i32.const 4)))
      (then
        ;; no headers (an empty pairs buffer), no gRPC status (-1)
        (drop (call $local_response (i32.const 403) (i32.const 224) (i32.const 15)
                                    (i32.const 224) (i32.const 6) (i32.const 0) (i32.const 0)
                                    (i32.const -1)))
        (return (i32.const 1))))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (call $probe (i32.const 128) (i32.const 16))
    (i32.const 0))
  (func (export "proxy_on_log") (param i32)
    (call $probe (i32.const 160) (i32.const 3)))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_delete") (param i32)))
