//! The HTTP API (DESIGN §5). Handlers parse and authenticate, then call the
//! store on a blocking thread; every error is `{"error": {code, message}}`.

use std::sync::OnceLock;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use idlemesh_protocol::api::{
    BlobStored, DeviceStats, EnrollRequest, EnrollResponse, ErrorBody, ErrorDetail, GiveBack, HeartbeatResponse,
    JobCreated, JobSpec, JobStatus, LeaseRequest, LeaseResponse, LeaseSync, LeaseSyncResponse, LeaseTokenBody, Org,
    OrgCreate, OrgStats, PoolChallenge, PoolInfo, PoolStats, ResultResponse, ResultSubmission, TokenCreate,
    TokenCreated, TokenInfo,
};
use idlemesh_protocol::openapi::{RawBytes, SignedPoolChallenge};
use idlemesh_protocol::{Sha256, Signed};
use serde::de::DeserializeOwned;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::store::StoreError;
use crate::{Pool, auth, now_ms, split};

mod doc;
use doc::{BadRequest, Conflict, Forbidden, NotFound, TooLarge, Unauthorized};

/// Body size limits, per route: kernels and job inputs can be large, a
/// result carries one task's output (base64), everything else is small.
const SMALL_BODY: usize = 64 << 10;
const RESULT_BODY: usize = (idlemesh_protocol::MAX_OUTPUT_BYTES as usize).div_ceil(3) * 4 + SMALL_BODY;
const LARGE_BODY: usize = 256 << 20;
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
            StoreError::Replayed => Self::unauthorized(e.to_string()),
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

/// A request body of at most `MAX` bytes; a larger one is refused with 413
/// before it is read in full, in the API's error format.
struct Body<const MAX: usize>(Bytes);

impl<S: Send + Sync, const MAX: usize> FromRequest<S> for Body<MAX> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        read_body::<MAX>(&parts.headers, body).await.map(Self)
    }
}

/// The connection's remote address, where the server records it
/// (`Pool::serve`); `None` when the router is driven in-process.
struct Peer(Option<std::net::SocketAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0)))
    }
}

async fn read_body<const MAX: usize>(headers: &HeaderMap, body: axum::body::Body) -> ApiResult<Bytes> {
    let too_large =
        || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("request body over {MAX} bytes"));
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX as u64) {
        return Err(too_large());
    }
    match Limited::new(body, MAX).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
        Err(e) => Err(ApiError::bad_request(format!("could not read the request body: {e}"))),
    }
}

/// Refuses a caller before its (possibly large) body is read, so nobody
/// unauthenticated makes the pool buffer an upload. A small body is read
/// and dropped first: answering with request bytes still unread makes the
/// kernel reset the connection, and a client still sending would see that
/// instead of the answer.
async fn refuse_unread(body: axum::body::Body, refusal: ApiError) -> ApiError {
    let _ = Limited::new(body, SMALL_BODY).collect().await;
    refusal
}

/// The body of an operator's upload, of at most `MAX` bytes, read only
/// once the operator token is checked.
struct OperatorBody<const MAX: usize>(Bytes);

impl<const MAX: usize> FromRequest<Pool> for OperatorBody<MAX> {
    type Rejection = ApiError;

    async fn from_request(req: Request, pool: &Pool) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        if let Err(refusal) = auth::operator(pool, &parts.headers) {
            return Err(refuse_unread(body, refusal).await);
        }
        read_body::<MAX>(&parts.headers, body).await.map(Self)
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    if has_nul_escape(body) {
        return Err(ApiError::bad_request("malformed request body: text may not contain NUL characters (\\u0000)"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("malformed request body: {e}")))
}

/// Whether JSON text holds a NUL character: the escape `\u0000` (JSON has
/// no other way to write one) after an even run of backslashes. No name,
/// label or message needs one, and PostgreSQL cannot store it in text.
fn has_nul_escape(json: &[u8]) -> bool {
    json.windows(6).enumerate().any(|(i, w)| {
        w.eq_ignore_ascii_case(b"\\u0000") && json[..i].iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 0
    })
}

/// A device's small signed request: the body read (at most
/// `SMALL_BODY`), the signature over method, path and body verified for
/// the device it names, then the body parsed as `T`. Any failure is the
/// answer, in that order, before the handler runs.
struct DeviceRequest<T>(auth::Device, T);

impl<T: DeserializeOwned> FromRequest<Pool> for DeviceRequest<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, pool: &Pool) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let body = read_body::<SMALL_BODY>(&parts.headers, body).await?;
        let device = auth::device(pool, &parts.method, parts.uri.path(), &parts.headers, &body).await?;
        Ok(Self(device, parse(&body)?))
    }
}

