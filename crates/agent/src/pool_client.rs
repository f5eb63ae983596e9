//! The pool's HTTP API, as a device speaks it.
//!
//! Every device request is signed with the device key (method, path, body
//! hash, timestamp). Replies are input from outside: JSON is parsed into typed
//! bodies, errors keep the pool's own code and message, and nothing a pool
//! signed is believed before it is verified against the pinned key (that is
//! the scheduler's job, which holds the key).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use idlemesh_protocol::api::{
    Capabilities, EnrollRequest, EnrollResponse, ErrorBody, GiveBack, HeartbeatResponse, LeaseRequest, LeaseResponse,
    LeaseSync, LeaseSyncResponse, LeaseTokenBody, PoolChallenge, PoolInfo, ResultResponse, ResultSubmission,
    TaskFailure,
};
use idlemesh_protocol::{Keypair, Sha256, Signed, auth};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum PoolClientError {
    #[error("pool URL {0:?} is not an http(s) URL")]
    BadUrl(String),
    #[error("pool unreachable at {url}: {}", causes(source))]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("pool refused {what} ({status}, {code}): {message}")]
    Refused { what: String, status: u16, code: String, message: String },
    #[error("pool sent a malformed reply to {what}: {detail}")]
    BadReply { what: String, detail: String },
    #[error("this device is not enrolled in the pool yet")]
    NotEnrolled,
    #[error("{0}")]
    BadRoots(String),
}

/// An error and its causes in one line: reqwest's own message alone
/// ("error sending request") hides whether DNS, TCP or TLS failed.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = cause.source();
    }
    text
}

/// Whether `url` is plain HTTP to a host that is not this machine (a
/// loopback address or `localhost`).
pub fn plain_http_off_this_machine(url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else { return false };
    if url.scheme() != "http" {
        return false;
    }
    let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => !ip.is_loopback(),
        Err(_) => !host.eq_ignore_ascii_case("localhost"),
    }
}

impl PoolClientError {
    /// A stale lease token: the result earns nothing, and retrying will not help.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Refused { status: 409, .. })
    }
}

const USER_AGENT: &str = concat!("idlemesh-agent/", env!("CARGO_PKG_VERSION"));

/// The largest blob (kernel or input) the agent downloads.
const MAX_BLOB_BYTES: u64 = 256 << 20;

fn install_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Another part of the process may have installed one already; either is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[derive(Debug, Clone)]
pub struct PoolClient {
    http: reqwest::Client,
    base: String,
    key: Arc<Keypair>,
    device_id: Option<u64>,
    /// Shared by every clone: all slots' traffic with this pool.
    traffic: Arc<TrafficMeter>,
}

/// Bytes sent to and received from a pool, counted at the HTTP client as
/// they go: request and status lines, headers and bodies (TLS and TCP/IP
/// framing aside), every request included (leases, heartbeats, uploads,
/// downloads, enrollment), not estimated from manifest sizes.
#[derive(Debug, Default)]
pub struct TrafficMeter {
    sent: AtomicU64,
    received: AtomicU64,
}

impl TrafficMeter {
    /// The bytes (sent, received) since the last call: each byte is handed
    /// out once, whichever slot asks.
    pub fn take(&self) -> (u64, u64) {
        (self.sent.swap(0, Ordering::Relaxed), self.received.swap(0, Ordering::Relaxed))
    }

    fn sent(&self, n: usize) {
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn received(&self, n: usize) {
        self.received.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// An HTTP/1.1 message head's size: its first line, each header as
/// `name: value\r\n`, and the blank line.
fn head_bytes(first_line: usize, headers: &reqwest::header::HeaderMap) -> usize {
    first_line + 2 + headers.iter().map(|(k, v)| k.as_str().len() + 2 + v.len() + 2).sum::<usize>() + 2
}

impl PoolClient {
    pub fn new(base_url: &str, key: Arc<Keypair>) -> Result<Self, PoolClientError> {
        Self::with_roots(base_url, key, None)
    }

    /// A client that trusts, for https, only the certificate authorities in
    /// `roots_pem` (a PEM bundle) where given, else the system's.
    pub fn with_roots(base_url: &str, key: Arc<Keypair>, roots_pem: Option<&[u8]>) -> Result<Self, PoolClientError> {
        let base = base_url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) || reqwest::Url::parse(&base).is_err() {
            return Err(PoolClientError::BadUrl(base_url.to_owned()));
        }
        install_crypto();
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = roots_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| PoolClientError::BadRoots(format!("not a PEM bundle of certificates: {e}")))?;
            if certs.is_empty() {
                return Err(PoolClientError::BadRoots("no PEM certificate in it".into()));
            }
            builder = builder.tls_certs_only(certs);
        }
        // A pool answers; it does not send the agent elsewhere (perhaps from https to http).
        let http = builder
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|source| PoolClientError::Unreachable { url: base.clone(), source })?;
        Ok(Self { http, base, key, device_id: None, traffic: Arc::default() })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn device_id(&self) -> Option<u64> {
        self.device_id
    }

