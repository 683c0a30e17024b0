//! braid-serve under hostile and careless traffic (issue #16), over real
//! sockets on 127.0.0.1: a half-sent request cannot hold up shutdown,
//! silent/slowloris/idle connections are closed by the header-read and
//! keep-alive timeouts, connections above the cap get a fast 503, a long
//! text is cut before tokenizing and tokenizations are bounded, workers that
//! do not fit the stream pool fail at start-up, the device cache keeps to
//! its budget, half-closed clients are answered, foreign Host headers are
//! refused on a loopback server without a key, and every error (405, 414,
//! 431, 400) has a JSON body without internal names. Every wait is bounded
//! (a hang fails the test; no duration is asserted). Needs all-MiniLM-L6-v2
//! (scripts/get-minilm.sh); without it each test prints SKIPPED and returns.
//! Runs on the CPU device.

use braid_nn::SentenceEmbedder;
use braid_runtime::{Device, DeviceOptions, Error, PoolConfig};
use braid_serve::{client_message, status_for, AppState, ConnConfig, ServeConfig};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn model_dir() -> PathBuf {
    std::env::var_os("BRAID_MINILM_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2"))
}

fn embedder_on(test: &str, device: &Device) -> Option<Arc<SentenceEmbedder>> {
    let dir = model_dir();
    if !dir.join("model.safetensors").exists() {
        eprintln!("{test}: SKIPPED (model not found at models/all-MiniLM-L6-v2: run scripts/get-minilm.sh)");
        return None;
    }
    let e = SentenceEmbedder::load(&dir, device).unwrap();
    // Loading bound this thread to a stream; the server's workers need it.
    device.pool().release_current();
    Some(Arc::new(e))
}

fn embedder(test: &str) -> Option<Arc<SentenceEmbedder>> {
    embedder_on(test, &Device::cpu().unwrap())
}

/// A server on an ephemeral port on its own runtime thread.
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
            let r = rt.block_on(braid_serve::serve(listener, st, async {
                let _ = rx.await;
            }));
            rt.shutdown_background();
            r
        });
        Server { addr, stop: Some(tx), thread: Some(thread), state }
    }

    /// Signal shutdown and wait (at most `bound`) for `serve` to return.
    fn stop_within(&mut self, bound: Duration) -> bool {
        drop(self.stop.take());
        let Some(t) = self.thread.take() else { return true };
        let t0 = Instant::now();
        while !t.is_finished() {
            if t0.elapsed() > bound {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        t.join().unwrap().unwrap();
        true
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.stop.take());
        // A server that would not stop is leaked (the test already failed).
    }
}

fn conn_config(header: f64, keep_alive: f64, max_connections: usize, shutdown: f64) -> ConnConfig {
    ConnConfig { header_read_timeout: Duration::from_secs_f64(header), keep_alive_timeout: Duration::from_secs_f64(keep_alive), max_connections, shutdown_timeout: Duration::from_secs_f64(shutdown) }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

/// Read one response (status, headers, body) from a keep-alive stream, by
/// its Content-Length.
fn read_response(s: &mut TcpStream) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).unwrap();
        assert!(n > 0, "connection closed mid-response: {:?}", String::from_utf8_lossy(&buf));
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
    let len: usize = head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())).unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (status, head, String::from_utf8(body).unwrap())
}

