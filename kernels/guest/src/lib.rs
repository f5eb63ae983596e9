//! The kernel kit: what a Rust crate needs to be an Idlemesh WASM kernel.
//!
//! A kernel is a pure function from a task (input bytes, JSON params, and
//! the last checkpoint if the task was interrupted) to output bytes. This
//! crate owns the glue between that function and the `idlemesh:kernel` WIT
//! world (`kernels/wit/kernel.wit`), so a kernel crate holds only its
//! computation:
//!
//! ```ignore
//! use idlemesh_guest::{Host, Progress, Task};
//!
//! pub fn run(task: &Task, host: &mut impl Host) -> Result<Vec<u8>, String> {
//!     let mut progress = Progress::new(task.input.len() as u64);
//!     let mut sum = 0u64;
//!     for byte in &task.input {
//!         sum += u64::from(*byte);
//!         progress.advance(1, host);
//!     }
//!     Ok(sum.to_le_bytes().to_vec())
//! }
//!
//! idlemesh_guest::kernel!(run);
//! ```
//!
//! Built for `wasm32-wasip2` the crate is a component whose `run` export
//! calls the function with the sandbox's host; built natively the macro
//! adds nothing, so the same function is a plain library that tests call
//! with a [`Recorder`] (or [`Silent`]) and compare with the WASM build.
//!
//! What this crate must not do: reach anything the WIT world does not
//! grant, or hide a host call from the kernel's author (each is one method
//! of [`Host`] or one function of `input`).

/// The bindings `wit-bindgen` generates for the world, for [`kernel!`].
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "kernel",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_kernel",
        default_bindings_module: "idlemesh_guest::bindings",
    });
}

/// One task as the host hands it over.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Task {
    /// The task's input. Empty when the kernel reads its input on request
    /// (see the `input` module, WASM builds only).
    pub input: Vec<u8>,
    /// The task's params, JSON text (`{}` when the job gave none).
    pub params: String,
    /// The last checkpoint the kernel saved, when the task is resumed.
    pub resume: Option<Vec<u8>>,
}

impl Task {
    /// A task with this input and params and no checkpoint (for tests).
    pub fn new(input: impl Into<Vec<u8>>, params: impl Into<String>) -> Self {
        Self { input: input.into(), params: params.into(), resume: None }
    }

    /// The params text, `{}` when it is empty: a kernel run with no params
    /// gets its defaults rather than a JSON error.
    pub fn params_text(&self) -> &str {
        if self.params.trim().is_empty() { "{}" } else { &self.params }
    }
}

/// What a kernel may tell its host while it runs.
pub trait Host {
    /// The fraction of the task done, 0.0 to 1.0. The host passes on only
    /// real movement and rate-limits the rest; [`Progress`] sends little.
    fn progress(&mut self, done: f32);
    /// Saves state the task can resume from ([`Task::resume`]) if it is
    /// stopped; the host keeps the last one only, and caps its size.
    fn checkpoint(&mut self, state: &[u8]);
    /// A line for the task's log (capped by the host).
    fn log(&mut self, message: &str);
}

/// The sandbox's host: each method is the WIT host call of the same name.
#[cfg(target_arch = "wasm32")]
#[derive(Debug, Default)]
pub struct Sandbox;

#[cfg(target_arch = "wasm32")]
impl Host for Sandbox {
    fn progress(&mut self, done: f32) {
        bindings::idlemesh::kernel::host::progress(done);
    }
    fn checkpoint(&mut self, state: &[u8]) {
        bindings::idlemesh::kernel::host::checkpoint(state);
    }
    fn log(&mut self, message: &str) {
        bindings::idlemesh::kernel::host::log(message);
    }
}

/// A host that ignores everything: for native callers that want the output only.
#[derive(Debug, Default)]
pub struct Silent;

impl Host for Silent {
    fn progress(&mut self, _done: f32) {}
    fn checkpoint(&mut self, _state: &[u8]) {}
    fn log(&mut self, _message: &str) {}
}

