//! Errors on the wire: the HTTP status for each braid [`Error`] and the two
//! JSON error bodies: TEI's `{"error", "error_type"}` (every route but the
//! OpenAI ones) and OpenAI's `{"error": {"message", "type", "param",
//! "code"}}` ([`OpenAiError`], on `/v1/embeddings` and `/embeddings`).
//! Overload is 429 with `Retry-After`. Owns that mapping, so every route
//! answers a failure the same way, and what a remote client is told: a
//! message about its own request, or a generic one for the server's own
//! failures (the full error, with internal type names and environment
//! variables, goes to the server log instead).

use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use braid_runtime::Error;
use serde_json::json;

/// Seconds a client is told to wait after a 429.
pub const RETRY_AFTER_S: u64 = 1;

/// The HTTP status for a braid error: bad input 400; a full queue 429; a
/// stopping server or device 503; a passed deadline 504; anything else 500
/// (an exhausted stream pool too: a misconfiguration, the workers do not
/// fit the pool, which retrying cannot help, so not a 503).
pub fn status_for(e: &Error) -> StatusCode {
    match e {
        Error::InvalidArgument(_) | Error::Shape { .. } => StatusCode::BAD_REQUEST,
        Error::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
        // A poisoned device (every device, with `cuda:all`: the replicas
        // take one that fails out of rotation) will not recover in this
        // process; another instance can serve.
        Error::ShutDown(_) | Error::DeviceShutDown(_) | Error::DevicePoisoned { .. } => StatusCode::SERVICE_UNAVAILABLE,
        Error::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A failed request: its status, message and (for OpenAI's body) the
/// request field at fault.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: String) -> ApiError {
        ApiError { status, message, param: None }
    }
    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message.into())
    }
    /// Name the request field at fault.
    pub fn param(mut self, p: &'static str) -> ApiError {
        self.param = Some(p);
        self
    }
    /// TEI's `error_type`.
    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE | StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => "validation",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::TOO_MANY_REQUESTS => "overloaded",
            StatusCode::SERVICE_UNAVAILABLE => "unhealthy",
            StatusCode::GATEWAY_TIMEOUT => "timeout",
            _ => "backend",
        }
    }
    fn with_headers(&self, mut r: Response) -> Response {
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
        }
        r
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError::new(status_for(&e), client_message(&e))
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
        Error::DevicePoisoned { .. } => {
            eprintln!("serve: error: {e}");
            "no device of this server can run the model (see /health); retry on another instance".into()
        }
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
        let r = (self.status, Json(json!({ "error": self.message, "error_type": self.kind() }))).into_response();
        self.with_headers(r)
    }
}

/// The same failure in OpenAI's body.
#[derive(Debug)]
pub struct OpenAiError(pub ApiError);

impl<E: Into<ApiError>> From<E> for OpenAiError {
    fn from(e: E) -> Self {
        OpenAiError(e.into())
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let (kind, code) = match e.status {
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE | StatusCode::NOT_FOUND => ("invalid_request_error", None),
            StatusCode::UNAUTHORIZED => ("invalid_request_error", Some("invalid_api_key")),
            StatusCode::TOO_MANY_REQUESTS => ("rate_limit_error", Some("rate_limit_exceeded")),
            StatusCode::SERVICE_UNAVAILABLE => ("server_error", Some("service_unavailable")),
            StatusCode::GATEWAY_TIMEOUT => ("server_error", Some("timeout")),
            _ => ("server_error", None),
        };
        let r = (e.status, Json(json!({ "error": { "message": e.message, "type": kind, "param": e.param, "code": code } }))).into_response();
        e.with_headers(r)
    }
}

/// A body axum could not read as the expected JSON. The rejection's own
/// status where it is 413 (body over the limit); 400 otherwise (axum says
/// 415 or 422 for some; one status for "fix your body" is simpler for
/// clients).
pub(crate) fn body_error(r: JsonRejection, expected: &str) -> ApiError {
    let status = if r.status() == StatusCode::PAYLOAD_TOO_LARGE { StatusCode::PAYLOAD_TOO_LARGE } else { StatusCode::BAD_REQUEST };
    ApiError::new(status, format!("expected {expected}: {}", strip_rust_names(&r.body_text())))
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
