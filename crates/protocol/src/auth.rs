//! Device request signatures.
//!
//! A device signs `method`, `path` (with query), the SHA-256 of the body and a
//! timestamp with its enrolled key. The pool refuses stale timestamps and
//! signatures it has already seen, so a captured request cannot be replayed.

use crate::{Keypair, ProtocolError, PublicKey, Sha256, UnixMillis};

pub const HEADER_DEVICE: &str = "x-idlemesh-device";
pub const HEADER_TIMESTAMP: &str = "x-idlemesh-timestamp";
pub const HEADER_SIGNATURE: &str = "x-idlemesh-signature";
/// Operator endpoints take `Authorization: Bearer <token>`.
pub const OPERATOR_SCHEME: &str = "Bearer ";
/// How far a request's timestamp may be from the pool's clock.
pub const MAX_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;

fn message(device_id: u64, method: &str, path: &str, body: &[u8], timestamp: UnixMillis) -> Vec<u8> {
    format!(
        "idlemesh-request-v1\n{device_id}\n{}\n{path}\n{}\n{timestamp}",
        method.to_ascii_uppercase(),
        Sha256::of(body)
    )
    .into_bytes()
}

/// The three header values for one request.
#[derive(Debug, Clone)]
pub struct RequestSignature {
    pub device_id: u64,
    pub timestamp: UnixMillis,
    pub signature: String,
}

pub fn sign_request(
    key: &Keypair,
    device_id: u64,
    method: &str,
    path: &str,
    body: &[u8],
    timestamp: UnixMillis,
) -> RequestSignature {
    RequestSignature {
        device_id,
        timestamp,
        signature: key.sign_bytes(&message(device_id, method, path, body, timestamp)),
    }
}

/// Checks the signature and the timestamp window. Replay detection (a
/// signature seen before) is the server's, since it needs memory.
pub fn verify_request(
    key: &PublicKey,
    sig: &RequestSignature,
    method: &str,
    path: &str,
    body: &[u8],
    now: UnixMillis,
) -> Result<(), AuthError> {
    if sig.timestamp.abs_diff(now) > MAX_CLOCK_SKEW_MS {
        return Err(AuthError::StaleTimestamp { skew_ms: sig.timestamp.abs_diff(now) });
    }
    key.verify_bytes(&message(sig.device_id, method, path, body, sig.timestamp), &sig.signature)
        .map_err(AuthError::Signature)
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("request timestamp is {skew_ms} ms away from the pool's clock")]
    StaleTimestamp { skew_ms: u64 },
    #[error("request signature: {0}")]
    Signature(ProtocolError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_signature_binds_every_part() {
        let key = Keypair::generate().unwrap();
        let sig = sign_request(&key, 7, "post", "/v1/leases", b"{}", 1_000_000);
        let pk = key.public();
        verify_request(&pk, &sig, "POST", "/v1/leases", b"{}", 1_000_500).unwrap();
        assert!(verify_request(&pk, &sig, "POST", "/v1/results", b"{}", 1_000_000).is_err());
        assert!(verify_request(&pk, &sig, "POST", "/v1/leases", b"{ }", 1_000_000).is_err());
        assert!(verify_request(&pk, &sig, "GET", "/v1/leases", b"{}", 1_000_000).is_err());
        let other_device = RequestSignature { device_id: 8, ..sig.clone() };
        assert!(verify_request(&pk, &other_device, "POST", "/v1/leases", b"{}", 1_000_000).is_err());
        assert!(matches!(
            verify_request(&pk, &sig, "POST", "/v1/leases", b"{}", 1_000_000 + MAX_CLOCK_SKEW_MS + 1),
            Err(AuthError::StaleTimestamp { .. })
        ));
    }
}
