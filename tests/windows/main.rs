//! The Windows build, proven under Wine: the same kernels give the same
//! bytes as on Linux, hostile kernels end the same way, the demo draws the
//! same PNG, and the agent daemon works, pauses and obeys a registry policy.
//!
//! Needs Debian's `wine64` and the MinGW toolchain (`scripts/setup`); a
//! missing piece fails the test with what to install, never skips it.

mod agent;
mod demo;
#[path = "../e2e/harness.rs"]
#[allow(dead_code, reason = "the end-to-end tests' helpers; these tests use a few")]
mod harness;
mod kernels;
#[path = "../common/wat_kernel.rs"]
mod wat_kernel;
mod wine;
