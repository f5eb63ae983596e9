//! The Windows build of `idlemesh`, run under Debian's Wine.
//!
//! The build is `cargo build --target x86_64-pc-windows-gnu` of the whole
//! engine (everything but the Tauri shell), the same command `scripts/test`
//! runs first, so here it is normally already fresh. The executable is
//! copied into a directory of its own under the test target's temp dir,
//! beside the one thing Wine 8 lacks: `bcryptprimitives.dll`, whose
//! `ProcessPrng` Rust's standard library calls for random bytes. The
//! stand-in is built here from a few lines of C with MinGW and forwards to
//! `advapi32!SystemFunction036` (RtlGenRandom). It exists only in that
//! directory: nothing ships with it, and Windows has the real DLL.
//!
//! One Wine prefix serves the whole run (its first start takes seconds),
//! kept under the target dir so a warm run reuses it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where Debian's `wine64` package puts the loader (not on PATH).
const WINE64: &str = "/usr/lib/wine/wine64";
const TARGET: &str = "x86_64-pc-windows-gnu";

/// The Linux build under test, for comparisons.
pub const LINUX_BIN: &str = env!("CARGO_BIN_EXE_idlemesh");

pub struct Wine {
    prefix: PathBuf,
    /// `idlemesh.exe` and the DLL stand-in.
    bin_dir: PathBuf,
}

/// The shared set-up; the first caller builds it.
pub fn wine() -> &'static Wine {
    static WINE: OnceLock<Wine> = OnceLock::new();
    WINE.get_or_init(|| Wine::set_up().unwrap_or_else(|e| panic!("{e}")))
}

impl Wine {
    fn set_up() -> Result<Self, String> {
        if !Path::new(WINE64).exists() {
            return Err(format!("{WINE64} is missing: scripts/setup installs Debian's wine64"));
        }
        let exe = windows_build()?;
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let bin_dir = tmp.join("windows-bin");
        std::fs::create_dir_all(&bin_dir).map_err(|e| format!("{}: {e}", bin_dir.display()))?;
        std::fs::copy(&exe, bin_dir.join("idlemesh.exe")).map_err(|e| format!("copying {}: {e}", exe.display()))?;
        build_prng_stand_in(&bin_dir)?;
        let wine = Self { prefix: tmp.join("wine-prefix"), bin_dir };
        let started = Instant::now();
        let mut boot = wine.command(Path::new("wineboot"));
        boot.arg("--init");
        let boot = output(boot, Duration::from_secs(300)).map_err(|e| format!("wineboot: {e}"))?;
        if !boot.status.success() {
            return Err(format!("wineboot failed: {}", String::from_utf8_lossy(&boot.stderr)));
        }
        eprintln!("wine prefix {} ready in {:.1} s", wine.prefix.display(), started.elapsed().as_secs_f64());
        Ok(wine)
    }

    /// `program` under Wine with this run's prefix, quiet, no display.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(WINE64);
        cmd.arg(program)
            .env("WINEPREFIX", &self.prefix)
            .env("WINEDEBUG", "-all")
            // No Mono or Gecko installer prompts when the prefix is made.
            .env("WINEDLLOVERRIDES", "mscoree,mshtml=")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .stdin(Stdio::null());
        cmd
    }

    /// `idlemesh.exe ARGS`.
    pub fn idlemesh(&self) -> Command {
        self.command(&self.bin_dir.join("idlemesh.exe"))
    }
}

/// A Linux path as the Windows program sees it: Wine maps `/` to drive Z:.
pub fn win_path(path: &Path) -> String {
    let absolute = std::path::absolute(path).expect("absolute path");
    format!("Z:{}", absolute.display().to_string().replace('/', "\\"))
}

