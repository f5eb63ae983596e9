//! The WASM kernels of `kernels/wasm/` (Rust) and `kernels/c/` (C), built
//! from source by `build.rs` and embedded, so `idlemesh demo` and the tests
//! need no files beside the binary.
//!
//! **Owns** building the kernels the repository ships and tests with.
//! **Must not** be a dependency of the shipped agent's decisions: a pool
//! sends its own kernels; these are the demo's and the tests'.

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// Every embedded kernel, by name.
pub const ALL: &[(&str, &[u8])] = &[
    ("mandelbrot", MANDELBROT),
    ("hostile", HOSTILE),
    ("sha256chain", SHA256CHAIN),
    ("matmul", MATMUL),
    ("nbody", NBODY),
    ("downscale", DOWNSCALE),
    ("histogram-c", HISTOGRAM_C),
];

/// The WGSL kernels of `kernels/wgsl/`: each shader with its layout (the
/// bindings and invocations a task manifest carries for it).
pub mod wgsl {
    pub const MANDELBROT: &str = include_str!("../../wgsl/mandelbrot.wgsl");
    pub const MANDELBROT_LAYOUT: &str = include_str!("../../wgsl/mandelbrot.json");
    pub const MATMUL: &str = include_str!("../../wgsl/matmul.wgsl");
    pub const MATMUL_LAYOUT: &str = include_str!("../../wgsl/matmul.json");
    pub const NBODY: &str = include_str!("../../wgsl/nbody.wgsl");
    pub const NBODY_LAYOUT: &str = include_str!("../../wgsl/nbody.json");

    /// Every WGSL kernel: (name, shader, layout).
    pub const ALL: &[(&str, &str, &str)] = &[
        ("mandelbrot", MANDELBROT, MANDELBROT_LAYOUT),
        ("matmul", MATMUL, MATMUL_LAYOUT),
        ("nbody", NBODY, NBODY_LAYOUT),
    ];
}