/// A request the operator token authorises; any other is refused with
/// 401 or 403 before the handler runs.
struct Operator;

impl axum::extract::FromRequestParts<Pool> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, pool: &Pool) -> Result<Self, ApiError> {
        auth::operator(pool, &parts.headers).map(|()| Self)
    }
}

/// What a numeric path id names, for the error when it is not a number.
trait IdOf {
    const WHAT: &'static str;
}

/// The `{id}` of a route, a number, or a 400 that names what was expected.
struct PathId<K>(u64, std::marker::PhantomData<K>);

impl<S: Send + Sync, K: IdOf> axum::extract::FromRequestParts<S> for PathId<K> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("{}: {e}", K::WHAT)))?;
        let id = text.parse().map_err(|_| ApiError::bad_request(format!("{} {text:?} is not a number", K::WHAT)))?;
        Ok(Self(id, std::marker::PhantomData))
    }
}

macro_rules! path_ids {
    ($($alias:ident, $kind:ident: $what:literal;)*) => {$(
        struct $kind;
        impl IdOf for $kind {
            const WHAT: &'static str = $what;
        }
        type $alias = PathId<$kind>;
    )*};
}

path_ids! {
    JobId, JobKind: "job id";
    OrgId, OrgKind: "organisation id";
    TokenId, TokenKind: "token id";
    LeaseId, LeaseKind: "lease id";
    DeviceId, DeviceKind: "device id";
}

/// Every route with its description: registering a handler and documenting
/// it are one step, so the served document cannot miss a route.
fn api() -> OpenApiRouter<Pool> {
    OpenApiRouter::with_openapi(doc::ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(openapi))
        .routes(routes!(info))
        .routes(routes!(challenge))
        .routes(routes!(enroll))
        .routes(routes!(lease))
        .routes(routes!(sync_leases))
        .routes(routes!(heartbeat))
        .routes(routes!(give_back))
        .routes(routes!(submit_result))
        .routes(routes!(put_blob))
        .routes(routes!(get_blob))
        .routes(routes!(create_job))
        .routes(routes!(job_status))
        .routes(routes!(job_output))
        .routes(routes!(stats))
        .routes(routes!(device_stats))
        .routes(routes!(create_org, list_orgs))
        .routes(routes!(org_stats))
        .routes(routes!(create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(metrics))
}

pub(crate) fn router(pool: Pool) -> Router {
    let (router, _) = api().split_for_parts();
    let metrics = pool.inner.metrics.clone();
    router
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .with_state(pool)
        .layer(axum::middleware::map_response(move |response: Response| {
            let metrics = metrics.clone();
            async move {
                metrics.responded(response.status().as_u16());
                response
            }
        }))
}

/// The API's OpenAPI 3.1 document, generated from the routes above.
pub(crate) fn openapi_json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let (_, doc) = api().split_for_parts();
        doc.to_pretty_json().expect("the OpenAPI document serialises")
    })
}

#[utoipa::path(get, path = "/v1/openapi.json", operation_id = "openapi",
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = Object)))]
async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json())
}

#[utoipa::path(get, path = "/v1/health", operation_id = "health",
    responses((status = 200, description = "The pool is up and reaches its database", body = doc::Health),
        (status = 503, description = "The pool cannot reach its database (or it does not answer within 2 s)", body = doc::Health)))]
async fn health(State(pool): State<Pool>) -> impl IntoResponse {
    let ping = pool.inner.store.run(|s| s.ping());
    let (code, status, database) = match tokio::time::timeout(std::time::Duration::from_secs(2), ping).await {
        Ok(Ok(())) => (StatusCode::OK, doc::HealthStatus::Ok, "ok".to_owned()),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, doc::HealthStatus::Unavailable, e.to_string()),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            doc::HealthStatus::Unavailable,
            "the database did not answer within 2 s".to_owned(),
        ),
    };
    (code, axum::Json(doc::Health { status, database }))
}

