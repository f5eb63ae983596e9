//! Builds every WASM kernel guest in `kernels/wasm/` for `wasm32-wasip2` from
//! source and exposes the components as byte constants, the way wasmtime's
//! `test-programs/artifacts` does: fixtures made by code, never committed blobs.
//!
//! The nested cargo uses its own target dir (`target/wasm-kernels`) so it never
//! waits on the lock of the build that runs this script, and its own flags:
//! SIMD on, no debug info, paths remapped so the bytes do not depend on where
//! the repository is checked out.

use std::env;
use std::fs;
use std::path::PathBuf;
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
    let flags = ["-Ctarget-feature=+simd128".to_string(), format!("--remap-path-prefix={}=/idlemesh", root.display())];
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
    fs::write(out_dir.join("kernels.rs"), consts).unwrap();
}
