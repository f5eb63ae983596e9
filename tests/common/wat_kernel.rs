//! Kernels written as WebAssembly text, for tests that need a kernel doing
//! exactly one thing (no Rust, no WASI around it).

/// A component exporting `run` with the world's type, whose core function
/// does `body`; `extra` adds core module fields. Hand-written canonical ABI:
/// seven flat params, and the result returned through a pointer.
pub fn wat_kernel(memory_pages: u32, extra: &str, body: &str) -> Vec<u8> {
    let text = format!(
        r#"(component
  (core module $m
    (memory (export "memory") {memory_pages})
    (global $bump (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $r i32)
      (local.set $r (global.get $bump))
      (global.set $bump (i32.add (global.get $bump) (local.get 3)))
      (local.get $r))
    {extra}
    (func (export "run") (param i32 i32 i32 i32 i32 i32 i32) (result i32)
      {body}
      (i32.store (i32.const 16) (i32.const 0))
      (i32.store (i32.const 20) (i32.const 0))
      (i32.store (i32.const 24) (i32.const 0))
      (i32.const 16)))
  (core instance $i (instantiate $m))
  (func (export "run")
    (param "input" (list u8)) (param "params" string) (param "resume" (option (list u8)))
    (result (result (list u8) (error string)))
    (canon lift (core func $i "run") (memory (core memory $i "memory")) (realloc (core func $i "realloc")))))"#
    );
    wat::parse_str(text).expect("test WAT is valid")
}