#[utoipa::path(get, path = "/v1/info", operation_id = "info",
    responses((status = 200, description = "Who runs the pool, its key, and what device information it asks for", body = PoolInfo)))]
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
            idlemesh_protocol::api::DeviceInfoRequest {
                field: "os".into(),
                reason: "optional: to know which platforms the pool's devices run".into(),
            },
            idlemesh_protocol::api::DeviceInfoRequest {
                field: "agent_version".into(),
                reason: "optional: to know which agent versions are still in use".into(),
            },
            idlemesh_protocol::api::DeviceInfoRequest {
                field: "lease.wgpu_adapter".into(),
                reason: "sent with each work request where the GPU is offered: GPU tasks go only to devices \
                         with an adapter, and GPU results are compared only between the same kind of adapter"
                    .into(),
            },
        ],
        open_enrollment: c.open_enrollment,
        payout: c.payout.clone(),
    })
}

/// Signs a device's nonce: proof that this server holds the pool's key.
/// The device's nonce, signed with the pool key.
#[utoipa::path(post, path = "/v1/challenge", operation_id = "challenge", request_body = PoolChallenge,
    responses((status = 200, description = "The nonce signed by the pool", body = SignedPoolChallenge), BadRequest, TooLarge))]
async fn challenge(State(pool): State<Pool>, Body(body): Body<SMALL_BODY>) -> ApiResult<impl IntoResponse> {
    let req: PoolChallenge = parse(&body)?;
    if req.nonce.len() != 64 || !req.nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request("nonce must be 64 hex digits (32 random bytes)"));
    }
    Ok(axum::Json(Signed::sign(&req, &pool.inner.key)))
}

#[utoipa::path(post, path = "/v1/enroll", operation_id = "enroll", request_body = EnrollRequest,
    responses((status = 200, description = "Enrolled (or already enrolled with this key)", body = EnrollResponse),
        BadRequest, Forbidden, Conflict, TooLarge))]
async fn enroll(State(pool): State<Pool>, Body(body): Body<SMALL_BODY>) -> ApiResult<impl IntoResponse> {
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
    // A device's id names one key for good: its first request need not look it up.
    pool.inner.device_keys.write().unwrap().insert(device_id, key);
    if let Some(org) = &org {
        tracing::info!(device_id, org_id = org.org_id, "device enrolled with an organisation's token");
    }
    Ok(axum::Json(EnrollResponse { device_id, pool_public_key: pool.public_key(), org }))
}

#[utoipa::path(post, path = "/v1/orgs", operation_id = "create_org", request_body = OrgCreate,
    security(("operator" = [])),
    responses((status = 201, description = "Created", body = Org), BadRequest, Unauthorized, Forbidden, Conflict, TooLarge))]
async fn create_org(
    State(pool): State<Pool>,
    _: Operator,
    Body(body): Body<SMALL_BODY>,
) -> ApiResult<impl IntoResponse> {
    let req: OrgCreate = parse(&body)?;
    let org = pool.inner.store.run(move |s| s.create_org(&req.name, now_ms())).await?;
    Ok((StatusCode::CREATED, axum::Json(org)))
}

#[utoipa::path(get, path = "/v1/orgs", operation_id = "list_orgs", security(("operator" = [])),
    responses((status = 200, description = "Every organisation", body = Vec<Org>), Unauthorized, Forbidden))]
async fn list_orgs(State(pool): State<Pool>, _: Operator) -> ApiResult<impl IntoResponse> {
    Ok(axum::Json(pool.inner.store.run(|s| s.orgs()).await?))
}

#[utoipa::path(get, path = "/v1/orgs/{id}/stats", operation_id = "org_stats", security(("operator" = [])),
    params(("id" = u64, Path, description = "organisation id")),
    responses((status = 200, description = "The organisation's devices, credits and tokens", body = OrgStats),
        BadRequest, Unauthorized, Forbidden, NotFound))]
async fn org_stats(State(pool): State<Pool>, _: Operator, PathId(org, _): OrgId) -> ApiResult<impl IntoResponse> {
    Ok(axum::Json(pool.inner.store.run(move |s| s.org_stats(org)).await?))
}

