//! Records the versions `idlemesh --version` reports, read from Cargo.lock so
//! they are the versions actually linked.

fn main() {
    // Read when the script runs, not when it is compiled: a script built in
    // another checkout (a target dir moved or shared) still finds this one's.
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let lock = std::path::Path::new(&dir).join("../../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(&lock).unwrap_or_default();
    for krate in ["wasmtime", "wgpu"] {
        let version = locked_version(&text, krate).unwrap_or_else(|| "not built in".into());
        println!("cargo:rustc-env=IDLEMESH_{}_VERSION={version}", krate.to_uppercase());
    }
    println!("cargo:rustc-env=IDLEMESH_PROFILE={}", std::env::var("PROFILE").unwrap_or_default());
}

fn locked_version(lock: &str, name: &str) -> Option<String> {
    let needle = format!("name = \"{name}\"\nversion = \"");
    let start = lock.find(&needle)? + needle.len();
    let end = lock[start..].find('"')?;
    Some(lock[start..start + end].to_owned())
}
