//! The status of an agent that is not running, shaped like a status: the
//! tray's words and the dashboard's explanation both come from it
//! (docs/app-ipc.md, `state: "error"`).

use serde_json::{Value, json};

pub fn failure_status(state: &str, code: Option<&str>, message: Option<&str>, data_dir: &std::path::Path) -> Value {
    json!({
        "state": state,
        "error": message,
        "error_code": code,
        "data_dir": data_dir,
        "reasons": [],
    })
}
