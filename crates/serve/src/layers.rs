//! The layers every route passes, outermost first: CORS
//! (`--cors-allow-origin`, tower-http), the request log and metrics (one
//! line per request, plain or JSON; `braid_requests_total` and the duration
//! histogram), the API key (`--api-key`: `Authorization: Bearer KEY`,
//! compared in constant time; every route but `/health` and CORS
//! preflights) and the payload limit (413 past `--payload-limit` bytes).
//! Owns those cross-cutting rules.

use crate::error::{ApiError, OpenAiError};
use crate::AppState;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::sync::Arc;
use std::time::Instant;
use subtle::ConstantTimeEq;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

pub(crate) fn apply(r: Router<Arc<AppState>>, st: &Arc<AppState>) -> Router<Arc<AppState>> {
    let mut r = r
        .layer(DefaultBodyLimit::max(st.config.payload_limit))
        .layer(middleware::from_fn_with_state(st.clone(), auth))
        .layer(middleware::from_fn_with_state(st.clone(), observe));
    let origins = &st.config.cors_allow_origin;
    if !origins.is_empty() {
        let allow = if origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
        };
        r = r.layer(CorsLayer::new().allow_origin(allow).allow_methods([Method::GET, Method::POST]).allow_headers(Any).expose_headers(Any));
    }
    r
}

fn is_openai(path: &str) -> bool {
    path == "/v1/embeddings" || path == "/embeddings"
}

/// `Authorization: Bearer KEY` on every route but `/health`.
async fn auth(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(key) = st.config.api_key.as_deref() else { return next.run(req).await };
    if req.uri().path() == "/health" || req.method() == Method::OPTIONS {
        return next.run(req).await;
    }
    let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
    // Constant time over the bytes (subtle); the length is not secret.
    let ok = given.is_some_and(|g| g.as_bytes().ct_eq(key.as_bytes()).into());
    if ok {
        return next.run(req).await;
    }
    let e = ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong API key: send Authorization: Bearer KEY".into());
    let mut resp = if is_openai(req.uri().path()) { OpenAiError(e).into_response() } else { e.into_response() };
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

/// Count, time and log each request.
async fn observe(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let t0 = Instant::now();
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let took = t0.elapsed().as_secs_f64();
    let status = resp.status().as_u16();
    st.metrics.request(&route, method.as_str(), status, took);
    if st.config.log_requests {
        let tokens = resp.headers().get("x-compute-tokens").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if st.config.json_log {
            eprintln!("{}", serde_json::json!({ "method": method.as_str(), "path": path, "route": route, "status": status, "ms": took * 1e3, "tokens": tokens }));
        } else {
            eprintln!("{} {} {} {:.2}ms{}", method, path, status, took * 1e3, tokens.map(|t| format!(" {t} tokens")).unwrap_or_default());
        }
    }
    resp
}
