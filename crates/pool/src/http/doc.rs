//! The parts of the OpenAPI document that are not a handler's own: the API's
//! description, its two ways to authenticate, and the error answers shared by
//! many operations. Each operation is described on its handler in `http.rs`.

use idlemesh_protocol::api::ErrorBody;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Idlemesh pool API",
        version = "1.0.0",
        description = "The reference pool's HTTP API (DESIGN §5), generated from the server's code. \
            Errors are {\"error\": {\"code\", \"message\"}}. Device requests carry x-idlemesh-device, \
            x-idlemesh-timestamp (unix ms) and x-idlemesh-signature: an ed25519 signature (hex) by the \
            enrolled device key over 'idlemesh-request-v1\\n<device>\\n<METHOD>\\n<path>\\n<sha256(body)>\\n<timestamp>'; \
            stale timestamps (over 5 minutes off) and reused signatures are refused. Operator requests carry \
            Authorization: Bearer <operator token>."
    ),
    modifiers(&SecuritySchemes)
)]
pub(super) struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "operator",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "device",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "x-idlemesh-signature",
                "With x-idlemesh-device and x-idlemesh-timestamp; see info.description.",
            ))),
        );
    }
}

/// `GET /v1/health`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct Health {
    pub status: HealthStatus,
    /// `ok`, or why the database cannot be reached.
    pub database: String,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum HealthStatus {
    Ok,
    /// The process is up but cannot reach its database: take it out of the load balancer.
    Unavailable,
}

#[allow(dead_code, reason = "described in the document only: handlers answer with ApiError")]
#[derive(IntoResponses)]
#[response(status = 400, description = "Malformed request or bad input; the message names what is wrong")]
pub(super) struct BadRequest(#[to_schema] ErrorBody);

#[allow(dead_code, reason = "described in the document only: handlers answer with ApiError")]
#[derive(IntoResponses)]
#[response(status = 401, description = "Missing, stale, forged or replayed authentication")]
pub(super) struct Unauthorized(#[to_schema] ErrorBody);

#[allow(dead_code, reason = "described in the document only: handlers answer with ApiError")]
#[derive(IntoResponses)]
#[response(status = 403, description = "Authenticated but not allowed (or a refused enrollment token)")]
pub(super) struct Forbidden(#[to_schema] ErrorBody);

#[allow(dead_code, reason = "described in the document only: handlers answer with ApiError")]
#[derive(IntoResponses)]
#[response(status = 404, description = "No such resource")]
pub(super) struct NotFound(#[to_schema] ErrorBody);

#[allow(dead_code, reason = "described in the document only: handlers answer with ApiError")]
#[derive(IntoResponses)]
#[response(
    status = 409,
    description = "Conflicts with what the pool holds: a stale lease token, a result already recorded, a name taken, \
        a device already in another organisation, or an output not ready yet"
)]
pub(super) struct Conflict(#[to_schema] ErrorBody);

#[allow(dead_code, reason = "described in the document only: handlers answer with ApiError")]
#[derive(IntoResponses)]
#[response(status = 413, description = "The request body is over this route's size limit")]
pub(super) struct TooLarge(#[to_schema] ErrorBody);