/// A host that keeps everything it is told: for tests of a kernel's
/// progress, checkpoints and resumption.
#[derive(Debug, Default)]
pub struct Recorder {
    pub progress: Vec<f32>,
    pub checkpoints: Vec<Vec<u8>>,
    pub log: Vec<String>,
}

impl Host for Recorder {
    fn progress(&mut self, done: f32) {
        self.progress.push(done);
    }
    fn checkpoint(&mut self, state: &[u8]) {
        self.checkpoints.push(state.to_vec());
    }
    fn log(&mut self, message: &str) {
        self.log.push(message.to_owned());
    }
}

/// Counts a task's steps and reports the fraction done, but only each time
/// it has moved by a hundredth: a kernel can call [`Progress::advance`] in
/// its inner loop without flooding the host (which would drop the excess
/// anyway, after the call's cost).
#[derive(Debug, Clone)]
pub struct Progress {
    total: u64,
    done: u64,
    next_report: u64,
}

impl Progress {
    /// `total` steps, none done yet.
    pub fn new(total: u64) -> Self {
        Self::resumed(total, 0)
    }

    /// `total` steps of which `done` were done before a checkpoint.
    pub fn resumed(total: u64, done: u64) -> Self {
        let mut p = Self { total, done: done.min(total), next_report: 0 };
        // A task of no steps reports its end on the first call.
        if total > 0 {
            p.next_report = p.following_report();
        }
        p
    }

    /// Steps done so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// Marks `steps` more as done and tells `host` if the fraction moved
    /// by a hundredth or reached the end.
    pub fn advance(&mut self, steps: u64, host: &mut impl Host) {
        self.done = self.done.saturating_add(steps).min(self.total);
        if self.done >= self.next_report {
            host.progress(self.fraction());
            self.next_report = self.following_report();
        }
    }

    fn fraction(&self) -> f32 {
        if self.total == 0 { 1.0 } else { (self.done as f64 / self.total as f64) as f32 }
    }

    /// The step count at which the next report is due: the next whole
    /// hundredth, or the end (reported once, then never again).
    fn following_report(&self) -> u64 {
        if self.done >= self.total {
            return u64::MAX;
        }
        let hundredth = (self.total / 100).max(1);
        (self.done / hundredth + 1).saturating_mul(hundredth).min(self.total)
    }
}

/// A checkpoint of the common shape: how many steps were done, then the
/// state that goes with them. [`Checkpoint::decode`] checks what
/// [`Checkpoint::encode`] wrote, so a damaged or foreign checkpoint is an
/// error the kernel can report, not a panic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint<'a> {
    pub steps_done: u64,
    pub state: &'a [u8],
}

impl<'a> Checkpoint<'a> {
    const MAGIC: &'static [u8; 4] = b"imck";

    /// The bytes to pass to [`Host::checkpoint`].
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(12 + self.state.len());
        bytes.extend_from_slice(Self::MAGIC);
        bytes.extend_from_slice(&self.steps_done.to_le_bytes());
        bytes.extend_from_slice(self.state);
        bytes
    }

    /// Reads what [`Checkpoint::encode`] wrote.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, String> {
        match bytes.split_first_chunk::<4>() {
            Some((magic, rest)) if magic == Self::MAGIC => match rest.split_first_chunk::<8>() {
                Some((steps, state)) => Ok(Self { steps_done: u64::from_le_bytes(*steps), state }),
                None => Err("checkpoint is shorter than its header".into()),
            },
            _ => Err("checkpoint was not written by this kernel kit".into()),
        }
    }
}

/// The task's input read on request, a piece at a time, instead of whole
/// in [`Task::input`]. A kernel that calls [`input::read`] imports the host
/// call `read-input`, and the host then hands it an empty `Task::input`:
/// an input larger than the kernel's memory can still be processed.
#[cfg(target_arch = "wasm32")]
pub mod input {
    use crate::bindings::idlemesh::kernel::host;