#[utoipa::path(post, path = "/v1/orgs/{id}/tokens", operation_id = "create_token", request_body = TokenCreate,
    security(("operator" = [])), params(("id" = u64, Path, description = "organisation id")),
    responses((status = 201, description = "Created; the secret is shown only here", body = TokenCreated),
        BadRequest, Unauthorized, Forbidden, NotFound, TooLarge))]
async fn create_token(
    State(pool): State<Pool>,
    _: Operator,
    PathId(org, _): OrgId,
    Body(body): Body<SMALL_BODY>,
) -> ApiResult<impl IntoResponse> {
    let req: TokenCreate = parse(&body)?;
    let created = pool.inner.store.run(move |s| s.create_token(org, &req, now_ms())).await?;
    tracing::info!(org_id = org, token_id = created.info.token_id, "enrollment token created");
    Ok((StatusCode::CREATED, axum::Json(created)))
}

#[utoipa::path(delete, path = "/v1/tokens/{id}", operation_id = "revoke_token", security(("operator" = [])),
    params(("id" = u64, Path, description = "enrollment token id")),
    responses((status = 200, description = "Revoked", body = TokenInfo), BadRequest, Unauthorized, Forbidden, NotFound))]
async fn revoke_token(
    State(pool): State<Pool>,
    _: Operator,
    PathId(token, _): TokenId,
) -> ApiResult<impl IntoResponse> {
    let info = pool.inner.store.run(move |s| s.revoke_token(token, now_ms())).await?;
    tracing::info!(token_id = token, "enrollment token revoked");
    Ok(axum::Json(info))
}

#[utoipa::path(post, path = "/v1/leases", operation_id = "lease", request_body = LeaseRequest,
    security(("device" = [])),
    responses((status = 200, description = "Signed task manifests (possibly none, with a time to wait)", body = LeaseResponse),
        BadRequest, Unauthorized,
        (status = 429, description = "Asking too often", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds to wait"))), TooLarge))]
async fn lease(
    State(pool): State<Pool>,
    Peer(peer): Peer,
    DeviceRequest(device, req): DeviceRequest<LeaseRequest>,
) -> ApiResult<impl IntoResponse> {
    if let Some(wait_ms) = pool.inner.lease_rate.check(device.id, std::time::Instant::now()) {
        return Err(ApiError::too_many_requests(wait_ms));
    }
    let max = req.max_tasks.clamp(1, MAX_TASKS_PER_LEASE);
    let network = peer.map(|p| pool.inner.config.trust.network_of(p.ip()));
    let manifests = device
        .run_skipping_locks(&pool, move |s, id| s.lease(id, &req.capabilities, max, now_ms(), network.as_deref()))
        .await?;
    // Signed here, on the request's own thread, not on the database thread.
    let tasks: Vec<_> = manifests.iter().map(|m| Signed::sign(m, &pool.inner.key)).collect();
    let retry_after_ms = tasks.is_empty().then_some(IDLE_RETRY_AFTER_MS);
    Ok(axum::Json(LeaseResponse { tasks, retry_after_ms }))
}

#[utoipa::path(post, path = "/v1/leases/sync", operation_id = "sync_leases", request_body = LeaseSync,
    security(("device" = [])),
    responses((status = 200, description = "The device's other live leases, queued again", body = LeaseSyncResponse),
        BadRequest, Unauthorized, TooLarge))]
async fn sync_leases(
    State(pool): State<Pool>,
    DeviceRequest(device, req): DeviceRequest<LeaseSync>,
) -> ApiResult<impl IntoResponse> {
    let device_id = device.id;
    let released = device.run(&pool, move |s, id| s.release_unheld(id, &req.held, now_ms())).await?;
    if !released.is_empty() {
        tracing::info!(device_id, ?released, "queued again leases the device no longer holds");
    }
    Ok(axum::Json(LeaseSyncResponse { released }))
}

#[utoipa::path(post, path = "/v1/leases/{id}/heartbeat", operation_id = "heartbeat", request_body = LeaseTokenBody,
    security(("device" = [])), params(("id" = u64, Path, description = "lease id")),
    responses((status = 200, description = "The lease's new deadline", body = HeartbeatResponse),
        BadRequest, Unauthorized, NotFound, Conflict, TooLarge))]
