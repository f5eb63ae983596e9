use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ProtocolError;

/// An ed25519 key pair. The secret never leaves this type except through
/// [`Keypair::secret_bytes`], which callers use only to store it securely.
pub struct Keypair(SigningKey);

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keypair(public {})", self.public())
    }
}

impl Keypair {
    pub fn generate() -> Result<Self, ProtocolError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| ProtocolError::Randomness(e.to_string()))?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    pub fn from_secret_bytes(seed: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(seed))
    }

    pub fn secret_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub fn sign_bytes(&self, message: &[u8]) -> String {
        hex::encode(self.0.sign(message).to_bytes())
    }
}

/// An ed25519 public key, sent as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    /// A short name for the key that people can compare by eye:
    /// `SHA256:` and the first 16 hex digits of the key's SHA-256.
    pub fn fingerprint(&self) -> String {
        format!("SHA256:{}", &crate::Sha256::of(self.0.as_bytes()).to_hex()[..16])
    }

    /// Checks a hex signature made by [`Keypair::sign_bytes`].
    pub fn verify_bytes(&self, message: &[u8], signature_hex: &str) -> Result<(), ProtocolError> {
        let mut raw = [0u8; 64];
        hex::decode_to_slice(signature_hex, &mut raw)
            .map_err(|e| ProtocolError::BadSignatureEncoding(e.to_string()))?;
        let signature = ed25519_dalek::Signature::from_bytes(&raw);
        // verify_strict refuses weak keys and malleable signatures.
        self.0.verify_strict(message, &signature).map_err(|_| ProtocolError::SignatureMismatch)
    }
}

impl FromStr for PublicKey {
    type Err = ProtocolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut raw = [0u8; 32];
        hex::decode_to_slice(s, &mut raw).map_err(|e| ProtocolError::BadPublicKey(e.to_string()))?;
        VerifyingKey::from_bytes(&raw).map(Self).map_err(|e| ProtocolError::BadPublicKey(e.to_string()))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A value signed as the exact JSON text in `payload`.
///
/// Verifying checks the signature over those bytes first and parses them
/// second, so no canonical JSON form is needed and nothing unsigned is read.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Signed<T> {
    pub payload: String,
    pub signature: String,
    #[serde(skip)]
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for Signed<T> {
    fn clone(&self) -> Self {
        Self { payload: self.payload.clone(), signature: self.signature.clone(), _type: PhantomData }
    }
}

impl<T> fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signed").field("payload", &self.payload).finish_non_exhaustive()
    }
}

/// Domain separation: a signature over one kind of value is never valid for another.
fn signed_message(kind: &str, payload: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(kind.len() + payload.len() + 16);
    m.extend_from_slice(b"idlemesh-v1\0");
    m.extend_from_slice(kind.as_bytes());
    m.push(0);
    m.extend_from_slice(payload.as_bytes());
    m
}

/// A value that can be signed, with the name that separates its signatures.
pub trait SignedKind {
    const KIND: &'static str;
}

impl<T: Serialize + DeserializeOwned + SignedKind> Signed<T> {
    /// A signed value as it was stored: nothing is trusted until `verify`.
    pub fn from_parts(payload: String, signature: String) -> Self {
        Self { payload, signature, _type: PhantomData }
    }

    pub fn sign(value: &T, key: &Keypair) -> Self {
        let payload = serde_json::to_string(value).expect("wire types always serialise");
        let signature = key.sign_bytes(&signed_message(T::KIND, &payload));
        Self { payload, signature, _type: PhantomData }
    }

    pub fn verify(&self, key: &PublicKey) -> Result<T, ProtocolError> {
        key.verify_bytes(&signed_message(T::KIND, &self.payload), &self.signature)?;
        serde_json::from_str(&self.payload).map_err(|source| ProtocolError::BadPayload { what: T::KIND, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Note {
        n: u32,
    }
    impl SignedKind for Note {
        const KIND: &'static str = "note";
    }
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Other {
        n: u32,
    }
    impl SignedKind for Other {
        const KIND: &'static str = "other";
    }

    #[test]
    fn sign_verify_and_tamper() {
        let key = Keypair::generate().unwrap();
        let signed = Signed::sign(&Note { n: 7 }, &key);
        assert_eq!(signed.verify(&key.public()).unwrap(), Note { n: 7 });

        let mut tampered = signed.clone();
        tampered.payload = tampered.payload.replace('7', "8");
        assert!(matches!(tampered.verify(&key.public()), Err(ProtocolError::SignatureMismatch)));

        let stranger = Keypair::generate().unwrap();
        assert!(matches!(signed.verify(&stranger.public()), Err(ProtocolError::SignatureMismatch)));

        // Same bytes, other kind: refused.
        let as_other: Signed<Other> =
            Signed { payload: signed.payload.clone(), signature: signed.signature.clone(), _type: PhantomData };
        assert!(as_other.verify(&key.public()).is_err());
    }

    #[test]
    fn keys_round_trip_through_text() {
        let key = Keypair::generate().unwrap();
        let text = key.public().to_hex();
        assert_eq!(text.parse::<PublicKey>().unwrap(), key.public());
        let again = Keypair::from_secret_bytes(&key.secret_bytes());
        assert_eq!(again.public(), key.public());
        assert!("zz".parse::<PublicKey>().is_err());
    }
}
