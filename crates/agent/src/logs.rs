//! Where the agent's log goes: stderr, and for the long-running programs
//! (the daemon, the tray app) also daily files in the platform's state dir
//! (DESIGN §6). A tray app started from a desktop session has no terminal:
//! without a file, what it logged is gone when someone asks why.
//!
//! Secrets are never logged (the device key and tokens stay in the
//! keyring), so the files hold what stderr would show.

use std::path::Path;

use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The filter: `$IDLEMESH_LOG` (a `tracing` filter) if set, else `default`.
pub const LOG_ENV: &str = "IDLEMESH_LOG";

/// Days of log files kept.
pub const KEEP_DAYS: usize = 7;

/// Sets up logging for this process. With `file_prefix`, the log is also
/// written to `<log dir>/<prefix>.YYYY-MM-DD.log`; where that cannot be
/// opened the program says why and logs to stderr only.
pub fn init(default: &str, file_prefix: Option<&str>) {
    let filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new(default));
    let stderr = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false);
    let file = file_prefix.map(|prefix| {
        let dir = crate::paths::log_dir();
        daily_file(&dir, prefix).map(|f| (f, dir))
    });
    let (appender, outcome) = match file {
        Some(Ok((f, dir))) => (Some(f), Some(Ok(dir))),
        Some(Err(e)) => (None, Some(Err(e))),
        None => (None, None),
    };
    let file_layer =
        appender.map(|f| tracing_subscriber::fmt::layer().with_writer(f).with_ansi(false).with_target(false));
    tracing_subscriber::registry().with(filter).with(stderr).with(file_layer).init();
    match outcome {
        Some(Ok(dir)) => tracing::info!(dir = %dir.display(), "logging to daily files too"),
        Some(Err(e)) => tracing::warn!(error = %e, "logging to stderr only"),
        None => {}
    }
}

/// A file per day in `dir` (created private to the user), a week kept.
fn daily_file(dir: &Path, prefix: &str) -> Result<RollingFileAppender, LogFileError> {
    // The log names the pools and tasks this machine worked for: the user's own business.
    idlemesh_runtime::private_dir(dir).map_err(|source| LogFileError::Dir { dir: dir.to_owned(), source })?;
    RollingFileAppender::builder()
        .rotation(Rotation::DAILY)
        .filename_prefix(prefix)
        .filename_suffix("log")
        .max_log_files(KEEP_DAYS)
        .build(dir)
        .map_err(|source| LogFileError::File { dir: dir.to_owned(), source })
}

/// Why the log goes to stderr only.
#[derive(Debug, thiserror::Error)]
enum LogFileError {
    #[error("cannot create the log dir {}: {source}", dir.display())]
    Dir {
        dir: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open a log file in {}: {source}", dir.display())]
    File {
        dir: std::path::PathBuf,
        #[source]
        source: tracing_appender::rolling::InitError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daily_file_is_written_in_a_private_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state/logs");
        let mut f = daily_file(&dir, "agent").unwrap();
        std::io::Write::write_all(&mut f, b"hello\n").unwrap();
        std::io::Write::flush(&mut f).unwrap();
        let files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let name = files[0].to_string_lossy().to_string();
        assert!(name.starts_with("agent.") && name.ends_with(".log"), "{name}");
        assert_eq!(std::fs::read_to_string(dir.join(&files[0])).unwrap(), "hello\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        }
        // A path that cannot be a directory gives a message naming it.
        let blocked = tmp.path().join("file");
        std::fs::write(&blocked, "").unwrap();
        let err = daily_file(&blocked.join("logs"), "agent").unwrap_err().to_string();
        assert!(err.contains("cannot create the log dir"), "{err}");
    }
}