async fn heartbeat(
    State(pool): State<Pool>,
    PathId(lease, _): LeaseId,
    DeviceRequest(device, req): DeviceRequest<LeaseTokenBody>,
) -> ApiResult<impl IntoResponse> {
    let deadline_ms = device.run(&pool, move |s, id| s.heartbeat(id, lease, &req.lease_token, now_ms())).await?;
    Ok(axum::Json(HeartbeatResponse { deadline_ms }))
}

#[utoipa::path(delete, path = "/v1/leases/{id}", operation_id = "give_back", request_body = GiveBack,
    security(("device" = [])), params(("id" = u64, Path, description = "lease id")),
    responses((status = 204, description = "Given back: the replica is queued again (a task failed too often fails)"),
        BadRequest, Unauthorized, NotFound, Conflict, TooLarge))]
async fn give_back(
    State(pool): State<Pool>,
    PathId(lease, _): LeaseId,
    DeviceRequest(device, req): DeviceRequest<GiveBack>,
) -> ApiResult<impl IntoResponse> {
    if let Some(failure) = &req.failure {
        failure.check().map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    device.run(&pool, move |s, id| s.give_back(id, lease, &req.lease_token, req.failure.as_ref())).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/results", operation_id = "submit_result", request_body = ResultSubmission,
    security(("device" = [])),
    responses((status = 200, description = "Recorded; a receipt once the task reached quorum with this result", body = ResultResponse),
        BadRequest, Unauthorized, NotFound, Conflict, TooLarge))]
async fn submit_result(
    State(pool): State<Pool>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<impl IntoResponse> {
    // Who claims to send it is checked before the body is read; the
    // signature over the body, after.
    let claim = match auth::device_claim(&pool, &headers).await {
        Ok(claim) => claim,
        Err(refusal) => return Err(refuse_unread(body, refusal).await),
    };
    let body = read_body::<RESULT_BODY>(&headers, body).await?;
    let device = claim.verify(&method, uri.path(), &body)?;
    let req: ResultSubmission = parse(&body)?;
    if Sha256::of(&req.output.0) != req.output_sha256 {
        return Err(ApiError::bad_request("output_sha256 does not match the output bytes"));
    }
    let outcome = device.submit_result(&pool, req).await?;
    Ok(axum::Json(ResultResponse { task_state: outcome.task_state, receipt: outcome.receipt }))
}

#[utoipa::path(post, path = "/v1/blobs", operation_id = "put_blob",
    request_body(content = RawBytes, content_type = "application/octet-stream", description = "A kernel or an input"),
    security(("operator" = [])),
    responses((status = 201, description = "Stored", body = BlobStored), BadRequest, Unauthorized, Forbidden, TooLarge))]
async fn put_blob(
    State(pool): State<Pool>,
    OperatorBody(body): OperatorBody<LARGE_BODY>,
) -> ApiResult<impl IntoResponse> {
    let size_bytes = body.len() as u64;
    let sha256 = pool.inner.store.run(move |s| s.put_blob(&body)).await?;
    Ok((StatusCode::CREATED, axum::Json(BlobStored { sha256, size_bytes })))
}

#[utoipa::path(get, path = "/v1/blobs/{sha256}", operation_id = "get_blob",
    security(("device" = []), ("operator" = [])),
    params(("sha256" = Sha256, Path, description = "the blob's SHA-256")),
    responses((status = 200, description = "The blob's bytes", body = RawBytes, content_type = "application/octet-stream"),
        BadRequest, Unauthorized, NotFound))]
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
    let device = match auth::operator(&pool, &headers) {
        Ok(()) => None,
        Err(_) => Some(auth::device(&pool, &method, uri.path(), &headers, b"").await?),
    };
    let bytes = match device {
        Some(device) => device.run(&pool, move |s, _| s.blob(&sha)).await?,
        None => pool.inner.store.run(move |s| s.blob(&sha)).await?,
    }
    .ok_or_else(|| ApiError::not_found(format!("blob {sha} not found")))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

