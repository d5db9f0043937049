;; A module that imports its memory and its function table (as Emscripten's and some
;; AssemblyScript builds do) and has a start function, which calls only sched_yield (a host
;; function Envoy answers without a context). Envoy makes the memory and the table from the
;; imports' limits, whatever their names. Response headers: x-started (the start function
;; ran) and x-indirect, added by a function reached through the imported table.
(module
  (import "env" "memory" (memory 1))
  (import "wasi_snapshot_preview1" "sched_yield" (func $yield (result i32)))
  (import "env" "__indirect_function_table" (table 2 funcref))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (type $adder (func))
  (data (i32.const 100) "x-started")
  (data (i32.const 110) "yes")
  (data (i32.const 120) "x-indirect")
  (data (i32.const 140) "table")
  (global $started (mut i32) (i32.const 0))
  (global $heap (mut i32) (i32.const 1024))
  (elem (i32.const 1) $through_table)
  (func $start (drop (call $yield)) (global.set $started (i32.const 1)))
  (start $start)
  (func $through_table
    (drop (call $add (i32.const 2) (i32.const 120) (i32.const 10) (i32.const 140) (i32.const 5))))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $at i32) (local.set $at (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n))) (local.get $at))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (if (global.get $started)
      (then (drop (call $add (i32.const 2) (i32.const 100) (i32.const 9) (i32.const 110)
                             (i32.const 3)))))
    (call_indirect (type $adder) (i32.const 1))
    (i32.const 0))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1)))
