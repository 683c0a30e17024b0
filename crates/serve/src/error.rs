//! Errors on the wire: the HTTP status for each braid [`Error`] and the JSON
//! error body (`{"error", "error_type"}`). Owns that mapping, so every route
//! answers a failure the same way, and what a remote client is told: a
//! message about its own request, or a generic one for the server's own
//! failures (the full error, with internal type names and environment
//! variables, goes to the server log instead).

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
        Error::Overloaded { .. } | Error::ShutDown(_) | Error::DeviceShutDown(_) => StatusCode::SERVICE_UNAVAILABLE,
        // A misconfiguration (the workers do not fit the stream pool), not
        // load: retrying cannot help, so not a 503.
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
        ApiError(status_for(&e), client_message(&e), kind)
    }
}

/// What a remote client is told about `e`. Errors about the request itself
/// keep their message; the server's own failures get a generic one and
/// their full text is logged.
pub fn client_message(e: &Error) -> String {
    match e {
        Error::InvalidArgument(m) => m.clone(),
        Error::Shape { .. } => e.to_string(),
        Error::Overloaded { capacity } => format!("server overloaded: {capacity} texts already waiting; retry later"),
        Error::ShutDown(_) | Error::DeviceShutDown(_) => "the server is shutting down; retry on another instance or later".into(),
        Error::Timeout(d) => format!("the text was not started within its deadline ({} ms)", d.as_millis()),
        Error::PoolExhausted { .. } => {
            eprintln!("serve: error: {e}");
            "server misconfigured: its batcher has more workers (--workers) than the device's stream pool has worker streams; the operator must lower --workers or enlarge the pool (details in the server log)".into()
        }
        _ => {
            eprintln!("serve: error: {e}");
            "internal server error (details in the server log)".into()
        }
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
    ApiError(status, format!("expected {expected}: {}", strip_rust_names(&r.body_text())), "validation")
}

/// serde's messages name Rust types ("untagged enum Inputs", "struct
/// EmbedRequest"); a client knows only the JSON shape it was told.
fn strip_rust_names(m: &str) -> String {
    let mut out = m.replace("Failed to deserialize the JSON body into the target type: ", "");
    for kind in ["untagged enum ", "enum ", "struct "] {
        while let Some(i) = out.find(kind) {
            let end = out[i + kind.len()..].find(|c: char| !(c.is_alphanumeric() || c == '_')).map(|j| i + kind.len() + j).unwrap_or(out.len());
            out.replace_range(i..end, "the expected shape");
        }
    }
    out
}


