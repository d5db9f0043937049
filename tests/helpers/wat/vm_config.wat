;; A proxy-wasm (ABI 0.2.1) filter that shows its VM configuration: proxy_on_vm_start reads it
;; (buffer 6) and every response gets "x-vm-config: <it>" ("none" when there is none).
(module
  (import "env" "proxy_get_buffer_bytes"
    (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 16) "x-vm-config")
  (data (i32.const 32) "none")
  ;; 64: where the configuration is, 68: its size
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $at))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32) (param $size i32) (result i32)
    (i32.store (i32.const 64) (i32.const 32))
    (i32.store (i32.const 68) (i32.const 4))
    (if (i32.gt_u (local.get $size) (i32.const 0))
      (then
        (drop (call $get_buffer (i32.const 6) (i32.const 0) (local.get $size)
                                (i32.const 64) (i32.const 68)))))
    (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $add_header (i32.const 2) (i32.const 16) (i32.const 11)
                            (i32.load (i32.const 64)) (i32.load (i32.const 68))))
    (i32.const 0))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32)))
