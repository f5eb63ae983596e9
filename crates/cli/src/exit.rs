//! Exit statuses: 0 success, 1 the work failed, 2 bad usage or bad input.

use std::process::ExitCode;

use idlemesh_pool::client::ClientError;

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
        // The pool refusing what was asked (a bad spec, an unknown id, a
        // wrong token, too big) is the caller's input too. A conflict, a
        // rate limit or a server error is not.
        Err(e) if e.is::<BadInput>() || e.downcast_ref::<ClientError>().is_some_and(ClientError::is_bad_input) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
