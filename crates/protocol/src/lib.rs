//! Wire types shared by the Idlemesh agent and pool, and the cryptography that
//! makes them trustworthy. No I/O happens here.
//!
//! - [`Sha256`]: content hashes, the names of kernels, inputs and outputs.
//! - [`Keypair`], [`PublicKey`] and [`Signed`]: ed25519 signatures over the
//!   exact JSON bytes of a value, so signer and verifier never disagree about
//!   canonical forms: the verifier checks the bytes, then parses them.
//! - [`TaskManifest`] and [`Receipt`]: what a pool signs for a device.
//! - [`api`]: request and response bodies of the pool's HTTP API (DESIGN §5).
//! - [`auth`]: how a device signs its requests.
//! - [`wgsl`]: how a WGSL compute kernel's buffers and dispatch are declared.
//! - [`sandbox`]: the OS layers that confine a worker, and its report of them.
//!
//! **Owns** what crosses between an agent and a pool, and its signatures.
//! **Must not** do I/O, hold state, or know about either side's storage:
//! both depend on it, so it stays small and pure.

pub mod api;
pub mod auth;
mod bytes;
mod error;
mod hash;
mod manifest;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod sandbox;
mod sign;
pub mod wgsl;

pub use bytes::Base64Bytes;
pub use error::ProtocolError;
pub use hash::Sha256;
pub use manifest::{KernelKind, KernelRef, MAX_OUTPUT_BYTES, Receipt, TaskLimits, TaskManifest};
pub use sign::{Keypair, PublicKey, Signed, SignedKind};

/// Milliseconds since the Unix epoch: the one time unit on the wire.
pub type UnixMillis = u64;
