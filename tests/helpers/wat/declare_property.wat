;; A proxy-wasm (ABI 0.2.1) filter that declares a property through Envoy's declare_property
;; foreign function and shows what that changes:
;; - configure: declares "my.flag" (read-only, string), declares it again, and calls
;;   declare_property with bytes that are not its arguments message; keeps the three statuses;
;; - request headers: sets "my.flag" twice and the undeclared "other" twice, reads "my.flag"
;;   back, and logs at warn "declare <s> <s> <s> set <s> <s> <s> <s> <value>".
(module
  (import "env" "proxy_call_foreign_function"
    (func $foreign (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_property" (func $set (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $get (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 16384))
  (global $line (mut i32) (i32.const 0))
  (data (i32.const 256) "declare_property")   ;; 16
  ;; DeclarePropertyArguments { name: "my.flag", readonly: true, type: STRING } (13 bytes)
  (data (i32.const 288) "\0a\07my.flag\10\01\18\01")
  (data (i32.const 320) "\ff")                ;; not a message
  (data (i32.const 336) "my.flag")            ;; 7
  (data (i32.const 352) "other")              ;; 5
  (data (i32.const 368) "one")
  (data (i32.const 384) "two")
  (data (i32.const 400) "declare ")           ;; 8
  (data (i32.const 416) " set ")              ;; 5
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $at))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func $declare (param $ptr i32) (param $size i32) (result i32)
    (call $foreign (i32.const 256) (i32.const 16) (local.get $ptr) (local.get $size)
                   (i32.const 8) (i32.const 12)))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (i32.store (i32.const 32) (call $declare (i32.const 288) (i32.const 13)))
    (i32.store (i32.const 36) (call $declare (i32.const 288) (i32.const 13)))
    (i32.store (i32.const 40) (call $declare (i32.const 320) (i32.const 1)))
    (i32.const 1))
  (func $text (param $ptr i32) (param $size i32)
    (memory.copy (i32.add (i32.const 8192) (global.get $line)) (local.get $ptr) (local.get $size))
    (global.set $line (i32.add (global.get $line) (local.get $size))))
  (func $digit (param $value i32)
    (i32.store8 (i32.add (i32.const 8192) (global.get $line))
                (i32.add (i32.const 48) (local.get $value)))
    (global.set $line (i32.add (global.get $line) (i32.const 1))))
  (func $space
    (i32.store8 (i32.add (i32.const 8192) (global.get $line)) (i32.const 32))
    (global.set $line (i32.add (global.get $line) (i32.const 1))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $text (i32.const 400) (i32.const 8))
    (call $digit (i32.load (i32.const 32)))
    (call $space)
    (call $digit (i32.load (i32.const 36)))
    (call $space)
    (call $digit (i32.load (i32.const 40)))
    (call $text (i32.const 416) (i32.const 5))
    (call $digit (call $set (i32.const 336) (i32.const 7) (i32.const 368) (i32.const 3)))
    (call $space)
    (call $digit (call $set (i32.const 336) (i32.const 7) (i32.const 384) (i32.const 3)))
    (call $space)
    (call $digit (call $set (i32.const 352) (i32.const 5) (i32.const 368) (i32.const 3)))
    (call $space)
    (call $digit (call $set (i32.const 352) (i32.const 5) (i32.const 384) (i32.const 3)))
    (call $space)
    (i32.store (i32.const 20) (i32.const 0))
    (drop (call $get (i32.const 336) (i32.const 7) (i32.const 16) (i32.const 20)))
    (call $text (i32.load (i32.const 16)) (i32.load (i32.const 20)))
    (drop (call $log (i32.const 3) (i32.const 8192) (global.get $line)))
    (global.set $line (i32.const 0))
    (i32.const 0))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1)))
