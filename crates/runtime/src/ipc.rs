//! The pipe protocol between the supervisor and `idlemesh worker`.
//!
//! A frame is `u32 LE` header length, a JSON header, `u32 LE` blob count, then
//! each blob as `u64 LE` length and bytes. Bytes travel raw (no base64), and
//! every length is checked against a cap before anything is allocated: the
//! worker runs hostile code, so the supervisor treats what it says as input.

use std::io::{self, Read, Write};

use idlemesh_protocol::Sha256;
use idlemesh_protocol::wgsl::WgslLayout;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::lockdown::SandboxReport;
use crate::{Outcome, RunLimits};

const MAX_HEADER_BYTES: u32 = 1 << 20;
const MAX_BLOBS: u32 = 4;

/// Supervisor → worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Blobs: kernel, input, and the checkpoint to resume from if `resume`.
    /// A WGSL kernel comes with its layout; a WASM one without.
    Run {
        task: String,
        kernel_sha256: Sha256,
        params: String,
        limits: RunLimits,
        resume: bool,
        #[serde(default)]
        wgsl: Option<WgslLayout>,
        /// Bounds the worker's own waits on a GPU; the supervisor enforces it anyway.
        #[serde(default)]
        timeout_ms: u64,
    },
}

/// Worker → supervisor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The worker is locked down (as far as `sandbox` says) and waits for tasks.
    Ready {
        pid: u32,
        sandbox: SandboxReport,
    },
    Progress {
        done: f32,
    },
    /// Blob: the checkpoint.
    Checkpoint,
    /// Blob: the output (empty unless the status is ok). `retire`: the
    /// worker exits after this (its GPU device is lost or stuck).
    Done {
        outcome: Outcome,
        wall_ms: u64,
        cpu_ms: u64,
        #[serde(default)]
        retire: bool,
    },
}

pub fn write_frame(w: &mut impl Write, header: &impl Serialize, blobs: &[&[u8]]) -> io::Result<()> {
    let header = serde_json::to_vec(header).map_err(io::Error::other)?;
    let mut head = Vec::with_capacity(header.len() + 8);
    head.extend_from_slice(&(header.len() as u32).to_le_bytes());
    head.extend_from_slice(&header);
    head.extend_from_slice(&(blobs.len() as u32).to_le_bytes());
    w.write_all(&head)?;
    for blob in blobs {
        w.write_all(&(blob.len() as u64).to_le_bytes())?;
        w.write_all(blob)?;
    }
    w.flush()
}

/// Reads one frame; `Ok(None)` at a clean end of stream. A blob over
/// `max_blob_bytes` is refused before it is read.
pub fn read_frame<H: DeserializeOwned>(
    r: &mut impl Read,
    max_blob_bytes: u64,
) -> io::Result<Option<(H, Vec<Vec<u8>>)>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let header_len = u32::from_le_bytes(len);
    if header_len > MAX_HEADER_BYTES {
        return Err(bad(format!("frame header of {header_len} bytes")));
    }
    let mut header = vec![0u8; header_len as usize];
    r.read_exact(&mut header)?;
    let header: H = serde_json::from_slice(&header).map_err(|e| bad(format!("frame header: {e}")))?;
    r.read_exact(&mut len)?;
    let count = u32::from_le_bytes(len);
    if count > MAX_BLOBS {
        return Err(bad(format!("{count} blobs in one frame")));
    }
    let mut blobs = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let mut blen = [0u8; 8];
        r.read_exact(&mut blen)?;
        let blen = u64::from_le_bytes(blen);
        if blen > max_blob_bytes {
            return Err(bad(format!("blob of {blen} bytes over the cap of {max_blob_bytes}")));
        }
        let mut blob = Vec::new();
        r.take(blen).read_to_end(&mut blob)?;
        if blob.len() as u64 != blen {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        blobs.push(blob);
    }
    Ok(Some((header, blobs)))
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_caps_hold() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Event::Progress { done: 0.5 }, &[b"abc", b""]).unwrap();
        write_frame(&mut buf, &Event::Checkpoint, &[&[7u8; 100]]).unwrap();
        let mut r = &buf[..];
        let (h, blobs): (Event, _) = read_frame(&mut r, 1000).unwrap().unwrap();
        assert!(matches!(h, Event::Progress { done } if done == 0.5));
        assert_eq!(blobs, vec![b"abc".to_vec(), vec![]]);
        // The second frame's blob is over a cap of 99.
        let err = read_frame::<Event>(&mut r, 99).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // A truncated stream is an error, an empty one is the end.
        assert!(read_frame::<Event>(&mut &buf[..10], 1000).is_err());
        assert!(read_frame::<Event>(&mut &[][..], 1000).unwrap().is_none());
    }
}
