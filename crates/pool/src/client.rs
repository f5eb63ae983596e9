//! A pool operator's HTTP client: upload blobs, submit jobs, follow them,
//! fetch their output, manage organisations and enrollment tokens. The
//! `idlemesh job` and `idlemesh pool org|token` commands and the end-to-end
//! tests use it, so the API is spoken one way.

use std::time::Duration;

use idlemesh_protocol::api::{
    BlobStored, ErrorBody, JobCreated, JobSpec, JobStatus, Org, OrgCreate, OrgStats, PoolStats, TokenCreate,
    TokenCreated, TokenInfo,
};
use idlemesh_protocol::auth::OPERATOR_SCHEME;

/// Why a request to the pool did not give what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("building the HTTP client: {0}")]
    Setup(#[source] reqwest::Error),
    #[error("{what}: pool unreachable at {url}: {source}")]
    Unreachable {
        what: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The pool refused what was asked: a bad spec, an unknown id, a wrong
    /// token, a body too large. The caller's input is at fault.
    #[error("{what}: pool answered {status}{detail}")]
    Refused { what: &'static str, status: reqwest::StatusCode, detail: String },
    /// A conflict, a rate limit, a server error: not the caller's input.
    #[error("{what}: pool answered {status}{detail}")]
    Failed { what: &'static str, status: reqwest::StatusCode, detail: String },
    #[error("{what}: the pool's answer could not be read: {source}")]
    BadAnswer {
        what: &'static str,
        #[source]
        source: reqwest::Error,
    },
}

impl ClientError {
    /// Whether the pool refused the caller's input (the CLI's exit 2).
    pub fn is_bad_input(&self) -> bool {
        matches!(self, Self::Refused { .. })
    }
}

#[derive(Debug, Clone)]
pub struct OperatorClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl OperatorClient {
    /// A client of the pool at `base` (its URL) with the operator `token`.
    pub fn new(base: &str, token: &str) -> Result<Self, ClientError> {
        Self::with(reqwest::Client::builder(), base, token)
    }

    /// The same for an HTTPS pool whose certificate only the CA in
    /// `ca_pem` vouches for (a pool's own CA, pinned).
    pub fn trusting(base: &str, token: &str, ca_pem: &str) -> Result<Self, ClientError> {
        let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).map_err(ClientError::Setup)?;
        Self::with(reqwest::Client::builder().tls_certs_only([ca]), base, token)
    }

    fn with(builder: reqwest::ClientBuilder, base: &str, token: &str) -> Result<Self, ClientError> {
        // reqwest is built without a default TLS provider: ring, as the agent's.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = builder.connect_timeout(Duration::from_secs(10)).build().map_err(ClientError::Setup)?;
        Ok(Self { http, base: base.trim_end_matches('/').to_owned(), token: token.to_owned() })
    }

    async fn send(&self, req: reqwest::RequestBuilder, what: &'static str) -> Result<reqwest::Response, ClientError> {
        let resp = req
            .header(reqwest::header::AUTHORIZATION, format!("{OPERATOR_SCHEME}{}", self.token))
            .send()
            .await
            .map_err(|source| ClientError::Unreachable { what, url: self.base.clone(), source })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        let error = serde_json::from_str::<ErrorBody>(&body).ok().map(|e| e.error);
        use reqwest::StatusCode as S;
        let refused = matches!(
            status,
            S::BAD_REQUEST
                | S::UNAUTHORIZED
                | S::FORBIDDEN
                | S::NOT_FOUND
                | S::PAYLOAD_TOO_LARGE
                | S::UNPROCESSABLE_ENTITY
        );
        let detail = error.map(|e| format!(" {}: {}", e.code, e.message)).unwrap_or_default();
        Err(if refused {
            ClientError::Refused { what, status, detail }
        } else {
            ClientError::Failed { what, status, detail }
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        what: &'static str,
    ) -> Result<T, ClientError> {
        self.send(req, what).await?.json().await.map_err(|source| ClientError::BadAnswer { what, source })
    }

    pub async fn put_blob(&self, bytes: Vec<u8>) -> Result<BlobStored, ClientError> {
        self.json(self.http.post(format!("{}/v1/blobs", self.base)).body(bytes), "uploading a blob").await
    }

    pub async fn submit(&self, spec: &JobSpec) -> Result<JobCreated, ClientError> {
        self.json(self.http.post(format!("{}/v1/jobs", self.base)).json(spec), "submitting the job").await
    }

    pub async fn status(&self, job: u64) -> Result<JobStatus, ClientError> {
        self.json(self.http.get(format!("{}/v1/jobs/{job}", self.base)), "reading the job's status").await
    }

    pub async fn output(&self, job: u64) -> Result<Vec<u8>, ClientError> {
        let what = "fetching the job's output";
        let resp = self.send(self.http.get(format!("{}/v1/jobs/{job}/output", self.base)), what).await?;
        Ok(resp.bytes().await.map_err(|source| ClientError::BadAnswer { what, source })?.to_vec())
    }

    /// The pool's totals and every device's credits (public).
    pub async fn stats(&self) -> Result<PoolStats, ClientError> {
        self.json(self.http.get(format!("{}/v1/stats", self.base)), "reading the pool's stats").await
    }

    pub async fn create_org(&self, name: &str) -> Result<Org, ClientError> {
        let req = self.http.post(format!("{}/v1/orgs", self.base)).json(&OrgCreate { name: name.into() });
        self.json(req, "creating the organisation").await
    }

    pub async fn org_stats(&self, org: u64) -> Result<OrgStats, ClientError> {
        self.json(self.http.get(format!("{}/v1/orgs/{org}/stats", self.base)), "reading the organisation's stats").await
    }

    pub async fn create_token(&self, org: u64, spec: &TokenCreate) -> Result<TokenCreated, ClientError> {
        let req = self.http.post(format!("{}/v1/orgs/{org}/tokens", self.base)).json(spec);
        self.json(req, "creating the enrollment token").await
    }

    pub async fn revoke_token(&self, token: u64) -> Result<TokenInfo, ClientError> {
        self.json(self.http.delete(format!("{}/v1/tokens/{token}", self.base)), "revoking the enrollment token").await
    }
}
