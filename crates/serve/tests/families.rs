//! The model families through the server over real sockets, on the tiny
//! fixtures of crates/nn/tests/fixtures (no download needed): `/embed` of a
//! BGE-style (CLS pooling), an XLM-R, an MPNet and a ModernBERT model equal
//! the Python reference
//! embeddings, `/rerank` of a BERT cross-encoder equals the reference
//! logits (sigmoid, sorted best first, `raw_scores`, `return_text`),
//! `/predict` of a 3-label XLM-R classifier gives its `id2label` labels,
//! and what braid cannot honour is a 400 (or 404 with no reranker).

use braid_nn::{CrossEncoder, SentenceEmbedder};
use braid_runtime::Device;
use braid_serve::{AppState, ServeConfig};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../nn/tests/fixtures").join(name)
}

fn reference(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("reference.json")).unwrap()).unwrap()
}

struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    fn start(embedder: &str, reranker: Option<&str>) -> Server {
        let dev = Device::cpu().unwrap();
        let e = Arc::new(SentenceEmbedder::load(fixture(embedder), &dev).unwrap());
        let r = reranker.map(|r| Arc::new(CrossEncoder::load(fixture(r), &dev).unwrap()));
        let state = AppState::with_reranker(e, r, "cpu".into(), ServeConfig::default()).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            rt.block_on(braid_serve::serve(listener, state, async {
                let _ = rx.await;
            }))
        });
        Server { addr, stop: Some(tx), thread: Some(thread) }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn post(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let body = body.to_string();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let resp = String::from_utf8_lossy(&raw).into_owned();
    let status: u16 = resp.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status line in {resp:?}"));
    let text = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}")))
}

fn max_abs(a: &Value, b: &Value) -> f64 {
    let fa: Vec<f64> = a.as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap())).collect();
    let fb: Vec<f64> = b.as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap())).collect();
    assert_eq!(fa.len(), fb.len());
    fa.iter().zip(&fb).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[test]
fn embed_bge_xlm_roberta_mpnet_modernbert_equal_the_reference() {
    for name in ["bert_cls", "xlm_roberta", "mpnet", "modernbert"] {
        let srv = Server::start(name, None);
        let r = reference(name);
        for b in r["batches"].as_array().unwrap() {
            let (status, got) = post(srv.addr, "/embed", &serde_json::json!({ "inputs": b["sentences"] }));
            assert_eq!(status, 200, "{got}");
            let d = max_abs(&got, &b["embeddings"]);
            eprintln!("{name} via /embed: max abs diff {d:.2e}");
            assert!(d < 1e-4, "{name}: {d}");
        }
        let (status, got) = post(srv.addr, "/rerank", &serde_json::json!({ "query": "q", "texts": ["a"] }));
        assert_eq!(status, 404, "no reranker loaded: {got}");
    }
}

#[test]
fn rerank_equals_the_reference_sorted_best_first() {
    let srv = Server::start("bert_cls", Some("cross_bert"));
    let r = reference("cross_bert");
    let logits: Vec<f64> = r["pair_logits"].as_array().unwrap().iter().map(|l| l[0].as_f64().unwrap()).collect();
    for raw in [false, true] {
        let (status, got) = post(srv.addr, "/rerank", &serde_json::json!({ "query": r["query"], "texts": r["texts"], "raw_scores": raw, "return_text": true }));
        assert_eq!(status, 200, "{got}");
        let items = got.as_array().unwrap();
        assert_eq!(items.len(), logits.len());
        let mut prev = f64::INFINITY;
        for it in items {
            let i = it["index"].as_u64().unwrap() as usize;
            let score = it["score"].as_f64().unwrap();
            let want = if raw { logits[i] } else { 1.0 / (1.0 + (-logits[i]).exp()) };
            assert!((score - want).abs() < 1e-4, "text {i}: {score} vs {want}");
            assert!(score <= prev, "sorted best first");
            prev = score;
            assert_eq!(it["text"], r["texts"][i]);
        }
    }
    let (status, got) = post(srv.addr, "/rerank", &serde_json::json!({ "query": "q", "texts": ["a"], "truncate": false }));
    assert_eq!(status, 400, "{got}");
    let (status, got) = post(srv.addr, "/rerank", &serde_json::json!({ "query": "q", "texts": ["a"], "top_n": 3 }));
    assert_eq!(status, 400, "unknown fields are errors: {got}");
    let (status, got) = post(srv.addr, "/rerank", &serde_json::json!({ "query": "q", "texts": [] }));
    assert_eq!(status, 400, "{got}");
}

#[test]
fn predict_gives_the_labels_of_id2label() {
    let srv = Server::start("bert_cls", Some("cross_xlm_roberta"));
    let r = reference("cross_xlm_roberta");
    let text = r["single_texts"][2].clone();
    let want: Vec<f64> = r["single_logits"][2].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    let (status, got) = post(srv.addr, "/predict", &serde_json::json!({ "inputs": text, "raw_scores": true }));
    assert_eq!(status, 200, "{got}");
    let labels = ["negative", "neutral", "positive"];
    for it in got.as_array().unwrap() {
        let i = labels.iter().position(|l| *l == it["label"].as_str().unwrap()).unwrap();
        assert!((it["score"].as_f64().unwrap() - want[i]).abs() < 1e-4, "{it}");
    }
    let (status, got) = post(srv.addr, "/predict", &serde_json::json!({ "inputs": ["a", "b"] }));
    assert_eq!(status, 200, "{got}");
    let sum: f64 = got[0].as_array().unwrap().iter().map(|x| x["score"].as_f64().unwrap()).sum();
    assert!((sum - 1.0).abs() < 1e-5, "softmax scores sum to 1: {sum}");
    let (status, got) = post(srv.addr, "/rerank", &serde_json::json!({ "query": "q", "texts": ["a"] }));
    assert_eq!(status, 400, "a 3-label classifier is not a reranker: {got}");
}