/// Send raw bytes, read until the server closes; the status and body.
fn raw(addr: SocketAddr, bytes: &[u8]) -> (u16, String) {
    let mut s = connect(addr);
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let resp = String::from_utf8_lossy(&out).into_owned();
    let status = resp.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status line in {resp:?}"));
    (status, resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

fn request(addr: SocketAddr, method: &str, path: &str, host: &str, body: &str) -> (u16, String) {
    let ct = if body.is_empty() { "" } else { "Content-Type: application/json\r\n" };
    raw(addr, format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{ct}Content-Length: {}\r\n\r\n{body}", body.len()).as_bytes())
}

/// Whether the server closes `s` (EOF or reset) within `bound`.
fn closed_within(s: &mut TcpStream, bound: Duration) -> bool {
    s.set_read_timeout(Some(bound)).unwrap();
    let mut b = [0u8; 1024];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return false,
            Err(_) => return true,
        }
    }
}

fn assert_json_error(status: u16, want: u16, body: &str) {
    assert_eq!(status, want, "{body}");
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{status}: error body is not JSON: {body:?}"));
    assert!(v["error"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(v["error_type"].as_str().is_some(), "{body}");
}

// Item 1: a half-sent request does not hold shutdown; shutdown is bounded.
#[test]
fn half_sent_request_does_not_hold_up_shutdown() {
    let Some(e) = embedder("half_sent_request_does_not_hold_up_shutdown") else { return };
    // A header timeout far longer than the shutdown timeout: only the
    // shutdown bound can end that connection.
    let mut srv = Server::start(e, ServeConfig { conn: conn_config(600.0, 600.0, 64, 0.5), ..ServeConfig::default() });
    let mut half = connect(srv.addr);
    half.write_all(b"GET /health HTTP/1.1\r\nHo").unwrap();
    // The server has read the bytes once /health answers on another connection.
    assert_eq!(request(srv.addr, "GET", "/health", "localhost", "").0, 200);
    std::thread::sleep(Duration::from_millis(100));
    assert!(srv.stop_within(Duration::from_secs(30)), "serve did not return with a half-sent request open (shutdown timeout 0.5 s)");
    assert!(closed_within(&mut half, Duration::from_secs(10)), "the half-sent connection is still open after shutdown");
}

// Item 2: silent sockets and slowloris are closed by the header-read
// timeout; a keep-alive connection is not (it has its own timeout).
#[test]
fn header_read_timeout_closes_silent_and_slowloris_connections() {
    let Some(e) = embedder("header_read_timeout_closes_silent_and_slowloris_connections") else { return };
    let srv = Server::start(e, ServeConfig { conn: conn_config(0.5, 600.0, 64, 5.0), ..ServeConfig::default() });
    let mut silent = connect(srv.addr);
    assert!(closed_within(&mut silent, Duration::from_secs(20)), "a silent connection stayed open");
    // Slowloris: one header byte every 100 ms, never finishing the head.
    let mut slow = connect(srv.addr);
    let slow_req = b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let t0 = Instant::now();
    let mut cut = false;
    for b in slow_req.iter() {
        if slow.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if t0.elapsed() > Duration::from_secs(3) && closed_within(&mut slow, Duration::from_millis(1)) {
            cut = true;
            break;
        }
    }
    assert!(cut || closed_within(&mut slow, Duration::from_secs(10)), "a slowloris connection stayed open");
    // A keep-alive client idle longer than the header timeout between
    // requests is still served (the keep-alive timeout is 600 s here).
    let mut ka = connect(srv.addr);
    ka.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut ka).0, 200);
    std::thread::sleep(Duration::from_millis(1500));
    ka.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut ka).0, 200, "keep-alive connection closed by the header timeout");
}

// Item 2: an idle keep-alive connection is closed by its own timeout.
#[test]
fn idle_keep_alive_connections_are_closed() {
    let Some(e) = embedder("idle_keep_alive_connections_are_closed") else { return };
    let srv = Server::start(e, ServeConfig { conn: conn_config(600.0, 0.5, 64, 5.0), ..ServeConfig::default() });
    let mut ka = connect(srv.addr);
    ka.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut ka).0, 200);
    assert!(closed_within(&mut ka, Duration::from_secs(20)), "an idle keep-alive connection stayed open");
}