#[utoipa::path(post, path = "/v1/jobs", operation_id = "create_job", request_body = JobSpec,
    security(("operator" = [])),
    responses((status = 201, description = "Created and split into tasks", body = JobCreated),
        BadRequest, Unauthorized, Forbidden, TooLarge))]
async fn create_job(
    State(pool): State<Pool>,
    OperatorBody(body): OperatorBody<LARGE_BODY>,
) -> ApiResult<impl IntoResponse> {
    let spec: JobSpec = parse(&body)?;
    let seeds = split::expand(&spec).map_err(|e| ApiError::bad_request(format!("job spec: {e}")))?;
    let tasks = seeds.len() as u64;
    let job_id = pool.inner.store.run(move |s| s.create_job(&spec, &seeds, now_ms())).await?;
    tracing::info!(job_id, tasks, "job created");
    Ok((StatusCode::CREATED, axum::Json(JobCreated { job_id, tasks })))
}

#[utoipa::path(get, path = "/v1/jobs/{id}", operation_id = "job_status", security(("operator" = [])),
    params(("id" = u64, Path, description = "job id")),
    responses((status = 200, description = "Progress per state", body = JobStatus),
        BadRequest, Unauthorized, Forbidden, NotFound))]
async fn job_status(State(pool): State<Pool>, _: Operator, PathId(job, _): JobId) -> ApiResult<impl IntoResponse> {
    Ok(axum::Json(pool.inner.store.run(move |s| s.job_status(job)).await?))
}

#[utoipa::path(get, path = "/v1/jobs/{id}/output", operation_id = "job_output", security(("operator" = [])),
    params(("id" = u64, Path, description = "job id")),
    responses((status = 200, description = "The combined output", body = RawBytes, content_type = "application/octet-stream"),
        BadRequest, Unauthorized, Forbidden, NotFound, Conflict))]
async fn job_output(State(pool): State<Pool>, _: Operator, PathId(job, _): JobId) -> ApiResult<Response> {
    match pool.inner.store.run(move |s| s.job_output(job)).await? {
        Some(bytes) => Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()),
        None => Err(ApiError::new(StatusCode::CONFLICT, "not_ready", format!("job {job} has no output yet"))),
    }
}

#[utoipa::path(get, path = "/v1/stats", operation_id = "stats",
    responses((status = 200, description = "Totals, and each device's credits and reputation", body = PoolStats)))]
async fn stats(State(pool): State<Pool>) -> ApiResult<impl IntoResponse> {
    Ok(axum::Json(pool.inner.store.run(|s| s.stats()).await?))
}

#[utoipa::path(get, path = "/v1/devices/{id}/stats", operation_id = "device_stats",
    params(("id" = u64, Path, description = "device id")),
    responses((status = 200, description = "One device's credits and reputation, as /v1/stats lists them", body = DeviceStats),
        BadRequest, NotFound))]
async fn device_stats(State(pool): State<Pool>, PathId(device, _): DeviceId) -> ApiResult<impl IntoResponse> {
    Ok(axum::Json(pool.inner.store.run(move |s| s.device_stats(device)).await?))
}

#[utoipa::path(get, path = "/metrics", operation_id = "metrics",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
async fn metrics(State(pool): State<Pool>) -> ApiResult<impl IntoResponse> {
    let s = pool.inner.store.run(|s| s.stats()).await?;
    let text = format!(
        "# TYPE idlemesh_pool_jobs gauge\nidlemesh_pool_jobs {}\n\
         # TYPE idlemesh_pool_tasks gauge\n\
         idlemesh_pool_tasks{{state=\"pending\"}} {}\nidlemesh_pool_tasks{{state=\"leased\"}} {}\n\
         idlemesh_pool_tasks{{state=\"done\"}} {}\nidlemesh_pool_tasks{{state=\"failed\"}} {}\n\
         # TYPE idlemesh_pool_devices gauge\nidlemesh_pool_devices {}\n\
         # TYPE idlemesh_pool_credits_granted counter\nidlemesh_pool_credits_granted {}\n{}",
        s.jobs,
        s.tasks.pending,
        s.tasks.leased,
        s.tasks.done,
        s.tasks.failed,
        s.devices.len(),
        s.credits_granted,
        pool.inner.metrics.render()
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}

#[cfg(test)]
mod tests;
