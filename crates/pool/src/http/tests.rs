//! The API as a client sees it: statuses and JSON errors for bad requests,
//! device authentication and replay protection.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use idlemesh_protocol::{Keypair, auth};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::{Pool, PoolConfig};

fn pool() -> (Pool, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = PoolConfig::new(dir.path().to_owned());
    config.operator_token = "op".into();
    (Pool::open(config).unwrap(), dir)
}

async fn call(pool: &Pool, req: Request<Body>) -> (StatusCode, Value) {
    let resp = pool.router().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn post(path: &str, body: &str) -> Request<Body> {
    Request::post(path).header("content-type", "application/json").body(Body::from(body.to_owned())).unwrap()
}

fn signed(key: &Keypair, device: u64, path: &str, body: &str, timestamp: u64) -> Request<Body> {
    let sig = auth::sign_request(key, device, "POST", path, body.as_bytes(), timestamp);
    Request::post(path)
        .header(auth::HEADER_DEVICE, device.to_string())
        .header(auth::HEADER_TIMESTAMP, sig.timestamp.to_string())
        .header(auth::HEADER_SIGNATURE, sig.signature)
        .body(Body::from(body.to_owned()))
        .unwrap()
}

#[tokio::test]
async fn malformed_requests_get_json_errors_never_500() {
    let (pool, _dir) = pool();
    for (req, want) in [
        (post("/v1/enroll", "{not json"), StatusCode::BAD_REQUEST),
        (post("/v1/enroll", r#"{"public_key":"zz"}"#), StatusCode::BAD_REQUEST),
        (post("/v1/leases", "{}"), StatusCode::UNAUTHORIZED),
        (post("/v1/jobs", "{}"), StatusCode::UNAUTHORIZED),
        (
            Request::get("/v1/jobs/abc").header("authorization", "Bearer op").body(Body::empty()).unwrap(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Request::get("/v1/jobs/99").header("authorization", "Bearer op").body(Body::empty()).unwrap(),
            StatusCode::NOT_FOUND,
        ),
        (
            Request::get("/v1/jobs/1").header("authorization", "Bearer nope").body(Body::empty()).unwrap(),
            StatusCode::FORBIDDEN,
        ),
        (Request::get("/v1/blobs/xyz").body(Body::empty()).unwrap(), StatusCode::BAD_REQUEST),
        (Request::get("/v1/nowhere").body(Body::empty()).unwrap(), StatusCode::NOT_FOUND),
    ] {
        let what = format!("{} {}", req.method(), req.uri());
        let (status, body) = call(&pool, req).await;
        assert_eq!(status, want, "{what}: {body}");
        assert!(body["error"]["code"].is_string() && body["error"]["message"].is_string(), "{what}: {body}");
    }
    let (status, body) = call(
        &pool,
        Request::post("/v1/jobs").header("authorization", "Bearer op").body(Body::from(r#"{"name":"x"}"#)).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"]["message"].as_str().unwrap().contains("missing field"), "{body}");
}

#[tokio::test]
async fn device_requests_are_signed_fresh_and_used_once() {
    let (pool, _dir) = pool();
    let key = Keypair::generate().unwrap();
    let (status, enrolled) = call(&pool, post("/v1/enroll", &json!({"public_key": key.public()}).to_string())).await;
    assert_eq!(status, StatusCode::OK, "{enrolled}");
    let device = enrolled["device_id"].as_u64().unwrap();
    assert_eq!(enrolled["pool_public_key"], json!(pool.public_key()));

    let body = json!({"capabilities": {"wasm": true, "cores": 2, "memory_bytes": 1}, "max_tasks": 1}).to_string();
    let now = crate::now_ms();
    let (status, leases) = call(&pool, signed(&key, device, "/v1/leases", &body, now)).await;
    assert_eq!(status, StatusCode::OK, "{leases}");
    assert_eq!(leases["tasks"], json!([]));
    assert!(leases["retry_after_ms"].as_u64().unwrap() > 0, "an idle device is told when to come back");

    // The very same request again: a replay.
    let (status, err) = call(&pool, signed(&key, device, "/v1/leases", &body, now)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(err["error"]["message"].as_str().unwrap().contains("replayed"), "{err}");
    // Stale, forged, or for a device that does not exist.
    let stale = now - auth::MAX_CLOCK_SKEW_MS - 1_000;
    assert_eq!(call(&pool, signed(&key, device, "/v1/leases", &body, stale)).await.0, StatusCode::UNAUTHORIZED);
    let stranger = Keypair::generate().unwrap();
    assert_eq!(call(&pool, signed(&stranger, device, "/v1/leases", &body, now + 1)).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(call(&pool, signed(&key, device + 7, "/v1/leases", &body, now + 2)).await.0, StatusCode::UNAUTHORIZED);
    // A body other than the one signed.
    let mut tampered = signed(&key, device, "/v1/leases", &body, now + 3);
    *tampered.body_mut() = Body::from(body.replace("\"max_tasks\":1", "\"max_tasks\":64"));
    assert_eq!(call(&pool, tampered).await.0, StatusCode::UNAUTHORIZED);
}
