use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProtocolError {
    #[error("not a SHA-256 digest: {0:?} (want 64 lowercase hex digits)")]
    BadDigest(String),
    #[error("not an ed25519 public key: {0}")]
    BadPublicKey(String),
    #[error("malformed signature: {0}")]
    BadSignatureEncoding(String),
    #[error("signature does not verify against the pinned key")]
    SignatureMismatch,
    #[error("signed payload is not valid JSON for {what}: {source}")]
    BadPayload {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("could not read randomness from the OS: {0}")]
    Randomness(String),
}
