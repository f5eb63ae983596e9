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
    config.open_enrollment = true;
    config.trust = crate::trust::TrustRules::single_owner();
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
    // The same signature written in capitals (hex either way, the same
    // bytes): the same request, so a replay too.
    let mut shouted = signed(&key, device, "/v1/leases", &body, now);
    let capitals = shouted.headers()[auth::HEADER_SIGNATURE].to_str().unwrap().to_ascii_uppercase();
    shouted.headers_mut().insert(auth::HEADER_SIGNATURE, capitals.parse().unwrap());
    let (status, err) = call(&pool, shouted).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{err}");
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

/// A small JSON Schema check: `$ref`, objects (required, properties,
/// additionalProperties false), arrays, anyOf/oneOf, const, enum and types.
fn conforms(value: &Value, schema: &Value, doc: &Value) -> Result<(), String> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap();
        return conforms(value, &doc["components"]["schemas"][name], doc).map_err(|e| format!("{name}: {e}"));
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(options) = schema.get(key).and_then(Value::as_array) {
            return if options.iter().any(|o| conforms(value, o, doc).is_ok()) {
                Ok(())
            } else {
                Err(format!("{value} matches none of {key}"))
            };
        }
    }
    if let Some(c) = schema.get("const") {
        return if value == c { Ok(()) } else { Err(format!("{value} != const {c}")) };
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        return if e.contains(value) { Ok(()) } else { Err(format!("{value} not in {e:?}")) };
    }
    if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
        // Each part sees the whole object (a flattened struct), so none may
        // forbid the other parts' fields.
        return parts.iter().try_for_each(|p| conforms(value, p, doc));
    }
    if let Some(types) = schema.get("type").and_then(Value::as_array) {
        // `type: ["integer", "null"]`: an optional field.
        return if types.iter().any(|t| conforms(value, &with_type(schema, t), doc).is_ok()) {
            Ok(())
        } else {
            Err(format!("{value} is none of {types:?}"))
        };
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let obj = value.as_object().ok_or(format!("{value} is not an object"))?;
            let props = schema.get("properties").and_then(Value::as_object);
            for req in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                let req = req.as_str().unwrap();
                if !obj.contains_key(req) {
                    return Err(format!("missing required {req:?} in {value}"));
                }
            }
            for (k, v) in obj {
                match props.and_then(|p| p.get(k)) {
                    Some(s) => conforms(v, s, doc).map_err(|e| format!("{k}: {e}"))?,
                    None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                        return Err(format!("undocumented field {k:?}"));
                    }
                    None => {}
                }
            }
            Ok(())
        }
        Some("array") => {
            let items = value.as_array().ok_or(format!("{value} is not an array"))?;
            items.iter().try_for_each(|i| conforms(i, &schema["items"], doc))
        }
        Some("string") if !value.is_string() => Err(format!("{value} is not a string")),
        Some("integer") if !(value.is_u64() || value.is_i64()) => Err(format!("{value} is not an integer")),
        Some("number") if !value.is_number() => Err(format!("{value} is not a number")),
        Some("boolean") if !value.is_boolean() => Err(format!("{value} is not a boolean")),
        Some("null") if !value.is_null() => Err(format!("{value} is not null")),
        _ => Ok(()),
    }
}

fn with_type(schema: &Value, ty: &Value) -> Value {
    let mut one = schema.clone();
    one["type"] = ty.clone();
    one
}

fn response_schema<'d>(doc: &'d Value, path: &str, method: &str, status: StatusCode) -> &'d Value {
    let op = &doc["paths"][path][method];
    let resp = &op["responses"][status.as_str()];
    assert!(resp.is_object(), "{method} {path}: status {status} is not documented");
    &resp["content"]["application/json"]["schema"]
}

/// The generated document is kept in the repository so API changes show in
/// review; `IDLEMESH_BLESS=1 cargo test -p idlemesh-pool` rewrites it.
#[test]
fn the_checked_in_openapi_document_is_the_generated_one() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("api/openapi.json");
    let generated = format!("{}\n", super::openapi_json());
    if std::env::var_os("IDLEMESH_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let stored = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(stored == generated, "{} is stale: run IDLEMESH_BLESS=1 cargo test -p idlemesh-pool", path.display());
}

