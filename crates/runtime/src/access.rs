//! What a kernel can and cannot reach, in the words the dashboard's privacy
//! page shows. Kept beside the sandbox that enforces it (`wasi_ctx`, `host`,
//! `gpu`, `lockdown`) so the two are changed together. Which OS layers are
//! in force on this machine is the worker's own report
//! ([`crate::SandboxReport::in_words`]), shown beside these lists.

/// What every kernel is given.
pub const ALLOWED: &[&str] = &[
    "the input and parameters of its own task, which the pool signed",
    "the CPU, in one worker process at the lowest priority, within your cores and duty-cycle limits",
    "the GPU, only for GPU (WGSL) kernels and only when you enable GPU use",
    "memory up to the task's limit, and no more than your memory-per-task setting",
    "a fixed clock (1 January 2024) and a seeded random generator, the same on every machine",
    "a log of at most 64 KiB and checkpoints of limited size and rate, kept in Idlemesh's own data folder",
];

/// What no kernel can reach.
pub const DENIED: &[&str] = &[
    "your files and folders (no directory is opened to it, and on Linux its worker process is walled off from them by Landlock)",
    "the network: no sockets, no name lookups, no other computer (on Linux its worker has no network at all)",
    "starting programs, or touching other processes or your keyring (on Linux a seccomp filter stops its worker if it tries)",
    "your environment variables, command line, other programs and the clipboard",
    "the real time of day, your location, camera, microphone, screen and keyboard",
    "running past its time limit: the worker is stopped from outside",
    "anything at all while you use the computer: its worker is frozen within milliseconds",
];
