//! A pool operator's client: upload blobs, submit jobs, follow them, fetch output.

use std::time::Duration;

use anyhow::{Context as _, bail};
use idlemesh_protocol::api::{
    BlobStored, ErrorBody, JobCreated, JobSpec, JobStatus, Org, OrgCreate, OrgStats, TokenCreate, TokenCreated,
    TokenInfo,
};
use idlemesh_protocol::auth::OPERATOR_SCHEME;

const POOL_ENV: &str = "IDLEMESH_POOL_URL";
const TOKEN_ENV: &str = "IDLEMESH_OPERATOR_TOKEN";

/// The pool from `--pool`, else `$IDLEMESH_POOL_URL`, else the local default;
/// the operator token only from `$IDLEMESH_OPERATOR_TOKEN`, never from a
/// command line other users can read in the process list.
pub fn from_env(pool: Option<String>) -> anyhow::Result<OperatorClient> {
    let pool = pool.or_else(|| std::env::var(POOL_ENV).ok()).unwrap_or_else(|| "http://127.0.0.1:8470".into());
    let token = std::env::var(TOKEN_ENV)
        .ok()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| crate::exit::bad_input(format!("set {TOKEN_ENV} to the pool's operator token")))?;
    OperatorClient::new(&pool, &token)
}

pub struct OperatorClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl OperatorClient {
    pub fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build()?;
        Ok(Self { http, base: base.trim_end_matches('/').to_owned(), token: token.to_owned() })
    }

    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> anyhow::Result<reqwest::Response> {
        let resp = req
            .header(reqwest::header::AUTHORIZATION, format!("{OPERATOR_SCHEME}{}", self.token))
            .send()
            .await
            .with_context(|| format!("{what}: pool unreachable at {}", self.base))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let message = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(e) => format!("{what}: pool answered {status} {}: {}", e.error.code, e.error.message),
            Err(_) => format!("{what}: pool answered {status}"),
        };
        // The pool refusing what was asked (a bad spec, an unknown id, a
        // wrong token, too big) is the caller's input: exit 2. A conflict,
        // a rate limit or a server error is not.
        use reqwest::StatusCode as S;
        if matches!(
            status,
            S::BAD_REQUEST
                | S::UNAUTHORIZED
                | S::FORBIDDEN
                | S::NOT_FOUND
                | S::PAYLOAD_TOO_LARGE
                | S::UNPROCESSABLE_ENTITY
        ) {
            return Err(crate::exit::bad_input(message));
        }
        bail!("{message}")
    }

    pub async fn put_blob(&self, bytes: Vec<u8>) -> anyhow::Result<BlobStored> {
        let req = self.http.post(format!("{}/v1/blobs", self.base)).body(bytes);
        Ok(self.send(req, "uploading a blob").await?.json().await?)
    }

    pub async fn submit(&self, spec: &JobSpec) -> anyhow::Result<JobCreated> {
        let req = self.http.post(format!("{}/v1/jobs", self.base)).json(spec);
        Ok(self.send(req, "submitting the job").await?.json().await?)
    }

    pub async fn status(&self, job: u64) -> anyhow::Result<JobStatus> {
        let req = self.http.get(format!("{}/v1/jobs/{job}", self.base));
        Ok(self.send(req, "reading the job's status").await?.json().await?)
    }

    pub async fn create_org(&self, name: &str) -> anyhow::Result<Org> {
        let req = self.http.post(format!("{}/v1/orgs", self.base)).json(&OrgCreate { name: name.into() });
        Ok(self.send(req, "creating the organisation").await?.json().await?)
    }

    pub async fn org_stats(&self, org: u64) -> anyhow::Result<OrgStats> {
        let req = self.http.get(format!("{}/v1/orgs/{org}/stats", self.base));
        Ok(self.send(req, "reading the organisation's stats").await?.json().await?)
    }

    pub async fn create_token(&self, org: u64, spec: &TokenCreate) -> anyhow::Result<TokenCreated> {
        let req = self.http.post(format!("{}/v1/orgs/{org}/tokens", self.base)).json(spec);
        Ok(self.send(req, "creating the enrollment token").await?.json().await?)
    }

    pub async fn revoke_token(&self, token: u64) -> anyhow::Result<TokenInfo> {
        let req = self.http.delete(format!("{}/v1/tokens/{token}", self.base));
        Ok(self.send(req, "revoking the enrollment token").await?.json().await?)
    }

    pub async fn output(&self, job: u64) -> anyhow::Result<Vec<u8>> {
        let req = self.http.get(format!("{}/v1/jobs/{job}/output", self.base));
        Ok(self.send(req, "fetching the job's output").await?.bytes().await?.to_vec())
    }
}