#[tokio::test]
async fn the_server_matches_its_openapi_document() {
    let (pool, _dir) = pool();
    let (status, doc) = call(&pool, Request::get("/v1/openapi.json").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");

    // Every documented operation exists, and what it answers to an empty,
    // unauthenticated request is a documented status with a documented body.
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let uri = path.replace("{id}", "1").replace("{sha256}", &"0".repeat(64));
            let req = Request::builder().method(method.to_uppercase().as_str()).uri(&uri).body(Body::empty()).unwrap();
            let resp = pool.router().oneshot(req).await.unwrap();
            let status = resp.status();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            assert_ne!(body["error"]["message"], "no such endpoint", "{method} {path} is documented but not served");
            let schema = response_schema(&doc, path, method, status);
            if !schema.is_null() {
                conforms(&body, schema, &doc).unwrap_or_else(|e| panic!("{method} {path} -> {status}: {e}"));
            }
        }
    }

    // Real answers conform to their schemas.
    let key = Keypair::generate().unwrap();
    let enroll_body = json!({"public_key": key.public(), "device_info": {"cores": "2"}}).to_string();
    let (status, enrolled) = call(&pool, post("/v1/enroll", &enroll_body)).await;
    conforms(&enrolled, response_schema(&doc, "/v1/enroll", "post", status), &doc).unwrap();
    let device = enrolled["device_id"].as_u64().unwrap();
    let lease_body = json!({"capabilities": {"wasm": true, "cores": 2, "memory_bytes": 1}, "max_tasks": 1}).to_string();
    let (status, leases) = call(&pool, signed(&key, device, "/v1/leases", &lease_body, crate::now_ms())).await;
    conforms(&leases, response_schema(&doc, "/v1/leases", "post", status), &doc).unwrap();
    let device_stats = format!("/v1/devices/{device}/stats");
    for (path, get) in [
        ("/v1/info", "/v1/info"),
        ("/v1/stats", "/v1/stats"),
        ("/v1/health", "/v1/health"),
        ("/v1/devices/{id}/stats", &device_stats),
    ] {
        let (status, body) = call(&pool, Request::get(get).body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{get}: {body}");
        conforms(&body, response_schema(&doc, path, "get", status), &doc).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    let (_, health) = call(&pool, Request::get("/v1/health").body(Body::empty()).unwrap()).await;
    assert_eq!(health, json!({"status": "ok", "database": "ok"}), "the database answered");
    let (_, mine) = call(&pool, Request::get(&device_stats).body(Body::empty()).unwrap()).await;
    assert_eq!(mine, json!({"device_id": device, "credits": 0.0, "valid_results": 0, "invalid_results": 0}));
    let (status, unknown) = call(&pool, Request::get("/v1/devices/999/stats").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(unknown["error"]["code"], "not_found", "{unknown}");
    // The manifest inside a signed payload is documented too.
    let manifest = json!({
        "job_id": 1, "task_id": 1, "replica_id": 1, "device_id": 1, "lease_id": 1, "lease_token": "t",
        "kernel": {"kind": "wasm", "sha256": "0".repeat(64), "size_bytes": 1}, "input_sha256": "0".repeat(64),
        "input_bytes": 0, "params": "{}", "limits": idlemesh_protocol::TaskLimits::default(), "credits": 1.0,
        "issued_at_ms": 1, "deadline_ms": 2,
    });
    let typed: idlemesh_protocol::TaskManifest = serde_json::from_value(manifest).unwrap();
    conforms(&serde_json::to_value(&typed).unwrap(), &json!({"$ref": "#/components/schemas/TaskManifest"}), &doc)
        .unwrap();
}

#[tokio::test]
async fn a_device_asking_too_often_is_told_to_wait() {
    let (pool, _dir) = pool();
    let key = Keypair::generate().unwrap();
    let (_, enrolled) = call(&pool, post("/v1/enroll", &json!({"public_key": key.public()}).to_string())).await;
    let device = enrolled["device_id"].as_u64().unwrap();
    let body = json!({"capabilities": {"wasm": true, "cores": 2, "memory_bytes": 0}, "max_tasks": 1}).to_string();
    let now = crate::now_ms();
    let mut limited = None;
    for i in 0..100 {
        let resp = pool.router().oneshot(signed(&key, device, "/v1/leases", &body, now + i)).await.unwrap();
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some((i, resp.headers().get("retry-after").cloned()));
            break;
        }
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let (after, retry) = limited.expect("a burst of 100 requests is limited");
    assert!(after >= 20, "the first {after} requests passed; the burst allows 20");
    assert!(retry.is_some(), "429 carries Retry-After");
}

#[tokio::test]
async fn the_pool_proves_it_holds_its_key() {
    let (pool, _dir) = pool();
    let nonce = "ab".repeat(32);
    let (status, body) = call(&pool, post("/v1/challenge", &format!(r#"{{"nonce":"{nonce}"}}"#))).await;
    assert_eq!(status, StatusCode::OK);
    let signed: idlemesh_protocol::Signed<idlemesh_protocol::api::PoolChallenge> =
        serde_json::from_value(body).unwrap();
    assert_eq!(signed.verify(&pool.public_key()).unwrap().nonce, nonce);
    assert!(signed.verify(&Keypair::generate().unwrap().public()).is_err(), "another key does not verify it");
    for bad in [r#"{"nonce":"short"}"#, r#"{"nonce":"zz"}"#, r#"{}"#] {
        let (status, body) = call(&pool, post("/v1/challenge", bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
}

#[tokio::test]
async fn oversized_bodies_are_refused_per_route_in_the_error_format() {
    let (pool, _dir) = pool();
    let big = vec![b' '; 100 << 10];
    // Declared too large: refused before reading; undeclared: cut off while reading.
    for declare in [true, false] {
        let mut req = Request::post("/v1/enroll").header("content-type", "application/json");
        if declare {
            req = req.header("content-length", big.len());
        }
        let (status, body) = call(&pool, req.body(Body::from(big.clone())).unwrap()).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "declared {declare}: {body}");
        assert_eq!(body["error"]["code"], "too_large");
        assert!(body["error"]["message"].as_str().unwrap().contains("65536 bytes"), "{body}");
    }
    // The same size is fine where kernels are uploaded (it fails on auth instead).
    let (status, _) = call(&pool, Request::post("/v1/blobs").body(Body::from(big)).unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A body announced over the limit is refused before any of it is read.
    for path in ["/v1/blobs", "/v1/jobs"] {
        let req = Request::post(path)
            .header("authorization", "Bearer op")
            .header("content-length", 1u64 << 40)
            .body(Body::empty())
            .unwrap();
        let (status, body) = call(&pool, req).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{path}: {body}");
    }
    // A method an endpoint does not take: the error format too.
    let (status, body) = call(&pool, Request::put("/v1/leases").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

/// Uploads from someone the pool does not know are refused without reading
/// them: the pool pulls at most a small body's worth from an endless one.
#[tokio::test]
async fn large_uploads_are_refused_before_reading_when_the_sender_is_unknown() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (pool, _dir) = pool();
    for (path, auth) in [
        ("/v1/blobs", None),
        ("/v1/jobs", Some("Bearer wrong")),
        ("/v1/results", None),
        ("/v1/results", Some("not a device")),
    ] {
        let pulled = Arc::new(AtomicUsize::new(0));
        let counter = pulled.clone();
        // 1 MiB chunks, forever.
        let endless = futures_util::stream::repeat_with(move || {
            counter.fetch_add(1 << 20, Ordering::SeqCst);
            Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b'x'; 1 << 20]))
        });
        let mut req = Request::post(path);
        if let Some(value) = auth {
            req = if path == "/v1/results" {
                req.header(auth::HEADER_DEVICE, value)
            } else {
                req.header("authorization", value)
            };
        }
        let (status, body) = call(&pool, req.body(Body::from_stream(endless)).unwrap()).await;
        assert!(matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN), "{path}: {status} {body}");
        assert!(body["error"]["code"].is_string(), "{body}");
        assert!(pulled.load(Ordering::SeqCst) <= 2 << 20, "{path}: read {} bytes", pulled.load(Ordering::SeqCst));
    }
}

#[test]
fn nul_characters_in_request_text_are_found_and_escaped_backslashes_are_not() {
    use super::has_nul_escape;
    assert!(has_nul_escape(br#"{"name": "Acme\u0000"}"#));
    assert!(has_nul_escape(br#"{"name": "\U0000"}"#));
    assert!(has_nul_escape(br#"{"name": "a\\\u0000"}"#), "an escaped backslash, then a NUL");
    assert!(!has_nul_escape(br#"{"name": "a\\u0000"}"#), "a backslash and the text u0000");
    assert!(!has_nul_escape(br#"{"name": "Acme \u0001"}"#));
}

#[tokio::test]
async fn metrics_count_what_this_replica_answered() {
    let (pool, _dir) = pool();
    call(&pool, post("/v1/enroll", "{not json")).await;
    call(&pool, Request::get("/v1/info").body(Body::empty()).unwrap()).await;
    let resp = pool.router().oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
    let text = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(text.contains("idlemesh_pool_replica_responses_total{class=\"4xx\"} 1\n"), "{text}");
    assert!(text.contains("idlemesh_pool_replica_responses_total{class=\"2xx\"} 1\n"), "{text}");
    assert!(text.contains("idlemesh_pool_replica_database_retries_total 0\n"), "{text}");
    assert!(text.contains("idlemesh_pool_jobs 0\n"), "{text}");
}