// Item 2: above the cap a new connection gets a 503 at once, without
// sending anything; when connections close, service resumes.
#[test]
fn connections_above_the_cap_get_a_fast_503() {
    let Some(e) = embedder("connections_above_the_cap_get_a_fast_503") else { return };
    let srv = Server::start(e, ServeConfig { conn: conn_config(600.0, 600.0, 4, 5.0), ..ServeConfig::default() });
    let held: Vec<TcpStream> = (0..4).map(|_| connect(srv.addr)).collect();
    // Let the server accept all four.
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = connect(srv.addr);
    let mut out = Vec::new();
    let _ = extra.read_to_end(&mut out);
    let resp = String::from_utf8_lossy(&out);
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no answer above the cap: {resp:?}"));
    assert!(head.starts_with("HTTP/1.1 503"), "{resp}");
    assert_json_error(503, 503, body);
    drop(held);
    let t0 = Instant::now();
    loop {
        let (status, _) = request(srv.addr, "GET", "/health", "localhost", "");
        if status == 200 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "service did not resume after the connections closed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// Item 3: a 1.9 MB text is cut before it is tokenized; its embedding is the
// model's (which keeps only the first 256 tokens); tokenizations are bounded.
#[test]
fn long_texts_are_cut_before_tokenizing_and_tokenizing_is_bounded() {
    let Some(e) = embedder("long_texts_are_cut_before_tokenizing_and_tokenizing_is_bounded") else { return };
    let want = e.embed(&["a ".repeat(600).trim_end()]).unwrap();
    let srv = Server::start(e, ServeConfig { tokenize_concurrency: 2, ..ServeConfig::default() });
    let long = "a ".repeat(950_000);
    let body = serde_json::json!({ "inputs": [long] }).to_string();
    assert!(body.len() < 2_000_000);
    let addr = srv.addr;
    let results: Vec<(u16, String)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8).map(|_| s.spawn(|| request(addr, "POST", "/embed", "localhost", &body))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (status, resp) in results {
        assert_eq!(status, 200, "{resp}");
        let got: Vec<Vec<f32>> = serde_json::from_str(&resp).unwrap();
        let num: f64 = got[0].iter().zip(&want[0]).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
        let den: f64 = want[0].iter().map(|b| (*b as f64).powi(2)).sum();
        assert!((num / den).sqrt() < 1e-5, "the cut text's embedding differs from the model's");
    }
    let t = srv.state.tokenize_stats();
    eprintln!("8 texts of 1.9 MB: {} bytes in, {} bytes tokenized, at most {} tokenizations at once", t.bytes_in, t.bytes_tokenized, t.peak_running);
    assert_eq!(t.texts, 8);
    assert!(t.bytes_tokenized * 100 < t.bytes_in, "tokenized {} of {} bytes: the texts were not cut", t.bytes_tokenized, t.bytes_in);
    assert!(t.peak_running <= 2, "{} tokenizations at once with a bound of 2", t.peak_running);
}

// Item 5: workers that do not fit the stream pool are a start-up error
// naming the setting; workers that fit, run (the loading thread's stream
// is given back).
#[test]
fn workers_must_fit_the_stream_pool() {
    let device = Device::cpu_with(DeviceOptions { pool: PoolConfig { size: 2, ..PoolConfig::default() }, ..DeviceOptions::default() }).unwrap();
    let Some(e) = embedder_on("workers_must_fit_the_stream_pool", &device) else { return };
    let two = ServeConfig { batcher: braid_batch::BatcherConfig { workers: 2, ..ServeConfig::default().batcher }, ..ServeConfig::default() };
    let err = AppState::new(e.clone(), "cpu".into(), two).err().expect("2 workers on a 1-worker-stream pool must not start");
    let msg = err.to_string();
    assert!(msg.contains("--workers") && msg.contains("BRAID_STREAM_POOL_SIZE"), "{msg}");
    let one = ServeConfig { batcher: braid_batch::BatcherConfig { workers: 1, ..ServeConfig::default().batcher }, ..ServeConfig::default() };
    let srv = Server::start(e, one);
    let (status, resp) = request(srv.addr, "POST", "/embed", "localhost", r#"{"inputs": ["fits"]}"#);
    assert_eq!(status, 200, "{resp}");
    // At run time, an exhausted pool is a permanent 500, not a 503.
    let pe = Error::PoolExhausted { size: 2, workers: 1, max: 65, waited: String::new() };
    assert_eq!(status_for(&pe).as_u16(), 500);
}

// Item 7: the device cache keeps to its budget under varied load.
#[test]
fn device_cache_keeps_to_its_budget() {
    let probe = Device::cpu().unwrap();
    let Some(e0) = embedder_on("device_cache_keeps_to_its_budget", &probe) else { return };
    let weights = probe.memory_stats().reserved;
    drop(e0);
    let budget = weights + (8 << 20);
    let device = Device::cpu_with(DeviceOptions { high_watermark: Some(budget), ..DeviceOptions::from_env().unwrap() }).unwrap();
    let e = embedder_on("device_cache_keeps_to_its_budget", &device).unwrap();
    let srv = Server::start(e, ServeConfig::default());
    let addr = srv.addr;
    std::thread::scope(|s| {
        for c in 0..4 {
            s.spawn(move || {
                for r in 0..4 {
                    let words = 1 + (c * 37 + r * 53) % 250;
                    let n = 1 + (c + r) % 8;
                    let texts: Vec<String> = (0..n).map(|i| "word ".repeat(words + i * 7)).collect();
                    let (status, resp) = request(addr, "POST", "/embed", "localhost", &serde_json::json!({ "inputs": texts }).to_string());
                    assert_eq!(status, 200, "{resp}");
                }
            });
        }
    });
    let m = device.memory_stats();
    eprintln!("cache budget {budget} bytes (weights {weights}): reserved {} after load, peak reserved {}", m.reserved, m.peak_reserved);
    assert!(m.reserved <= budget, "reserved {} bytes idle, over the budget of {budget}", m.reserved);
}

// Item 8: a client that half-closes after a full request is answered.
#[test]
fn half_closed_clients_are_answered() {
    let Some(e) = embedder("half_closed_clients_are_answered") else { return };
    let srv = Server::start(e, ServeConfig::default());
    let body = r#"{"inputs": ["half closed"]}"#;
    let mut s = connect(srv.addr);
    write!(s, "POST /embed HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let resp = String::from_utf8_lossy(&out);
    assert!(resp.starts_with("HTTP/1.1 200"), "half-closed client got {resp:?}");
    let v: Vec<Vec<f32>> = serde_json::from_str(resp.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(v[0].len(), 384);
}

// Item 9: on loopback without a key, a foreign Host is refused; with a key
// it is served; loopback names always are.
#[test]
fn foreign_host_headers_are_refused_on_loopback_without_a_key() {
    let Some(e) = embedder("foreign_host_headers_are_refused_on_loopback_without_a_key") else { return };
    let srv = Server::start(e.clone(), ServeConfig::default());
    for host in ["localhost", "localhost:8080", "127.0.0.1:8080", "[::1]:8080", "api.localhost", "LOCALHOST."] {
        assert_eq!(request(srv.addr, "GET", "/health", host, "").0, 200, "Host {host}");
    }
    for host in ["evil.example", "evil.example:8080", "127.0.0.1.evil.example", "localhost.evil.example", "10.0.0.1"] {
        let (status, body) = request(srv.addr, "GET", "/health", host, "");
        assert_json_error(status, 403, &body);
    }
    let keyed = Server::start(e, ServeConfig { api_key: Some("k".into()), ..ServeConfig::default() });
    assert_eq!(request(keyed.addr, "GET", "/health", "evil.example", "").0, 200, "with a key the Host check is the key's job");
}

// Item 9: errors sent to clients name no Rust types or environment variables.
#[test]
fn client_errors_name_no_internals() {
    let pe = Error::PoolExhausted { size: 2, workers: 1, max: 65, waited: String::new() };
    for e in [pe, Error::JobPanicked("tokenizer: JoinError::Panic".into()), Error::Model("BertModel: bad".into()), Error::Config { name: "BRAID_X", value: "1".into(), reason: "r".into() }] {
        let m = client_message(&e);
        assert!(!m.contains("BRAID_") && !m.contains("::") && !m.contains("JoinError") && !m.contains("BertModel"), "{m}");
    }
    let Some(e) = embedder("client_errors_name_no_internals") else { return };
    let srv = Server::start(e, ServeConfig::default());
    for body in [r#"{"inputs": 7}"#, r#"{"input": "x"}"#, r#"{"inputs": [true, 2]}"#] {
        let (status, resp) = request(srv.addr, "POST", "/embed", "localhost", body);
        assert_json_error(status, 400, &resp);
        assert!(!resp.contains("untagged enum") && !resp.contains("Inputs") && !resp.contains("EmbedRequest"), "{resp}");
    }
}

// Item 10: every error has a JSON body: 405 (axum's), 414, 431 and 400
// (hyper's own answers to requests it cannot parse), 404.
#[test]
fn every_error_has_a_json_body() {
    let Some(e) = embedder("every_error_has_a_json_body") else { return };
    let srv = Server::start(e, ServeConfig::default());
    let a = srv.addr;
    let (status, body) = request(a, "GET", "/embed", "localhost", "");
    assert_json_error(status, 405, &body);
    assert!(body.contains("POST"), "{body}");
    let long_uri = format!("/health?{}", "x".repeat(70_000));
    let (status, body) = request(a, "GET", &long_uri, "localhost", "");
    assert_json_error(status, 414, &body);
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (status, body) = raw(a, format!("GET /health HTTP/1.1\r\nHost: localhost\r\n{many}\r\n").as_bytes());
    assert_eq!(status, 431, "200 headers: {body}");
    assert_json_error(status, 431, &body);
    let (status, body) = raw(a, b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: ".iter().copied().chain(std::iter::repeat_n(b'a', 500_000)).chain(*b"\r\n\r\n").collect::<Vec<u8>>().as_slice());
    assert_eq!(status, 431, "a 500 KB header: {body}");
    assert_json_error(status, 431, &body);
    let (status, body) = raw(a, b"\x01\x02 garbage\r\n\r\n");
    assert_json_error(status, 400, &body);
    let (status, body) = request(a, "GET", "/nowhere", "localhost", "");
    assert_json_error(status, 404, &body);
    // And the server still answers.
    assert_eq!(request(a, "GET", "/health", "localhost", "").0, 200);
    // A keep-alive connection: an answer, then hyper's own 400 on the
    // next (malformed) request is JSON too.
    let mut s = connect(a);
    s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s).0, 200);
    s.write_all(b"BAD\x00REQUEST\r\n\r\n").unwrap();
    let (status, _, body) = read_response(&mut s);
    assert_json_error(status, 400, &body);
}

#[test]
fn loopback_host_names() {
    use braid_serve::conn::is_loopback_host;
    for h in ["localhost", "LocalHost:1", "127.0.0.1", "127.1.2.3:80", "[::1]", "[::1]:8080", "::1", "a.localhost", "localhost."] {
        assert!(is_loopback_host(h), "{h}");
    }
    for h in ["", "evil", "localhost.evil", "127.0.0.1.nip.io", "[::2]", "[::1]x", "0.0.0.0", "192.168.1.1:80", "localhost:abc"] {
        assert!(!is_loopback_host(h), "{h}");
    }
}

/// The tiny committed BERT fixture (crates/nn/tests/fixtures/bert_mean): a
/// forward costs microseconds, so the connection layer is what is tested.
fn fixture_embedder() -> Arc<SentenceEmbedder> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../nn/tests/fixtures/bert_mean");
    let device = Device::cpu().unwrap();
    let e = SentenceEmbedder::load(&dir, &device).unwrap();
    device.pool().release_current();
    Arc::new(e)
}

/// Send `head` + `body` on a keep-alive connection from a writer thread
/// (the whole body, as HTTP clients do before reading), read the answer,
/// then read on: the server must close with a FIN (EOF), never a reset, and
/// the writer must have sent every byte (no broken pipe). Returns (status,
/// head, body of the answer).
fn answer_then_clean_close(addr: SocketAddr, head: String, body: Vec<u8>) -> (u16, String, String) {
    let mut s = connect(addr);
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all(head.as_bytes())?;
        w.write_all(&body)
    });
    let (status, head, text) = read_response(&mut s);
    let mut rest = [0u8; 1024];
    let after = s.read(&mut rest);
    assert!(matches!(after, Ok(0)), "after a {status} the server must close with a FIN, not a reset or more bytes: {after:?}");
    let sent = writer.join().unwrap();
    assert!(sent.is_ok(), "the client could not send its whole request ({status}): {sent:?}");
    (status, head, text)
}

// Issue 16's broken pipes: an answer given before the request body was read
// (a 403 for a foreign Host, a 413 over the payload limit) used to go out as
// a keep-alive answer; hyper then closed the connection with the body
// unread, the kernel reset it, and the client's next request on its pooled
// connection failed with a broken pipe (or the reset destroyed the answer).
// Now such an answer says `Connection: close` and the server closes with a
// lingering close; requests whose body is read keep their connection, and
// their answers say `Keep-Alive: timeout=N` (the idle timeout).
#[test]
fn unread_bodies_close_the_connection_without_a_reset() {
    let srv = Server::start(fixture_embedder(), ServeConfig { payload_limit: 1 << 20, ..ServeConfig::default() });
    let texts = format!("{{\"inputs\": [\"{}\"]}}", "a b c ".repeat(80 << 10));
    // A foreign Host: refused before the body is needed.
    let head = format!("POST /embed HTTP/1.1\r\nHost: evil.example\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", texts.len());
    let (status, h, body) = answer_then_clean_close(srv.addr, head, texts.clone().into_bytes());
    assert_json_error(status, 403, &body);
    assert!(h.to_ascii_lowercase().contains("connection: close"), "403 before the body was read must say Connection: close: {h}");
    // Over the payload limit: 413, the rest of the body never read.
    let big = vec![b'x'; 3 << 20];
    let head = format!("POST /embed HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", big.len());
    let (status, h, body) = answer_then_clean_close(srv.addr, head, big);
    assert_json_error(status, 413, &body);
    assert!(h.to_ascii_lowercase().contains("connection: close"), "413 before the body was read must say Connection: close: {h}");
    // Bodies that are read: the connection stays open for the next request,
    // errors (400) included.
    let mut s = connect(srv.addr);
    for (body, want) in [(r#"{"inputs": ["one"]}"#, 200), (r#"{"input": ["wrong field"]}"#, 400), (r#"{"inputs": ["two", "three"]}"#, 200)] {
        write!(s, "POST /embed HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        let (status, h, text) = read_response(&mut s);
        assert_eq!(status, want, "{text}");
        assert!(!h.to_ascii_lowercase().contains("connection: close"), "a request whose body was read keeps its connection: {h}");
        // The idle timeout is advertised, so clients drop the connection
        // before the server closes it (no race with a new request).
        assert!(h.to_ascii_lowercase().contains("keep-alive: timeout=30"), "a keep-alive answer names the idle timeout: {h}");
    }
}
