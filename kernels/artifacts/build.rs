//! Builds every WASM kernel guest in `kernels/wasm/` for `wasm32-wasip2` from
//! source and exposes the components as byte constants, the way wasmtime's
//! `test-programs/artifacts` does: fixtures made by code, never committed blobs.
//!
//! The nested cargo uses its own target dir (`target/wasm-kernels`) so it never
//! waits on the lock of the build that runs this script, and its own flags:
//! SIMD on, loops interleaved and unrolled further, no debug info, paths
//! remapped so the bytes do not depend on where the repository is checked out.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// (constant name, package) of each guest.
const GUESTS: &[(&str, &str)] = &[
    ("MANDELBROT", "idlemesh-kernel-mandelbrot"),
    ("HOSTILE", "idlemesh-kernel-hostile"),
    ("SHA256CHAIN", "idlemesh-kernel-sha256chain"),
    ("MATMUL", "idlemesh-kernel-matmul"),
    ("NBODY", "idlemesh-kernel-nbody"),
    ("DOWNSCALE", "idlemesh-kernel-downscale"),
];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.join("../..").canonicalize().unwrap();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let target_dir =
        env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target")).join("wasm-kernels");

    println!("cargo:rerun-if-changed={}", root.join("kernels/wasm").display());
    println!("cargo:rerun-if-changed={}", root.join("kernels/wit").display());
    println!("cargo:rerun-if-changed={}", root.join("kernels/guest").display());

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target_dir)
        .args(["--config", "profile.release.debug=false"])
        .args(["--config", "profile.release.strip=true"])
        .args(["--config", "profile.release.codegen-units=1"])
        .args(["--config", "profile.release.lto=true"]);
    for (_, package) in GUESTS {
        cmd.args(["-p", package]);
    }
    for var in ["RUSTFLAGS", "CARGO_BUILD_RUSTFLAGS", "CARGO_TARGET_DIR", "RUSTC_WORKSPACE_WRAPPER", "RUSTC_WRAPPER"] {
        cmd.env_remove(var);
    }
    // Cranelift neither unrolls nor schedules, so what LLVM leaves rolled
    // costs the WASM build more than the native one (docs/benchmarks.md,
    // session 21). LLVM's WebAssembly cost model never interleaves a
    // vectorised loop (one v128 an iteration: downscale paid the loop's
    // counter and addresses for every 16 bytes); four measured best
    // (0.70x -> 0.77-0.79x of native). A higher unroll threshold lets it
    // unroll sha256's 64 rounds (the constants become immediates, the
    // schedule's slots fixed offsets): 0.87x -> 1.01-1.04x; no other
    // kernel's code changed. Neither reorders float operations (Rust
    // allows no reassociation): outputs stay bit-identical to native.
    let flags = [
        "-Ctarget-feature=+simd128".to_string(),
        "-Cllvm-args=-force-vector-interleave=4".to_string(),
        "-Cllvm-args=-unroll-threshold=2000".to_string(),
        format!("--remap-path-prefix={}=/idlemesh", root.display()),
    ];
    cmd.env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"));

    let status = cmd.status().expect("could not start cargo to build the WASM kernels");
    if !status.success() {
        panic!(
            "building the WASM kernels for wasm32-wasip2 failed ({status}). \
             If the target is missing, run `rustup target add wasm32-wasip2` (scripts/setup does)."
        );
    }

    let mut consts = String::new();
    for (name, package) in GUESTS {
        let file = format!("{}.wasm", package.replace('-', "_"));
        let built = target_dir.join("wasm32-wasip2/release").join(&file);
        let copy = out_dir.join(&file);
        fs::copy(&built, &copy).unwrap_or_else(|e| panic!("{}: {e}", built.display()));
        consts.push_str(&format!(
            "/// The `{package}` component, built for wasm32-wasip2.\npub const {name}: &[u8] = include_bytes!({:?});\n",
            copy.display()
        ));
    }
    for (name, dir) in C_GUESTS {
        let wasm = build_c_kernel(&root, &out_dir, dir).unwrap_or_else(|e| panic!("the C kernel {dir}: {e:#}"));
        consts.push_str(&format!(
            "/// The C kernel `kernels/c/{dir}`, a component for wasm32-wasip2.\npub const {name}: &[u8] = include_bytes!({:?});\n",
            wasm.display()
        ));
    }
    fs::write(out_dir.join("kernels.rs"), consts).unwrap();
}

/// (constant name, directory in `kernels/c`) of each C guest.
const C_GUESTS: &[(&str, &str)] = &[("HISTOGRAM_C", "histogram")];

/// A kernel written in C: its WIT glue generated with wit-bindgen's C
/// generator, compiled with clang for `wasm32-wasi` against Debian's
/// wasi-libc (a WASI preview 1 "reactor": no `main`), then made a component:
/// the world's type embedded, preview 1 adapted to preview 2 with
/// wasmtime's adapter. Every step is a kept tool or crate, none downloaded
/// at build time.
fn build_c_kernel(root: &Path, out_dir: &Path, dir: &str) -> anyhow::Result<PathBuf> {
    use anyhow::Context as _;
    use wit_bindgen_core::wit_parser::Resolve;

    let source_dir = root.join("kernels/c").join(dir);
    println!("cargo:rerun-if-changed={}", source_dir.display());
    let mut resolve = Resolve::default();
    let (package, _) = resolve.push_path(root.join("kernels/wit"))?;
    let world = resolve.select_world(&[package], Some("kernel"))?;

    // The glue: kernel.h and kernel.c (the type information is embedded
    // below instead of linked from an object file).
    let glue = out_dir.join("c-glue");
    fs::create_dir_all(&glue)?;
    let mut files = wit_bindgen_core::Files::default();
    let opts = wit_bindgen_c::Opts { no_object_file: true, ..Default::default() };
    opts.build().generate(&mut resolve, world, &mut files)?;
    for (name, contents) in files.iter() {
        fs::write(glue.join(name), contents)?;
    }
    // kernel.c keeps the type object linked with a reference to this
    // symbol; with the type embedded below, it only needs to exist.
    let force_link = glue.join("component_type_link.c");
    fs::write(&force_link, "void __component_type_object_force_link_kernel(void) {}\n")?;

    let core = out_dir.join(format!("{dir}.core.wasm"));
    let mut clang = Command::new("clang");
    clang
        .args(["--target=wasm32-wasi", "-mexec-model=reactor", "-O2", "-std=c11", "-Wall", "-Wextra", "-Werror"])
        // The same bytes wherever the repository is checked out.
        .arg(format!("-ffile-prefix-map={}=/idlemesh", root.display()))
        .arg(format!("-ffile-prefix-map={}=/out", out_dir.display()))
        .arg("-I")
        .arg(&glue)
        .arg(source_dir.join(format!("{dir}.c")))
        .arg(glue.join("kernel.c"))
        .arg(&force_link)
        .args(["-Wl,--strip-debug", "-o"])
        .arg(&core);
    let status = clang.status().context(
        "clang is missing: scripts/setup installs clang, lld, wasi-libc and libclang-rt-14-dev-wasm32 from Debian",
    )?;
    anyhow::ensure!(status.success(), "clang failed ({status}); its messages are above");

    let mut module = fs::read(&core)?;
    wit_component::embed_component_metadata(&mut module, &resolve, world, wit_component::StringEncoding::UTF8)?;
    let component = wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&module)?
        .adapter(
            "wasi_snapshot_preview1",
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )?
        .encode()
        .context("making the core module a component")?;
    let wasm = out_dir.join(format!("{dir}_c.wasm"));
    fs::write(&wasm, component)?;
    Ok(wasm)
}
