//! The HTTP API (DESIGN §5). Handlers parse and authenticate, then call the
//! store on a blocking thread; every error is `{"error": {code, message}}`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use idlemesh_protocol::api::{
    BlobStored, EnrollRequest, EnrollResponse, ErrorBody, ErrorDetail, HeartbeatResponse, JobCreated, JobSpec,
    LeaseRequest, LeaseResponse, LeaseTokenBody, OrgCreate, PoolChallenge, PoolInfo, ResultResponse, ResultSubmission,
    TokenCreate,
};
use idlemesh_protocol::{Sha256, Signed};
use serde::de::DeserializeOwned;

use crate::store::StoreError;
use crate::{Pool, auth, now_ms, split};

/// Kernels and job inputs can be large; everything else is small.
const MAX_BODY_BYTES: usize = 256 << 20;
/// Most tasks one lease request may take.
const MAX_TASKS_PER_LEASE: u32 = 64;
/// What a device with nothing to do is told to wait.
const IDLE_RETRY_AFTER_MS: u64 = 2_000;

#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after_ms: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after_ms: None }
    }
    fn too_many_requests(wait_ms: u64) -> Self {
        Self {
            retry_after_ms: Some(wait_ms),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("asking too often: retry in {wait_ms} ms"),
            )
        }
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => Self::not_found(e.to_string()),
            StoreError::Conflict(m) => Self::new(StatusCode::CONFLICT, "conflict", m),
            StoreError::Invalid(m) => Self::bad_request(m),
            StoreError::Token(refusal, m) => Self::new(StatusCode::FORBIDDEN, refusal.code(), m),
            StoreError::Db(_) | StoreError::Commit(_) | StoreError::Closed => {
                tracing::error!(error = %e, "pool database error");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the pool's database failed; try again later")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code.into(), message: self.message } };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(ms) = self.retry_after_ms {
            // Retry-After counts whole seconds; round up so a client never comes back early.
            resp.headers_mut().insert(header::RETRY_AFTER, ms.div_ceil(1000).max(1).into());
        }
        resp
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn parse<T: DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("malformed request body: {e}")))
}

fn id(text: &str, what: &str) -> ApiResult<u64> {
    text.parse().map_err(|_| ApiError::bad_request(format!("{what} {text:?} is not a number")))
}

pub(crate) fn router(pool: Pool) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/info", get(info))
        .route("/v1/challenge", post(challenge))
        .route("/v1/enroll", post(enroll))
        .route("/v1/leases", post(lease))
        .route("/v1/leases/{id}/heartbeat", post(heartbeat))
        .route("/v1/leases/{id}", delete(give_back))
        .route("/v1/results", post(submit_result))
        .route("/v1/blobs", post(put_blob))
        .route("/v1/blobs/{sha256}", get(get_blob))
        .route("/v1/jobs", post(create_job))
        .route("/v1/jobs/{id}", get(job_status))
        .route("/v1/jobs/{id}/output", get(job_output))
        .route("/v1/stats", get(stats))
        .route("/v1/orgs", post(create_org).get(list_orgs))
        .route("/v1/orgs/{id}/stats", get(org_stats))
        .route("/v1/orgs/{id}/tokens", post(create_token))
        .route("/v1/tokens/{id}", delete(revoke_token))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(pool)
}

/// The API's description; the tests check the server against it.
pub(crate) const OPENAPI: &str = include_str!("../api/openapi.json");

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn info(State(pool): State<Pool>) -> impl IntoResponse {
    let c = &pool.inner.config;
    axum::Json(PoolInfo {
        name: c.name.clone(),
        operator: c.operator.clone(),
        public_key: pool.public_key(),
        device_info_requested: vec![
            idlemesh_protocol::api::DeviceInfoRequest {
                field: "cores".into(),
                reason: "to hand out as many tasks as the device runs at once".into(),
            },
            idlemesh_protocol::api::DeviceInfoRequest {
                field: "memory_bytes".into(),
                reason: "to hand out only tasks that fit in memory".into(),
            },
        ],
        open_enrollment: c.open_enrollment,
        payout: None,
    })
}

/// Signs a device's nonce: proof that this server holds the pool's key.
async fn challenge(State(pool): State<Pool>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let req: PoolChallenge = parse(&body)?;
    if req.nonce.len() != 64 || !req.nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request("nonce must be 64 hex digits (32 random bytes)"));
    }
    Ok(axum::Json(Signed::sign(&req, &pool.inner.key)))
}