    pub fn set_device_id(&mut self, id: u64) {
        self.device_id = Some(id);
    }

    pub fn traffic(&self) -> &TrafficMeter {
        &self.traffic
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        signed: bool,
    ) -> Result<reqwest::Response, PoolClientError> {
        let url = format!("{}{path}", self.base);
        let body = body.unwrap_or_default();
        let mut req = self.http.request(method.clone(), &url);
        if signed {
            let device = self.device_id.ok_or(PoolClientError::NotEnrolled)?;
            let sig = auth::sign_request(&self.key, device, method.as_str(), path, &body, unique_timestamp());
            req = req
                .header(auth::HEADER_DEVICE, device.to_string())
                .header(auth::HEADER_TIMESTAMP, sig.timestamp.to_string())
                .header(auth::HEADER_SIGNATURE, sig.signature);
        }
        // Set here rather than as client defaults, so the meter sees them.
        req = req.header(reqwest::header::USER_AGENT, USER_AGENT).header(reqwest::header::ACCEPT, "*/*");
        if !body.is_empty() {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(reqwest::header::CONTENT_LENGTH, body.len())
                .body(body);
        }
        let req = req.build().map_err(|source| PoolClientError::Unreachable { url: url.clone(), source })?;
        let host = req.url().host_str().map_or(0, str::len) + req.url().port().map_or(0, |p| p.to_string().len() + 1);
        let target = req.url().path().len() + req.url().query().map_or(0, |q| q.len() + 1);
        let body_len = req.body().and_then(|b| b.as_bytes()).map_or(0, <[u8]>::len);
        // "METHOD target HTTP/1.1", plus the Host header reqwest adds.
        let first_line = method.as_str().len() + 1 + target + " HTTP/1.1".len() + 2 + "host: ".len() + host;
        let sent = head_bytes(first_line, req.headers()) + body_len;
        let resp =
            self.http.execute(req).await.map_err(|source| PoolClientError::Unreachable { url: url.clone(), source })?;
        // Counted once answered: a request that never reached the pool sent nothing.
        self.traffic.sent(sent);
        let reason = resp.status().canonical_reason().map_or(0, str::len);
        self.traffic.received(head_bytes("HTTP/1.1 200 ".len() + reason, resp.headers()));
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let what = format!("{method} {path}");
        let text = resp.text().await.unwrap_or_default();
        self.traffic.received(text.len());
        Err(match serde_json::from_str::<ErrorBody>(&text) {
            Ok(e) => {
                PoolClientError::Refused { what, status: status.as_u16(), code: e.error.code, message: e.error.message }
            }
            Err(_) => PoolClientError::Refused {
                what,
                status: status.as_u16(),
                code: status.canonical_reason().unwrap_or("error").to_owned(),
                message: text.chars().take(300).collect(),
            },
        })
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        signed: bool,
    ) -> Result<T, PoolClientError> {
        let body = body.map(|b| serde_json::to_vec(b).expect("request bodies serialise"));
        let resp = self.send(method.clone(), path, body, signed).await?;
        let what = format!("{method} {path}");
        let bytes =
            resp.bytes().await.map_err(|e| PoolClientError::BadReply { what: what.clone(), detail: e.to_string() })?;
        self.traffic.received(bytes.len());
        serde_json::from_slice(&bytes).map_err(|e| PoolClientError::BadReply { what, detail: e.to_string() })
    }

    pub async fn info(&self) -> Result<PoolInfo, PoolClientError> {
        self.json(Method::GET, "/v1/info", None::<&()>, false).await
    }

    /// Has the pool sign a fresh nonce; the caller verifies it against the
    /// key it trusts.
    pub async fn challenge(&self, nonce: &str) -> Result<Signed<PoolChallenge>, PoolClientError> {
        self.json(Method::POST, "/v1/challenge", Some(&PoolChallenge { nonce: nonce.to_owned() }), false).await
    }

    pub async fn enroll(&mut self, req: &EnrollRequest) -> Result<EnrollResponse, PoolClientError> {
        let resp: EnrollResponse = self.json(Method::POST, "/v1/enroll", Some(req), false).await?;
        self.device_id = Some(resp.device_id);
        Ok(resp)
    }

