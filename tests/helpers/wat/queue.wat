;; A proxy-wasm (ABI 0.2.1) filter that passes work through a shared queue:
;; - configure: registers queue "jobs";
;; - request headers: enqueues the value of x-job, when present, on the queue it resolves by
;;   its VM id (property plugin_vm_id) and name; adds x-last-job from shared data "last-job"
;;   when set;
;; - tick: enqueues "tick" (a timer-driven producer);
;; - queue ready: dequeues everything, keeping the last item as shared data "last-job".
(module
  (import "env" "proxy_get_header_map_value"
    (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property"
    (func $get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_register_shared_queue"
    (func $register (param i32 i32 i32) (result i32)))
  (import "env" "proxy_resolve_shared_queue"
    (func $resolve (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_enqueue_shared_queue" (func $enqueue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_dequeue_shared_queue" (func $dequeue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data"
    (func $get_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data"
    (func $set_shared (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; 0..63: slots the host writes pointers, sizes and tokens into
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 256) "jobs")          ;; 4
  (data (i32.const 264) "x-job")         ;; 5
  (data (i32.const 272) "plugin_vm_id")  ;; 12
  (data (i32.const 288) "last-job")      ;; 8
  (data (i32.const 304) "x-last-job")    ;; 10
  (data (i32.const 320) "tick")          ;; 4
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $at))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (i32.eqz (call $register (i32.const 256) (i32.const 4) (i32.const 8))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 264) (i32.const 5) (i32.const 16)
                                   (i32.const 20)))
      (then
        (drop (call $get_property (i32.const 272) (i32.const 12) (i32.const 32)
                                  (i32.const 36)))
        (if (i32.eqz (call $resolve (i32.load (i32.const 32)) (i32.load (i32.const 36))
                                    (i32.const 256) (i32.const 4) (i32.const 24)))
          (then
            (drop (call $enqueue (i32.load (i32.const 24)) (i32.load (i32.const 16))
                                 (i32.load (i32.const 20))))))))
    (if (i32.eqz (call $get_shared (i32.const 288) (i32.const 8) (i32.const 40) (i32.const 44)
                                   (i32.const 48)))
      (then
        (drop (call $add_header (i32.const 0) (i32.const 304) (i32.const 10)
                                (i32.load (i32.const 40)) (i32.load (i32.const 44))))))
    (i32.const 0))
  (func (export "proxy_on_tick") (param i32)
    (drop (call $enqueue (i32.load (i32.const 8)) (i32.const 320) (i32.const 4))))
  (func (export "proxy_on_queue_ready") (param i32) (param $token i32)
    (block $empty
      (loop $next
        (br_if $empty (call $dequeue (local.get $token) (i32.const 52) (i32.const 56)))
        (drop (call $set_shared (i32.const 288) (i32.const 8) (i32.load (i32.const 52))
                                (i32.load (i32.const 56)) (i32.const 0)))
        (br $next))))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32)))