async fn enroll(State(pool): State<Pool>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let req: EnrollRequest = parse(&body)?;
    if !pool.inner.config.open_enrollment && req.token.is_none() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "token_required",
            "this pool is closed: it needs an enrollment token",
        ));
    }
    const ASKED: [&str; 4] = ["cores", "memory_bytes", "os", "agent_version"];
    if let Some(field) = req.device_info.keys().find(|k| !ASKED.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!("device_info field {field:?} is not one this pool asks for")));
    }
    let info = serde_json::to_string(&req.device_info).expect("a map serialises");
    let key = req.public_key;
    let token = req.token;
    let (device_id, org) = pool.inner.store.run(move |s| s.enroll(&key, &info, token.as_deref(), now_ms())).await?;
    if let Some(org) = &org {
        tracing::info!(device_id, org_id = org.org_id, "device enrolled with an organisation's token");
    }
    Ok(axum::Json(EnrollResponse { device_id, pool_public_key: pool.public_key(), org }))
}

async fn create_org(State(pool): State<Pool>, headers: HeaderMap, body: Bytes) -> ApiResult<impl IntoResponse> {
    auth::operator(&pool, &headers)?;
    let req: OrgCreate = parse(&body)?;
    let org = pool.inner.store.run(move |s| s.create_org(&req.name, now_ms())).await?;
    Ok((StatusCode::CREATED, axum::Json(org)))
}

async fn list_orgs(State(pool): State<Pool>, headers: HeaderMap) -> ApiResult<impl IntoResponse> {
    auth::operator(&pool, &headers)?;
    Ok(axum::Json(pool.inner.store.run(|s| s.orgs()).await?))
}

async fn org_stats(
    State(pool): State<Pool>,
    Path(org): Path<String>,
    headers: HeaderMap,
) -> ApiResult<impl IntoResponse> {
    auth::operator(&pool, &headers)?;
    let org = id(&org, "organisation id")?;
    Ok(axum::Json(pool.inner.store.run(move |s| s.org_stats(org)).await?))
}

async fn create_token(
    State(pool): State<Pool>,
    Path(org): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    auth::operator(&pool, &headers)?;
    let org = id(&org, "organisation id")?;
    let req: TokenCreate = parse(&body)?;
    let created = pool.inner.store.run(move |s| s.create_token(org, &req, now_ms())).await?;
    tracing::info!(org_id = org, token_id = created.info.token_id, "enrollment token created");
    Ok((StatusCode::CREATED, axum::Json(created)))
}

