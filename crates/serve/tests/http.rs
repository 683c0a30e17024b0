//! braid-serve over real sockets: embeddings equal the model's own (within
//! 1e-5 relative), on `/embed` and the OpenAI-shaped `/v1/embeddings`, texts from 16 concurrent connections each get their own
//! embedding and share batches, bad requests get clear JSON errors with the
//! right status, a default prompt is prepended, a passed deadline is a 504
//! on both error shapes, and graceful shutdown answers what it accepted.
//! The real client libraries are driven by `tests/clients/test_clients.py`.
//! Needs
//! all-MiniLM-L6-v2 (scripts/get-minilm.sh); without it each test prints
//! SKIPPED and returns. Runs on the CPU device.

use braid_nn::SentenceEmbedder;
use braid_runtime::{Device, Error};
use braid_serve::{status_for, AppState, ServeConfig};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

fn embedder(test: &str) -> Option<Arc<SentenceEmbedder>> {
    let dir = std::env::var_os("BRAID_MINILM_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2"));
    if !dir.join("model.safetensors").exists() {
        eprintln!("{test}: SKIPPED (model not found at models/all-MiniLM-L6-v2: run scripts/get-minilm.sh)");
        return None;
    }
    Some(Arc::new(SentenceEmbedder::load(&dir, &Device::cpu().unwrap()).unwrap()))
}

/// A server on an ephemeral port, on its own runtime thread; dropping the
/// returned sender shuts it down (the join handle then returns).
struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    state: Arc<AppState>,
}

