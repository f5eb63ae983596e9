//! A kernel made by `idlemesh kernel new`. It counts the lines, words and
//! bytes of its input, as `wc` does, to show the parts every kernel has:
//! params with defaults, progress, checkpoints to resume from, and tests
//! that run natively. Replace the counting with your own computation and
//! keep `run`'s shape.
//!
//! Build the component with `cargo build --release --target wasm32-wasip2`
//! and try it with `idlemesh kernel run target/wasm32-wasip2/release/NAME.wasm`.
//! A kernel must be deterministic: the same task gives the same bytes on
//! every device, or replicas of it never agree (no clocks, no randomness of
//! its own, no iteration over a `HashMap`).

use idlemesh_guest::{Checkpoint, Host, Progress, Task};
use serde::{Deserialize, Serialize};

/// The job's params, JSON. Every field has a default, so a task with `{}`
/// (or no params at all) runs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// Words shorter than this are not counted.
    pub min_word_length: u64,
}

impl Default for Params {
    fn default() -> Self {
        Self { min_word_length: 1 }
    }
}

/// The output, one JSON line per task.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub lines: u64,
    pub words: u64,
    pub bytes: u64,
}

/// What a checkpoint holds besides the bytes done: the counts so far and
/// the length of the word the last chunk ended in.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Scan {
    counts: Counts,
    word_length: u64,
}

/// Bytes between two checkpoints.
const CHUNK_BYTES: usize = 1 << 20;

/// The kernel: the same function runs in the sandbox and in native tests.
pub fn run(task: &Task, host: &mut impl Host) -> Result<Vec<u8>, String> {
    let params: Params = serde_json::from_str(task.params_text()).map_err(|e| format!("bad params: {e}"))?;
    if params.min_word_length == 0 {
        return Err("min_word_length must be at least 1".into());
    }
    let input = &task.input;
    // A task stopped part-way (the user came back) resumes from its last
    // checkpoint instead of starting over.
    let (mut done, mut scan) = match &task.resume {
        Some(bytes) => {
            let checkpoint = Checkpoint::decode(bytes)?;
            let scan = serde_json::from_slice(checkpoint.state).map_err(|e| format!("bad checkpoint: {e}"))?;
            (checkpoint.steps_done as usize, scan)
        }
        None => (0, Scan::default()),
    };
    if done > input.len() {
        return Err(format!("checkpoint is past the input's end ({done} of {} bytes)", input.len()));
    }
    let mut progress = Progress::resumed(input.len() as u64, done as u64);
    while done < input.len() {
        let chunk = &input[done..input.len().min(done + CHUNK_BYTES)];
        count(chunk, params.min_word_length, &mut scan);
        done += chunk.len();
        progress.advance(chunk.len() as u64, host);
        if done < input.len() {
            let state = serde_json::to_vec(&scan).map_err(|e| e.to_string())?;
            host.checkpoint(&Checkpoint { steps_done: done as u64, state: &state }.encode());
        }
    }
    let mut counts = scan.counts;
    if scan.word_length >= params.min_word_length {
        counts.words += 1;
    }
    let mut output = serde_json::to_vec(&counts).map_err(|e| e.to_string())?;
    output.push(b'\n');
    Ok(output)
}

fn count(bytes: &[u8], min_word_length: u64, scan: &mut Scan) {
    for &byte in bytes {
        scan.counts.bytes += 1;
        if byte == b'\n' {
            scan.counts.lines += 1;
        }
        if byte.is_ascii_whitespace() {
            if scan.word_length >= min_word_length {
                scan.counts.words += 1;
            }
            scan.word_length = 0;
        } else {
            scan.word_length += 1;
        }
    }
}

// The component's `run` export, in the WASM build only.
idlemesh_guest::kernel!(run);

#[cfg(test)]
mod tests {
    use super::*;
    use idlemesh_guest::{Recorder, Silent};

    fn counts(input: &[u8], params: &str) -> Counts {
        let output = run(&Task::new(input, params), &mut Silent).unwrap();
        serde_json::from_slice(&output).unwrap()
    }

    #[test]
    fn counts_as_wc_does() {
        assert_eq!(counts(b"one two\nthree\n", "{}"), Counts { lines: 2, words: 3, bytes: 14 });
        assert_eq!(counts(b"  spaced   out ", ""), Counts { lines: 0, words: 2, bytes: 15 });
        assert_eq!(counts(b"a bb ccc", r#"{"min_word_length":2}"#), Counts { lines: 0, words: 2, bytes: 8 });
    }

    #[test]
    fn no_input_and_no_params_is_a_task_too() {
        assert_eq!(counts(b"", ""), Counts::default());
    }

    #[test]
    fn bad_params_are_an_error_that_says_why() {
        let err = run(&Task::new(*b"", r#"{"min_word_lenght":2}"#), &mut Silent).unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
        let err = run(&Task::new(*b"", r#"{"min_word_length":0}"#), &mut Silent).unwrap_err();
        assert!(err.contains("at least 1"), "{err}");
    }

    #[test]
    fn a_resumed_task_ends_as_an_uninterrupted_one() {
        let input: Vec<u8> = (0..3 * CHUNK_BYTES as u32).map(|i| if i % 7 == 0 { b' ' } else { b'x' }).collect();
        let mut host = Recorder::default();
        let whole = run(&Task::new(input.clone(), "{}"), &mut host).unwrap();
        assert_eq!(host.checkpoints.len(), 2, "one checkpoint between each two chunks");
        assert_eq!(host.progress.last(), Some(&1.0));
        let mut task = Task::new(input, "{}");
        task.resume = Some(host.checkpoints[0].clone());
        assert_eq!(run(&task, &mut Silent).unwrap(), whole);
    }
}
