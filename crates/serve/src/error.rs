//! Errors on the wire: the HTTP status for each braid [`Error`] and the JSON
//! error body (`{"error", "error_type"}`). Owns that mapping, so every route
//! answers a failure the same way.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use braid_runtime::Error;
use serde_json::json;

/// The HTTP status for a braid error.
pub fn status_for(e: &Error) -> StatusCode {
    match e {
        Error::InvalidArgument(_) | Error::Shape { .. } => StatusCode::BAD_REQUEST,
        Error::Overloaded { .. } | Error::ShutDown(_) | Error::DeviceShutDown(_) | Error::PoolExhausted { .. } => StatusCode::SERVICE_UNAVAILABLE,
        Error::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A JSON error response.
pub(crate) struct ApiError(pub(crate) StatusCode, pub(crate) String, pub(crate) &'static str);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let kind = match status_for(&e) {
            StatusCode::BAD_REQUEST => "validation",
            StatusCode::SERVICE_UNAVAILABLE => "overloaded",
            StatusCode::GATEWAY_TIMEOUT => "timeout",
            _ => "backend",
        };
        ApiError(status_for(&e), e.to_string(), kind)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1, "error_type": self.2 }))).into_response()
    }
}

/// A body axum could not read as the expected JSON. The rejection's own
/// status where it is 413 (body over the limit); 400 otherwise (axum says
/// 415 or 422 for some; one status for "fix your body" is simpler for
/// clients).
pub(crate) fn body_error(r: JsonRejection, expected: &str) -> ApiError {
    let status = if r.status() == StatusCode::PAYLOAD_TOO_LARGE { StatusCode::PAYLOAD_TOO_LARGE } else { StatusCode::BAD_REQUEST };
    ApiError(status, format!("expected {expected}: {}", r.body_text()), "validation")
}


