//! Who is asking: devices by request signature, operators by bearer token.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::{HeaderMap, Method};
use idlemesh_protocol::auth::{self, RequestSignature};
use idlemesh_protocol::{PublicKey, Sha256};

use crate::http::ApiError;
use crate::store::{Store, StoreError};
use crate::{Pool, now_ms};

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, ApiError> {
    headers
        .get(name)
        .ok_or_else(|| ApiError::unauthorized(format!("missing header {name}")))?
        .to_str()
        .map_err(|_| ApiError::unauthorized(format!("header {name} is not ASCII")))
}

/// Verifies a device-signed request; its signature is spent with the
/// request's own database operation ([`Device::spend`]).
pub(crate) async fn device(
    pool: &Pool,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Device, ApiError> {
    device_claim(pool, headers).await?.verify(method, path, body)
}

/// A device whose request signature verified.
pub(crate) struct Device {
    pub id: u64,
    /// The request signature's 64 bytes.
    signature: Vec<u8>,
    /// When the request's timestamp turns stale: the signature need not be remembered longer.
    expires_ms: u64,
}

impl Device {
    /// Runs the request's work `f` (given the device's id) on the database,
    /// and records the signature as used in the same transaction: a replay,
    /// to this pool replica or any other on the same database, is refused.
    pub async fn run<T: Send + 'static>(
        self,
        pool: &Pool,
        f: impl FnMut(&mut Store, u64) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.run_as(pool, false, f).await
    }

    /// [`Device::run`] for work that never waits on a row lock (a lease):
    /// on PostgreSQL several such requests share a transaction and its commit.
    pub async fn run_skipping_locks<T: Send + 'static>(
        self,
        pool: &Pool,
        f: impl FnMut(&mut Store, u64) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.run_as(pool, true, f).await
    }

    async fn run_as<T: Send + 'static>(
        self,
        pool: &Pool,
        skips_locks: bool,
        mut f: impl FnMut(&mut Store, u64) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let op = move |s: &mut Store| {
            self.spend(s)?;
            f(s, self.id)
        };
        match skips_locks {
            true => pool.inner.store.run_skipping_locks(op).await,
            false => pool.inner.store.run(op).await,
        }
    }

    /// Records the device's result; its signature is spent with it.
    pub async fn submit_result(
        self,
        pool: &Pool,
        req: idlemesh_protocol::api::ResultSubmission,
    ) -> Result<crate::store::results::ResultOutcome, StoreError> {
        let work = crate::writer::ResultWork {
            device_id: self.id,
            submission: req,
            signature: self.signature,
            expires_ms: self.expires_ms,
            key: pool.inner.key.clone(),
        };
        pool.inner.store.submit_result(work).await
    }

    fn spend(&self, store: &mut Store) -> Result<(), StoreError> {
        store.spend_signature(&self.signature, self.expires_ms, now_ms())
    }
}

/// Who a device request says it is from, checked as far as the headers
/// allow (an enrolled device, a fresh timestamp) before its body is read.
pub(crate) struct DeviceClaim {
    key: PublicKey,
    sig: RequestSignature,
}

pub(crate) async fn device_claim(pool: &Pool, headers: &HeaderMap) -> Result<DeviceClaim, ApiError> {
    let device_id: u64 = header(headers, auth::HEADER_DEVICE)?
        .parse()
        .map_err(|_| ApiError::unauthorized(format!("{} is not a device id", auth::HEADER_DEVICE)))?;
    let timestamp: u64 = header(headers, auth::HEADER_TIMESTAMP)?
        .parse()
        .map_err(|_| ApiError::unauthorized(format!("{} is not a number of milliseconds", auth::HEADER_TIMESTAMP)))?;
    let skew_ms = timestamp.abs_diff(now_ms());
    if skew_ms > auth::MAX_CLOCK_SKEW_MS {
        return Err(ApiError::unauthorized(auth::AuthError::StaleTimestamp { skew_ms }.to_string()));
    }
    let signature = header(headers, auth::HEADER_SIGNATURE)?.to_owned();
    let cached = pool.inner.device_keys.read().unwrap().get(&device_id).copied();
    let key = match cached {
        Some(key) => key,
        None => {
            let key =
                pool.inner.store.run(move |s| s.device_key(device_id)).await.map_err(ApiError::from)?.ok_or_else(
                    || ApiError::unauthorized(format!("device {device_id} is not enrolled in this pool")),
                )?;
            pool.inner.device_keys.write().unwrap().insert(device_id, key);
            key
        }
    };
    Ok(DeviceClaim { key, sig: RequestSignature { device_id, timestamp, signature } })
}

impl DeviceClaim {
    /// The signature over method, path, body and timestamp.
    pub(crate) fn verify(self, method: &Method, path: &str, body: &[u8]) -> Result<Device, ApiError> {
        auth::verify_request(&self.key, &self.sig, method.as_str(), path, body, now_ms())
            .map_err(|e| ApiError::unauthorized(e.to_string()))?;
        // Spent by its bytes, not its text: hex reads capitals too, and the
        // same signature in other letters must still be a replay.
        let signature = hex::decode(&self.sig.signature).map_err(|e| ApiError::unauthorized(e.to_string()))?;
        Ok(Device { id: self.sig.device_id, expires_ms: self.sig.timestamp + auth::MAX_CLOCK_SKEW_MS, signature })
    }
}

/// Checks `Authorization: Bearer <operator token>`.
pub(crate) fn operator(pool: &Pool, headers: &HeaderMap) -> Result<(), ApiError> {
    let expected = &pool.inner.config.operator_token;
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix(auth::OPERATOR_SCHEME))
        .ok_or_else(|| ApiError::unauthorized("operator endpoints need Authorization: Bearer <operator token>"))?;
    // Compare digests so the time taken does not depend on how much matched.
    if expected.is_empty() || Sha256::of(given.as_bytes()) != Sha256::of(expected.as_bytes()) {
        return Err(ApiError::forbidden("wrong operator token"));
    }
    Ok(())
}

/// A token bucket per device for lease requests: a burst of
/// [`LeaseRate::BURST`], then [`LeaseRate::PER_SECOND`] a second.
#[derive(Default)]
pub(crate) struct LeaseRate {
    buckets: Mutex<HashMap<u64, (f64, std::time::Instant)>>,
}

impl LeaseRate {
    const BURST: f64 = 20.0;
    const PER_SECOND: f64 = 10.0;

    /// `None` if the device may ask now; else how long it must wait, in ms.
    pub fn check(&self, device: u64, now: std::time::Instant) -> Option<u64> {
        let mut buckets = self.buckets.lock().unwrap();
        let (tokens, last) = buckets.entry(device).or_insert((Self::BURST, now));
        *tokens = (*tokens + now.saturating_duration_since(*last).as_secs_f64() * Self::PER_SECOND).min(Self::BURST);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            None
        } else {
            Some(((1.0 - *tokens) / Self::PER_SECOND * 1000.0).ceil() as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_bucket_allows_a_burst_then_a_steady_rate() {
        let rate = LeaseRate::default();
        let t = std::time::Instant::now();
        let allowed = (0..30).filter(|_| rate.check(7, t).is_none()).count();
        assert_eq!(allowed, 20);
        assert!(rate.check(7, t).unwrap() > 0);
        assert!(rate.check(8, t).is_none(), "per device");
        assert!(rate.check(7, t + std::time::Duration::from_millis(150)).is_none(), "refilled at 10/s");
    }
}