    /// The input's size in bytes.
    pub fn size() -> u64 {
        host::input_size()
    }

    /// Up to `len` bytes from `offset`: fewer at the end, none past it, and
    /// at most [`MAX_READ_BYTES`] a call.
    pub fn read(offset: u64, len: u32) -> Vec<u8> {
        host::read_input(offset, len)
    }

    /// The most one [`read`] returns.
    pub const MAX_READ_BYTES: u32 = 16 << 20;
}

/// Makes `run`, a `fn(&Task, &mut impl Host) -> Result<Vec<u8>, String>`
/// (or a closure of that shape), the kernel's `run` export when the crate
/// is built for WASM; natively it adds nothing.
#[macro_export]
macro_rules! kernel {
    ($run:expr) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct IdlemeshKernel;

            impl $crate::bindings::Guest for IdlemeshKernel {
                fn run(
                    input: ::std::vec::Vec<u8>,
                    params: ::std::string::String,
                    resume: ::std::option::Option<::std::vec::Vec<u8>>,
                ) -> ::std::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                    $crate::call($run, $crate::Task { input, params, resume })
                }
            }

            $crate::bindings::export_kernel!(IdlemeshKernel);
        };
    };
}

/// Calls the kernel's function with the sandbox's host (for [`kernel!`];
/// a function so a closure's argument types are known).
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub fn call(run: impl FnOnce(&Task, &mut Sandbox) -> Result<Vec<u8>, String>, task: Task) -> Result<Vec<u8>, String> {
    run(&task, &mut Sandbox)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reports_each_hundredth_once_and_the_end() {
        let mut host = Recorder::default();
        let mut p = Progress::new(1000);
        for _ in 0..1000 {
            p.advance(1, &mut host);
        }
        assert_eq!(host.progress.len(), 100, "{:?}", host.progress);
        assert_eq!(host.progress.first(), Some(&0.01));
        assert_eq!(host.progress.last(), Some(&1.0));
        assert!(host.progress.windows(2).all(|w| w[0] < w[1]));
        // Past the end: nothing more.
        p.advance(5, &mut host);
        assert_eq!(host.progress.len(), 100);
    }

    #[test]
    fn progress_with_few_or_no_steps_or_big_strides() {
        let mut host = Recorder::default();
        let mut p = Progress::new(3);
        for _ in 0..3 {
            p.advance(1, &mut host);
        }
        assert_eq!(host.progress, [(1.0f64 / 3.0) as f32, (2.0f64 / 3.0) as f32, 1.0]);

        let mut host = Recorder::default();
        Progress::new(0).advance(1, &mut host);
        assert_eq!(host.progress, [1.0]);

        // One stride over many hundredths is one report.
        let mut host = Recorder::default();
        let mut p = Progress::resumed(10_000, 5_000);
        p.advance(2_500, &mut host);
        p.advance(2_500, &mut host);
        assert_eq!(host.progress, [0.75, 1.0]);
        assert_eq!(p.done(), 10_000);
    }

    #[test]
    fn a_checkpoint_reads_back_and_a_bad_one_is_an_error() {
        let bytes = Checkpoint { steps_done: 42, state: b"state" }.encode();
        assert_eq!(Checkpoint::decode(&bytes), Ok(Checkpoint { steps_done: 42, state: b"state" }));
        assert_eq!(Checkpoint::decode(&bytes[..8]), Err("checkpoint is shorter than its header".into()));
        assert_eq!(Checkpoint::decode(b"nope, not mine"), Err("checkpoint was not written by this kernel kit".into()));
    }

    #[test]
    fn empty_params_read_as_an_empty_object() {
        assert_eq!(Task::new([], "").params_text(), "{}");
        assert_eq!(Task::new([], "  ").params_text(), "{}");
        assert_eq!(Task::new([], r#"{"n":1}"#).params_text(), r#"{"n":1}"#);
    }
}