    pub async fn lease(&self, capabilities: Capabilities, max_tasks: u32) -> Result<LeaseResponse, PoolClientError> {
        self.json(Method::POST, "/v1/leases", Some(&LeaseRequest { capabilities, max_tasks }), true).await
    }

    /// States every lease this device holds; the pool queues its others
    /// again and answers their ids.
    pub async fn sync_leases(&self, held: Vec<u64>) -> Result<Vec<u64>, PoolClientError> {
        let resp: LeaseSyncResponse =
            self.json(Method::POST, "/v1/leases/sync", Some(&LeaseSync { held }), true).await?;
        Ok(resp.released)
    }

    /// Extends a lease; returns its new deadline.
    pub async fn heartbeat(&self, lease_id: u64, lease_token: &str) -> Result<u64, PoolClientError> {
        let body = LeaseTokenBody { lease_token: lease_token.to_owned() };
        let resp: HeartbeatResponse =
            self.json(Method::POST, &format!("/v1/leases/{lease_id}/heartbeat"), Some(&body), true).await?;
        Ok(resp.deadline_ms)
    }

    pub async fn give_back(&self, lease_id: u64, lease_token: &str) -> Result<(), PoolClientError> {
        self.give_back_failed(lease_id, lease_token, None).await
    }

    /// Gives a lease back saying the task itself failed here (`failure`),
    /// so the pool counts it against the task rather than waiting on it.
    pub async fn give_back_failed(
        &self,
        lease_id: u64,
        lease_token: &str,
        failure: Option<TaskFailure>,
    ) -> Result<(), PoolClientError> {
        let body = serde_json::to_vec(&GiveBack { lease_token: lease_token.to_owned(), failure }).expect("serialises");
        let resp = self.send(Method::DELETE, &format!("/v1/leases/{lease_id}"), Some(body), true).await?;
        self.traffic.received(resp.bytes().await.map_or(0, |b| b.len()));
        Ok(())
    }

    pub async fn submit_result(&self, submission: &ResultSubmission) -> Result<ResultResponse, PoolClientError> {
        self.json(Method::POST, "/v1/results", Some(submission), true).await
    }

    /// Downloads a content-addressed blob and checks it against its name.
    /// The caller compares the digest with what a signed manifest promised.
    pub async fn blob(&self, sha: &Sha256) -> Result<Vec<u8>, PoolClientError> {
        let path = format!("/v1/blobs/{sha}");
        let resp = self.send(Method::GET, &path, None, true).await?;
        if resp.content_length().is_some_and(|n| n > MAX_BLOB_BYTES) {
            return Err(PoolClientError::BadReply {
                what: path,
                detail: format!("blob larger than {MAX_BLOB_BYTES} bytes"),
            });
        }
        let bytes =
            resp.bytes().await.map_err(|e| PoolClientError::BadReply { what: path.clone(), detail: e.to_string() })?;
        self.traffic.received(bytes.len());
        if bytes.len() as u64 > MAX_BLOB_BYTES {
            return Err(PoolClientError::BadReply {
                what: path,
                detail: format!("blob larger than {MAX_BLOB_BYTES} bytes"),
            });
        }
        Ok(bytes.to_vec())
    }
}

/// Now in milliseconds, but never the same value twice in this process.
///
/// Ed25519 signatures are deterministic and the pool refuses a signature it
/// has seen (replay protection), so two slots asking for a lease with the
/// same body in the same millisecond would have the second refused as a
/// replay. A strictly increasing timestamp makes every request unique; it
/// runs ahead of the clock only by one millisecond per request in a burst.
fn unique_timestamp() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = crate::now_ms();
    let prev = LAST
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| Some(now.max(last + 1)))
        .expect("the update always succeeds");
    now.max(prev + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_allowed_only_on_this_machine() {
        for url in [
            "http://127.0.0.1:8470",
            "http://127.0.1.9",
            "http://localhost:1",
            "http://[::1]:80",
            "https://pool.example.org",
        ] {
            assert!(!plain_http_off_this_machine(url), "{url}");
        }
        for url in
            ["http://pool.example.org", "http://192.0.2.7:8470", "http://[2001:db8::1]", "http://localhost.example.org"]
        {
            assert!(plain_http_off_this_machine(url), "{url}");
        }
    }

    #[test]
    fn request_timestamps_never_repeat_even_across_threads() {
        let before = crate::now_ms();
        let threads: Vec<_> =
            (0..4).map(|_| std::thread::spawn(|| (0..2_000).map(|_| unique_timestamp()).collect::<Vec<_>>())).collect();
        let mut all: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        assert!(all.iter().all(|&t| t >= before));
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "a timestamp was handed out twice");
    }
}