async fn revoke_token(
    State(pool): State<Pool>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> ApiResult<impl IntoResponse> {
    auth::operator(&pool, &headers)?;
    let token = id(&token, "token id")?;
    let info = pool.inner.store.run(move |s| s.revoke_token(token, now_ms())).await?;
    tracing::info!(token_id = token, "enrollment token revoked");
    Ok(axum::Json(info))
}

async fn lease(
    State(pool): State<Pool>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let device = auth::device(&pool, &method, uri.path(), &headers, &body).await?;
    let req: LeaseRequest = parse(&body)?;
    if let Some(wait_ms) = pool.inner.lease_rate.check(device, std::time::Instant::now()) {
        return Err(ApiError::too_many_requests(wait_ms));
    }
    let max = req.max_tasks.clamp(1, MAX_TASKS_PER_LEASE);
    let manifests = pool.inner.store.run(move |s| s.lease(device, &req.capabilities, max, now_ms())).await?;
    // Signed here, on the request's own thread, not on the database thread.
    let tasks: Vec<_> = manifests.iter().map(|m| Signed::sign(m, &pool.inner.key)).collect();
    let retry_after_ms = tasks.is_empty().then_some(IDLE_RETRY_AFTER_MS);
    Ok(axum::Json(LeaseResponse { tasks, retry_after_ms }))
}

async fn heartbeat(
    State(pool): State<Pool>,
    Path(lease): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let lease = id(&lease, "lease id")?;
    let device = auth::device(&pool, &method, uri.path(), &headers, &body).await?;
    let req: LeaseTokenBody = parse(&body)?;
    let deadline_ms = pool.inner.store.run(move |s| s.heartbeat(device, lease, &req.lease_token, now_ms())).await?;
    Ok(axum::Json(HeartbeatResponse { deadline_ms }))
}

async fn give_back(
    State(pool): State<Pool>,
    Path(lease): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let lease = id(&lease, "lease id")?;
    let device = auth::device(&pool, &method, uri.path(), &headers, &body).await?;
    let req: LeaseTokenBody = parse(&body)?;
    pool.inner.store.run(move |s| s.give_back(device, lease, &req.lease_token)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn submit_result(
    State(pool): State<Pool>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let device = auth::device(&pool, &method, uri.path(), &headers, &body).await?;
    let req: ResultSubmission = parse(&body)?;
    if Sha256::of(&req.output.0) != req.output_sha256 {
        return Err(ApiError::bad_request("output_sha256 does not match the output bytes"));
    }
    let key = pool.inner.key.clone();
    let outcome = pool
        .inner
        .store
        .run(move |s| {
            s.submit_result(
                device,
                req.lease_id,
                &req.lease_token,
                &req.output.0,
                req.fuel,
                req.wall_ms,
                req.cpu_ms,
                &key,
                now_ms(),
            )
        })
        .await?;
    Ok(axum::Json(ResultResponse { task_state: outcome.task_state, receipt: outcome.receipt }))
}

async fn put_blob(State(pool): State<Pool>, headers: HeaderMap, body: Bytes) -> ApiResult<impl IntoResponse> {
    auth::operator(&pool, &headers)?;
    let size_bytes = body.len() as u64;
    let sha256 = pool.inner.store.run(move |s| s.put_blob(&body)).await?;
    Ok((StatusCode::CREATED, axum::Json(BlobStored { sha256, size_bytes })))
}

async fn get_blob(
    State(pool): State<Pool>,
    Path(sha): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let sha: Sha256 =
        sha.parse().map_err(|e: idlemesh_protocol::ProtocolError| ApiError::bad_request(e.to_string()))?;
    // Devices (signed) and the operator may read blobs.
    if auth::operator(&pool, &headers).is_err() {
        auth::device(&pool, &method, uri.path(), &headers, b"").await?;
    }
    let bytes = pool
        .inner
        .store
        .run(move |s| s.blob(&sha))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("blob {sha} not found")))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

async fn create_job(State(pool): State<Pool>, headers: HeaderMap, body: Bytes) -> ApiResult<impl IntoResponse> {
    auth::operator(&pool, &headers)?;
    let spec: JobSpec = parse(&body)?;
    let seeds = split::expand(&spec).map_err(|e| ApiError::bad_request(format!("job spec: {e}")))?;
    let tasks = seeds.len() as u64;
    let job_id = pool.inner.store.run(move |s| s.create_job(&spec, seeds, now_ms())).await?;
    tracing::info!(job_id, tasks, "job created");
    Ok((StatusCode::CREATED, axum::Json(JobCreated { job_id, tasks })))
}

async fn job_status(
    State(pool): State<Pool>,
    Path(job): Path<String>,
    headers: HeaderMap,
) -> ApiResult<impl IntoResponse> {
    auth::operator(&pool, &headers)?;
    let job = id(&job, "job id")?;
    Ok(axum::Json(pool.inner.store.run(move |s| s.job_status(job)).await?))
}

async fn job_output(State(pool): State<Pool>, Path(job): Path<String>, headers: HeaderMap) -> ApiResult<Response> {
    auth::operator(&pool, &headers)?;
    let job = id(&job, "job id")?;
    match pool.inner.store.run(move |s| s.job_output(job)).await? {
        Some(bytes) => Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()),
        None => Err(ApiError::new(StatusCode::CONFLICT, "not_ready", format!("job {job} has no output yet"))),
    }
}

async fn stats(State(pool): State<Pool>) -> ApiResult<impl IntoResponse> {
    Ok(axum::Json(pool.inner.store.run(|s| s.stats()).await?))
}

async fn metrics(State(pool): State<Pool>) -> ApiResult<impl IntoResponse> {
    let s = pool.inner.store.run(|s| s.stats()).await?;
    let text = format!(
        "# TYPE idlemesh_pool_jobs gauge\nidlemesh_pool_jobs {}\n\
         # TYPE idlemesh_pool_tasks gauge\n\
         idlemesh_pool_tasks{{state=\"pending\"}} {}\nidlemesh_pool_tasks{{state=\"leased\"}} {}\n\
         idlemesh_pool_tasks{{state=\"done\"}} {}\nidlemesh_pool_tasks{{state=\"failed\"}} {}\n\
         # TYPE idlemesh_pool_devices gauge\nidlemesh_pool_devices {}\n\
         # TYPE idlemesh_pool_credits_granted counter\nidlemesh_pool_credits_granted {}\n",
        s.jobs,
        s.tasks.pending,
        s.tasks.leased,
        s.tasks.done,
        s.tasks.failed,
        s.devices.len(),
        s.credits_granted
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}

#[cfg(test)]
mod tests;
