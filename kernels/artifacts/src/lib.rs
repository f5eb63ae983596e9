//! The WASM kernels of `kernels/wasm/`, built from source by `build.rs` and
//! embedded, so `idlemesh demo` and the tests need no files beside the binary.

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// Every embedded kernel, by name.
pub const ALL: &[(&str, &[u8])] =
    &[("mandelbrot", MANDELBROT), ("hostile", HOSTILE), ("sha256chain", SHA256CHAIN), ("matmul", MATMUL)];