impl Server {
    fn start(e: Arc<SentenceEmbedder>, config: ServeConfig) -> Server {
        let state = AppState::new(e, "cpu".into(), config).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            rt.block_on(braid_serve::serve(listener, st, async {
                let _ = rx.await;
            }))
        });
        Server { addr, stop: Some(tx), thread: Some(thread), state }
    }

    fn stop(&mut self) -> std::io::Result<()> {
        drop(self.stop.take());
        self.thread.take().map(|t| t.join().unwrap()).unwrap_or(Ok(()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// One HTTP/1.1 request (Connection: close); the status and the body.
fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let body = body.unwrap_or("");
    let ct = if body.is_empty() { "" } else { "Content-Type: application/json\r\n" };
    // A server may answer (413) and close before reading all of a large
    // body: a failed write is not the test's failure; the answer is.
    let _ = write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{ct}Content-Length: {}\r\n\r\n{body}", body.len());
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let resp = String::from_utf8_lossy(&raw).into_owned();
    let status: u16 = resp.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status line in {resp:?}"));
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    assert!(num.is_finite() && den > 0.0, "NaN or zero embedding");
    (num / den).sqrt()
}

const TEXTS: [&str; 4] = ["The cat sat on the mat.", "A quick brown fox jumps over the lazy dog near the river bank.", "braid", "Many threads, one GPU: every thread gets its own stream."];

#[test]
fn embeddings_equal_the_models_own() {
    let Some(e) = embedder("embeddings_equal_the_models_own") else { return };
    let want = e.embed(&TEXTS).unwrap();
    let mut srv = Server::start(e.clone(), ServeConfig::default());
    let body = serde_json::json!({ "inputs": TEXTS }).to_string();
    let (status, resp) = request(srv.addr, "POST", "/embed", Some(&body));
    assert_eq!(status, 200, "{resp}");
    let got: Vec<Vec<f32>> = serde_json::from_str(&resp).unwrap();
    assert_eq!(got.len(), TEXTS.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let err = rel_err(g, w);
        assert!(err < 1e-5, "text {i}: rel err {err:e}");
    }
    // A single string is one input.
    let (status, resp) = request(srv.addr, "POST", "/embed", Some(r#"{"inputs": "braid"}"#));
    assert_eq!(status, 200, "{resp}");
    let one: Vec<Vec<f32>> = serde_json::from_str(&resp).unwrap();
    assert!(rel_err(&one[0], &want[2]) < 1e-5);
    let (status, resp) = request(srv.addr, "GET", "/info", None);
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(info["dim"], 384);
    srv.stop().unwrap();
}

#[test]
fn openai_shaped_endpoint() {
    let Some(e) = embedder("openai_shaped_endpoint") else { return };
    let want = e.embed(&TEXTS[..2]).unwrap();
    let tokens: usize = TEXTS[..2].iter().map(|t| e.tokenizer().encode(t).unwrap().len()).sum();
    let mut srv = Server::start(e, ServeConfig::default());
    let body = serde_json::json!({ "input": &TEXTS[..2], "model": "all-MiniLM-L6-v2" }).to_string();
    let (status, resp) = request(srv.addr, "POST", "/v1/embeddings", Some(&body));
    assert_eq!(status, 200, "{resp}");
    let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "all-MiniLM-L6-v2");
    assert_eq!(v["usage"]["prompt_tokens"], tokens);
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["index"], i);
        let got: Vec<f32> = serde_json::from_value(d["embedding"].clone()).unwrap();
        assert!(rel_err(&got, &want[i]) < 1e-5);
    }
    // An encoding braid does not have: 400 in OpenAI's error body, naming
    // the allowed values and the field.
    let (status, resp) = request(srv.addr, "POST", "/v1/embeddings", Some(r#"{"input": "x", "encoding_format": "int8"}"#));
    assert_eq!(status, 400, "{resp}");
    let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(v["error"]["param"], "encoding_format", "{resp}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{resp}");
    assert!(v["error"]["message"].as_str().unwrap().contains("base64"), "{resp}");
    srv.stop().unwrap();
}

#[test]
fn concurrent_clients_get_their_own_embeddings_and_share_batches() {
    let Some(e) = embedder("concurrent_clients_get_their_own_embeddings_and_share_batches") else { return };
    let want = e.embed(&TEXTS).unwrap();
    let config = ServeConfig { batcher: braid_batch::BatcherConfig { max_batch_size: 16, max_queue_delay: Duration::from_millis(20), workers: 2, bucket_by_length: false, ..Default::default() }, max_inputs: 8, ..ServeConfig::default() };
    let mut srv = Server::start(e, config);
    let addr = srv.addr;
    std::thread::scope(|s| {
        for c in 0..16 {
            let want = &want;
            s.spawn(move || {
                for r in 0..4 {
                    let i = (c + r) % TEXTS.len();
                    let body = serde_json::json!({ "inputs": [TEXTS[i]] }).to_string();
                    let (status, resp) = request(addr, "POST", "/embed", Some(&body));
                    assert_eq!(status, 200, "{resp}");
                    let got: Vec<Vec<f32>> = serde_json::from_str(&resp).unwrap();
                    let err = rel_err(&got[0], &want[i]);
                    assert!(err < 1e-5, "client {c} request {r}: rel err {err:e}");
                }
            });
        }
    });
    let (status, resp) = request(addr, "GET", "/metrics/json", None);
    assert_eq!(status, 200);
    let m: serde_json::Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(m["completed"], 64, "{m}");
    assert_eq!(m["submitted"], 64, "{m}");
    let mean = m["mean_batch_size"].as_f64().unwrap();
    eprintln!("16 clients x 4 requests: {} batches, mean batch {mean:.2}", m["batches"]);
    assert!(mean > 1.0, "16 concurrent clients never shared a batch: {m}");
    srv.stop().unwrap();
}

#[test]
fn bad_requests_get_clear_errors() {
    let Some(e) = embedder("bad_requests_get_clear_errors") else { return };
    let mut srv = Server::start(e, ServeConfig { max_inputs: 2, ..ServeConfig::default() });
    let a = srv.addr;
    for (method, path, body, want) in [
        ("POST", "/embed", Some("not json"), 400),
        ("POST", "/embed", Some(r#"{"input": "x"}"#), 400),
        ("POST", "/embed", Some(r#"{"inputs": 7}"#), 400),
        ("POST", "/embed", Some(r#"{"inputs": []}"#), 400),
        ("POST", "/embed", Some(r#"{"inputs": ["a", "b", "c"]}"#), 413),
        ("GET", "/nowhere", None, 404),
    ] {
        let (status, resp) = request(a, method, path, body);
        check(status, want, &resp, method, path, body);
    }
    // A body over the payload limit (2 MiB by default): 413, still JSON.
    let huge = serde_json::json!({ "inputs": ["x".repeat(3 << 20)] }).to_string();
    let (status, resp) = request(a, "POST", "/embed", Some(&huge));
    check(status, 413, &resp, "POST", "/embed", Some("<3 MB>"));
    fn check(status: u16, want: u16, resp: &str, method: &str, path: &str, body: Option<&str>) {
        assert_eq!(status, want, "{method} {path} {body:?}: {resp}");
        let v: serde_json::Value = serde_json::from_str(&resp).unwrap_or_else(|_| panic!("error body is not JSON: {resp}"));
        assert!(v["error"].as_str().is_some_and(|m| !m.is_empty()), "{resp}");
    }
    let (status, _) = request(a, "GET", "/health", None);
    assert_eq!(status, 200, "the server still answers after bad requests");
    srv.stop().unwrap();
}

#[test]
fn errors_map_to_statuses() {
    assert_eq!(status_for(&Error::Overloaded { capacity: 1 }).as_u16(), 429);
    assert_eq!(status_for(&Error::ShutDown("x".into())).as_u16(), 503);
    assert_eq!(status_for(&Error::Timeout(Duration::from_millis(5))).as_u16(), 504);
    assert_eq!(status_for(&Error::InvalidArgument("x".into())).as_u16(), 400);
    assert_eq!(status_for(&Error::Model("x".into())).as_u16(), 500);
}

#[test]
fn graceful_shutdown_answers_what_it_accepted() {
    let Some(e) = embedder("graceful_shutdown_answers_what_it_accepted") else { return };
    // A long gathering delay (the `Wait` policy) keeps the accepted texts
    // waiting in the batcher while the server is told to stop.
    let config = ServeConfig { batcher: braid_batch::BatcherConfig { max_batch_size: 64, policy: braid_batch::BatchPolicy::Wait, max_queue_delay: Duration::from_millis(500), ..Default::default() }, max_inputs: 8, ..ServeConfig::default() };
    let mut srv = Server::start(e, config);
    let addr = srv.addr;
    let clients: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let body = serde_json::json!({ "inputs": [TEXTS[i % 4], TEXTS[(i + 1) % 4]] }).to_string();
                request(addr, "POST", "/embed", Some(&body))
            })
        })
        .collect();
    // Every request accepted (its texts submitted to the batcher), then stop.
    let t0 = std::time::Instant::now();
    while srv.state.stats().submitted < 16 {
        assert!(t0.elapsed() < Duration::from_secs(60), "requests never reached the batcher");
        std::thread::sleep(Duration::from_millis(2));
    }
    let answered_before_stop = srv.state.stats().completed;
    srv.stop().unwrap();
    eprintln!("graceful shutdown: 16 texts accepted, {answered_before_stop} answered before the stop");
    for c in clients {
        let (status, resp) = c.join().unwrap();
        assert_eq!(status, 200, "{resp}");
        let got: Vec<Vec<f32>> = serde_json::from_str(&resp).unwrap();
        assert_eq!(got.len(), 2);
    }
    let st = srv.state.clone();
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(), "still listening after shutdown");
    // The batcher was drained and refuses new work.
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    assert!(matches!(rt.block_on(st.embed(vec!["late".to_string()])), Err(Error::ShutDown(_))));
}

/// `default_prompt` is prepended to every text (the embedding equals the
/// model's own for prompt + text), and a request naming a prompt the model
/// does not have is a 400; a text whose deadline passes before its batch
/// starts is a 504 (JSON body), and the server goes on serving.
#[test]
fn default_prompt_is_prepended_and_a_passed_deadline_is_504() {
    let Some(e) = embedder("default_prompt_is_prepended_and_a_passed_deadline_is_504") else { return };
    let want = e.embed(&["query: braid"]).unwrap();
    let plain = e.embed(&["braid"]).unwrap();
    let mut srv = Server::start(e.clone(), ServeConfig { default_prompt: Some("query: ".into()), ..ServeConfig::default() });
    let (status, resp) = request(srv.addr, "POST", "/embed", Some(r#"{"inputs": "braid"}"#));
    assert_eq!(status, 200, "{resp}");
    let got: Vec<Vec<f32>> = serde_json::from_str(&resp).unwrap();
    assert!(rel_err(&got[0], &want[0]) < 1e-5, "prompt not prepended");
    assert!(rel_err(&got[0], &plain[0]) > 1e-3, "the prompt changed nothing");
    let (status, resp) = request(srv.addr, "POST", "/embed", Some(r#"{"inputs": "braid", "prompt_name": "nope"}"#));
    assert_eq!(status, 400, "{resp}");
    srv.stop().unwrap();

    let config = ServeConfig { batcher: braid_batch::BatcherConfig { default_deadline: Some(Duration::from_nanos(1)), max_queue_delay: Duration::from_millis(5), ..Default::default() }, ..ServeConfig::default() };
    let mut srv = Server::start(e, config);
    let (status, resp) = request(srv.addr, "POST", "/embed", Some(r#"{"inputs": ["a", "b"]}"#));
    assert_eq!(status, 504, "{resp}");
    let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(v["error_type"], "timeout", "{resp}");
    let (status, resp) = request(srv.addr, "POST", "/v1/embeddings", Some(r#"{"input": "a"}"#));
    assert_eq!(status, 504, "{resp}");
    let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(v["error"]["code"], "timeout", "{resp}");
    let (status, _) = request(srv.addr, "GET", "/health", None);
    assert_eq!(status, 200, "the probe does not go through the queue");
    srv.stop().unwrap();
}
