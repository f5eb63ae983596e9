//! Exit statuses: 0 success, 1 the work failed, 2 bad usage or bad input.

use std::process::ExitCode;

/// Marks an error as the caller's input being wrong (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

pub fn bad_input(msg: impl Into<String>) -> anyhow::Error {
    BadInput(msg.into()).into()
}

/// Marks a run whose report was already printed but whose work failed (exit 1, no message).
#[derive(Debug, thiserror::Error)]
#[error("the work failed")]
pub struct WorkFailed;

pub fn code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<WorkFailed>() => ExitCode::from(1),
        Err(e) if e.is::<BadInput>() => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
