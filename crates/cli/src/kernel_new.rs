//! `idlemesh kernel new NAME`: a kernel project from the template in
//! `kernels/template`, with a copy of the kernel kit (`kernels/guest`) and
//! the WIT world inside it, so it builds wherever it is written.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::json;

use crate::exit::bad_input;

/// The project's files: (path, contents). In the two `.in` templates,
/// `{name}` is the package's name and `{file}` its component's file stem;
/// the rest are copied as they are.
const TEMPLATES: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../../../kernels/template/Cargo.toml.in")),
    ("README.md", include_str!("../../../kernels/template/README.md.in")),
];
const FILES: &[(&str, &str)] = &[
    (".gitignore", "/target\n"),
    ("src/lib.rs", include_str!("../../../kernels/template/src/lib.rs")),
    ("guest/Cargo.toml", include_str!("../../../kernels/template/guest.Cargo.toml")),
    ("guest/src/lib.rs", include_str!("../../../kernels/guest/src/lib.rs")),
    ("wit/kernel.wit", include_str!("../../../kernels/wit/kernel.wit")),
];

/// Names Cargo refuses for a package, besides what `check_name` rejects.
const RESERVED: &[&str] = &[
    "alloc",
    "core",
    "proc_macro",
    "std",
    "test",
    "idlemesh-guest",
    "idlemesh_guest",
    "as",
    "async",
    "await",
    "box",
    "break",
    "const",
    "continue",
    "crate",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "fn",
    "for",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "match",
    "mod",
    "move",
    "mut",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "struct",
    "super",
    "trait",
    "true",
    "type",
    "unsafe",
    "use",
    "where",
    "while",
    "yield",
];

/// A package name: a lowercase letter, then lowercase letters, digits, `-`
/// or `_`, at most 64 in all.
fn check_name(name: &str) -> anyhow::Result<()> {
    let well_formed = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !well_formed {
        return Err(bad_input(format!(
            "{name:?} is not a kernel name: use a lowercase letter, then lowercase letters, digits, - or _ (at most 64)"
        )));
    }
    if RESERVED.contains(&name) {
        return Err(bad_input(format!("{name:?} is a name Cargo or the kernel kit keeps for itself: choose another")));
    }
    Ok(())
}

/// Writes the project `NAME/` in `parent`; an existing `NAME` is never touched.
pub fn create(parent: &Path, name: &str, json: bool) -> anyhow::Result<()> {
    check_name(name)?;
    let dir = parent.join(name);
    if dir.symlink_metadata().is_ok() {
        return Err(bad_input(format!("{} already exists: choose another name or move it away", dir.display())));
    }
    // Written beside it under another name, then renamed: an interrupted
    // run leaves no half project named NAME.
    let partial = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let written = write_files(&partial, name);
    let placed = written.and_then(|()| {
        std::fs::rename(&partial, &dir).with_context(|| format!("moving the project to {}", dir.display()))
    });
    if let Err(e) = placed {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e);
    }
    let wasm = PathBuf::from("target/wasm32-wasip2/release").join(format!("{}.wasm", name.replace('-', "_")));
    if json {
        let files: Vec<&str> = TEMPLATES.iter().chain(FILES).map(|(path, _)| *path).collect();
        println!("{}", serde_json::to_string_pretty(&json!({ "path": dir, "files": files, "wasm": wasm }))?);
    } else {
        println!("created the kernel project {}", dir.display());
        println!("  cd {name}");
        println!("  cargo test                                     # the kernel, natively");
        println!("  cargo build --release --target wasm32-wasip2   # the component");
        println!("  idlemesh kernel run {} --input FILE", wasm.display());
    }
    Ok(())
}

fn write_files(dir: &Path, name: &str) -> anyhow::Result<()> {
    let file = name.replace('-', "_");
    let filled = TEMPLATES.iter().map(|(path, text)| (*path, text.replace("{name}", name).replace("{file}", &file)));
    for (path, contents) in filled.chain(FILES.iter().map(|(path, text)| (*path, text.to_string()))) {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&target, contents).with_context(|| format!("writing {}", target.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_are_package_names() {
        for good in ["wordcount", "my-kernel", "k2_fast"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "2fast", "My", "a b", "../x", "x/y", "é", "test", "fn", "idlemesh-guest", &"k".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_template_fills_in_every_name() {
        let dir = tempfile::tempdir().unwrap();
        create(dir.path(), "word-count", true).unwrap();
        let cargo = std::fs::read_to_string(dir.path().join("word-count/Cargo.toml")).unwrap();
        assert!(cargo.contains(r#"name = "word-count""#), "{cargo}");
        let readme = std::fs::read_to_string(dir.path().join("word-count/README.md")).unwrap();
        assert!(readme.contains("release/word_count.wasm") && !readme.contains("{file}"), "{readme}");
        // Nothing else is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["word-count"]);
        // A second time, the first is kept as it is.
        std::fs::write(dir.path().join("word-count/src/lib.rs"), "mine").unwrap();
        let err = create(dir.path(), "word-count", false).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(std::fs::read_to_string(dir.path().join("word-count/src/lib.rs")).unwrap(), "mine");
    }
}
