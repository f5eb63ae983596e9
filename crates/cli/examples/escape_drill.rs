//! The escape drill: a worker whose "kernel" is native code trying to get out.
//!
//! It starts and locks down exactly as `idlemesh worker` does (the same
//! `idlemesh_runtime::worker` start-up), then, for each task, makes the one
//! attempt its params name from native code, as a kernel would after
//! breaking out of wasmtime. `--unconfined` skips the lockdown, so a test can
//! show that each attempt succeeds without it. An example, not a binary:
//! `cargo build --release` leaves it out, so no shipped build carries it.
//!
//! A task's outcome: `ok` (the attempt succeeded), `error` with the errno
//! (refused by a wall), or `sandbox-violation` (the worker was stopped by
//! its seccomp filter; the supervisor says which call).
//!
//! `--serve-kernels` runs real kernels instead, exactly as `idlemesh worker`
//! (with `--unconfined`: without the lockdown), so the runtime benchmark can
//! measure what the lockdown costs in one run.

use std::ffi::CString;
use std::io::{Read as _, Write as _};
use std::process::ExitCode;

use idlemesh_runtime::worker::{WorkerOptions, serve, serve_native};
use idlemesh_runtime::{Outcome, Profile, Status};
use serde_json::Value;

fn main() -> ExitCode {
    let mut options = WorkerOptions { lockdown: true, ..WorkerOptions::default() };
    let mut kernels = false;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--unconfined") => options.lockdown = false,
            Some("--serve-kernels") => kernels = true,
            Some("--gpu") => options.profile = Profile::Gpu,
            Some("--cache-dir") => options.cache_dir = args.next().map(Into::into),
            _ => {
                eprintln!(
                    "escape_drill: usage: escape_drill [--unconfined] [--serve-kernels] [--gpu] [--cache-dir DIR]"
                );
                return ExitCode::from(2);
            }
        }
    }
    let served = if kernels { serve(options) } else { serve_native(options, attempt) };
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("escape_drill: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One attempt: `{"attempt": NAME, "path": ..., "port": ...}`, from the
/// task's input when it has one (one job, a different attempt per task),
/// else from its params.
fn attempt(params: &str, input: &[u8]) -> Outcome {
    let p: Value = if input.is_empty() {
        serde_json::from_str(params).unwrap_or_default()
    } else {
        serde_json::from_slice(input).unwrap_or_default()
    };
    let path = p["path"].as_str().unwrap_or_default();
    let result = match p["attempt"].as_str().unwrap_or_default() {
        "read_file" => {
            std::fs::File::open(path).and_then(|mut f| f.read(&mut [0u8; 1])).map(|n| format!("read {n} byte"))
        }
        "list_dir" => std::fs::read_dir(path).map(|d| format!("{} entries", d.count())),
        "create_file" => std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .and_then(|mut f| f.write_all(b"escaped"))
            .map(|()| "created".into()),
        "connect" => {
            let port = p["port"].as_u64().unwrap_or(0) as u16;
            std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), std::time::Duration::from_secs(2))
                .map(|_| "connected".into())
        }
        "exec" => exec_shell(),
        "fork" => fork(),
        "ptrace_parent" => ptrace_parent(),
        // Signal 0: the same permission check as SIGKILL, without killing the test.
        // SAFETY: kill(2) with plain integers.
        "kill_parent" => check(unsafe { libc::kill(libc::getppid(), 0) }).map(|_| "may signal the parent".into()),
        "keyctl" => {
            const KEYCTL_GET_KEYRING_ID: libc::c_long = 0;
            const KEY_SPEC_USER_KEYRING: libc::c_long = -4;
            // SAFETY: keyctl with integer arguments only.
            let id = unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, 1) };
            check(id).map(|id| format!("user keyring {id}"))
        }
        "io_uring" => {
            let mut params = [0u8; 120];
            // SAFETY: io_uring_setup writes at most sizeof(struct io_uring_params) = 120 bytes.
            let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4, params.as_mut_ptr()) };
            check(fd).map(|fd| {
                // SAFETY: closing the ring we were given.
                unsafe { libc::close(fd as libc::c_int) };
                "ring made".into()
            })
        }
        "ioctl" => {
            let mut waiting: libc::c_int = 0;
            // SAFETY: FIONREAD writes one int, the bytes waiting on our stdin pipe.
            check(unsafe { libc::ioctl(0, libc::FIONREAD, &mut waiting) }).map(|_| format!("{waiting} bytes waiting"))
        }
        "noop" => Ok("tried nothing".into()),
        other => return Outcome::failed(Status::Error, format!("unknown attempt {other:?}")),
    };
    match result {
        Ok(what) => Outcome { output: what.into_bytes(), ..Outcome::failed(Status::Ok, "") },
        Err(e) => Outcome::failed(Status::Error, format!("refused: {e}")),
    }
}

fn check(rc: impl Into<i64>) -> std::io::Result<i64> {
    let rc = rc.into();
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(rc) }
}

/// `/bin/sh -c 'echo drill-exec-ok >&2'`: on success the drill is gone and
/// the supervisor reads that line as the worker's last words.
fn exec_shell() -> std::io::Result<String> {
    let sh = CString::new("/bin/sh").unwrap();
    let args =
        [CString::new("sh").unwrap(), CString::new("-c").unwrap(), CString::new("echo drill-exec-ok >&2").unwrap()];
    let argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
    let envp = [std::ptr::null()];
    // SAFETY: NUL-terminated strings and NULL-terminated arrays that outlive the call.
    unsafe { libc::execve(sh.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Err(std::io::Error::last_os_error())
}

fn fork() -> std::io::Result<String> {
    // SAFETY: the child only calls _exit.
    let pid = check(unsafe { libc::fork() })?;
    if pid == 0 {
        // SAFETY: leaving the child at once.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waiting for the child we made.
    unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
    Ok(format!("forked pid {pid}"))
}

/// Attaches to the supervisor, and lets go at once without its stop.
fn ptrace_parent() -> std::io::Result<String> {
    // SAFETY: ptrace on another process: it fails or attaches; both are handled.
    unsafe {
        let parent = libc::getppid();
        check(libc::ptrace(libc::PTRACE_ATTACH, parent, 0, 0))?;
        let mut status = 0;
        libc::waitpid(parent, &mut status, libc::__WALL);
        // Detaching with signal 0 swallows the SIGSTOP the attach sent.
        libc::ptrace(libc::PTRACE_DETACH, parent, 0, 0);
        Ok(format!("attached to {parent}"))
    }
}