/// Runs `cmd` to its end (killed after `limit`), what it printed read from
/// files, not pipes: the first Wine program to start in a prefix starts the
/// Wine server and its services too, which keep whatever it was given as
/// stdout and stderr open for as long as they run, so a pipe would never
/// end.
pub fn output(mut cmd: Command, limit: Duration) -> std::io::Result<Output> {
    let (stdout, stderr) = (tempfile::tempfile()?, tempfile::tempfile()?);
    let mut child = cmd.stdout(stdout.try_clone()?).stderr(stderr.try_clone()?).spawn()?;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |mut f: std::fs::File| -> std::io::Result<Vec<u8>> {
        use std::io::{Read as _, Seek as _};
        f.rewind()?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    Ok(Output { status, stdout: read(stdout)?, stderr: read(stderr)? })
}

/// [`output`], shown in the test's log.
/// Each stream is shown cut to its first lines: a failing test's log is
/// read from its end, where the assertion is, and a dozen whole reports
/// before it would push that out of view (CI shows the log's two ends).
pub fn run(what: &str, cmd: Command, limit: Duration) -> Output {
    let out = output(cmd, limit).unwrap_or_else(|e| panic!("{what}: {e}"));
    eprintln!(
        "$ {what}\nexit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        first_lines(&out.stdout, 12),
        first_lines(&out.stderr, 12)
    );
    out
}

/// The first `n` lines of `bytes`, and how much more there was.
fn first_lines(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let shown: String = text.split_inclusive('\n').take(n).collect();
    match text.len() - shown.len() {
        0 => shown,
        more => format!("{shown}[… {more} more bytes]\n"),
    }
}

/// The Windows `idlemesh.exe`, built (or found fresh) by the same command
/// `scripts/test` runs, so the two never fight over features.
fn windows_build() -> Result<PathBuf, String> {
    let target_dir = Path::new(LINUX_BIN).parent().and_then(Path::parent).ok_or("no target dir")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let started = Instant::now();
    let mut build = Command::new(cargo);
    // What Cargo tells the test process about this package would reach the
    // build scripts, which rebuild on it (ring watches CARGO_MANIFEST_DIR):
    // without it, the build is the one scripts/test made, found fresh.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let about_this_package = ["CARGO_MANIFEST_", "CARGO_PKG_", "CARGO_CRATE_", "CARGO_BIN_"]
            .iter()
            .any(|prefix| key.starts_with(prefix))
            || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"].contains(&key.as_ref());
        if about_this_package {
            build.env_remove(key.as_ref());
        }
    }
    let status = build
        .current_dir(&workspace)
        .args(["build", "--release", "--locked", "--target", TARGET, "--workspace", "--exclude", "idlemesh-app"])
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .map_err(|e| format!("cargo build for {TARGET}: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build for {TARGET} failed ({status})"));
    }
    eprintln!("Windows build checked in {:.1} s", started.elapsed().as_secs_f64());
    Ok(target_dir.join(TARGET).join("release/idlemesh.exe"))
}

/// `bcryptprimitives.dll` with the one export Rust's std needs, for Wine 8.
fn build_prng_stand_in(dir: &Path) -> Result<(), String> {
    let source = dir.join("bcryptprimitives.c");
    let def = dir.join("bcryptprimitives.def");
    std::fs::write(
        &source,
        r#"#include <windows.h>
/* advapi32's RtlGenRandom, which Wine has. */
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG chunk = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk)) return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
"#,
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(&def, "LIBRARY bcryptprimitives\nEXPORTS\n    ProcessPrng\n").map_err(|e| e.to_string())?;
    let out = Command::new("x86_64-w64-mingw32-gcc")
        .args(["-shared", "-O2", "-o"])
        .arg(dir.join("bcryptprimitives.dll"))
        .arg(&source)
        .arg(&def)
        .arg("-ladvapi32")
        .output()
        .map_err(|e| format!("x86_64-w64-mingw32-gcc (gcc-mingw-w64-x86-64): {e}"))?;
    if !out.status.success() {
        return Err(format!("building the bcryptprimitives stand-in: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}
