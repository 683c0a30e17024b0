//! Property tests (proptest) for what braid-serve does with untrusted
//! bytes: the tokenizer front ([`braid_serve::front::encode_cut`] gives
//! exactly the ids of tokenizing the whole text, on random texts of words,
//! punctuation, CJK, emoji, control and zero-width characters, combining
//! marks and mixed whitespace) and request parsing (random and mutated
//! requests over real sockets: every answer is an HTTP response whose error
//! body is JSON, or a close; the server never stops answering). Needs
//! all-MiniLM-L6-v2's tokenizer and model (SKIPPED without them). Case
//! counts are bounded (PROPTEST_CASES overrides) so this runs in seconds.

use braid_nn::{SentenceEmbedder, TextTokenizer};
use braid_runtime::Device;
use braid_serve::{AppState, ConnConfig, ServeConfig};
use proptest::prelude::*;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

fn model_dir() -> PathBuf {
    std::env::var_os("BRAID_MINILM_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2"))
}

fn have_model(test: &str) -> bool {
    let ok = model_dir().join("model.safetensors").exists();
    if !ok {
        eprintln!("{test}: SKIPPED (model not found at models/all-MiniLM-L6-v2: run scripts/get-minilm.sh)");
    }
    ok
}

const PIECES: &[&str] = &[
    "a", "the", "cat", "hello", "über", "naïve", "東京", "世界", "😀", "can't", "U.S.A.", "3.14", ",", "...", "(x)", "#tag", "e\u{0301}", "\u{0301}", "\u{0007}", "\u{200b}", "\u{feff}", "\u{fffd}", "\u{0000}",
    "internationalization", "ＡＢＣ", "Ⅻ", "ﬁ", "İstanbul", "ß", "ǅ",
];
const SEPS: &[&str] = &[" ", " ", " ", "  ", "\t", "\n", "\r\n", "\u{3000}", "\u{a0}", "", "\u{2028}"];

fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        8 => proptest::sample::select(PIECES).prop_map(str::to_string),
        1 => "[a-z]{101,140}".prop_map(|s| s),
        1 => "\\PC{1,6}",
    ];
    proptest::collection::vec((piece, proptest::sample::select(SEPS)), 0..1500).prop_map(|v| v.into_iter().map(|(p, s)| format!("{p}{s}")).collect())
}

fn tokenizer(max_len: usize) -> &'static TextTokenizer {
    static TOKS: OnceLock<Vec<(usize, TextTokenizer)>> = OnceLock::new();
    let all = TOKS.get_or_init(|| [2usize, 4, 16, 64, 256].iter().map(|&m| (m, TextTokenizer::from_file(model_dir().join("tokenizer.json"), m).unwrap())).collect());
    &all.iter().find(|(m, _)| *m == max_len).unwrap().1
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(96), ..ProptestConfig::default() })]

    #[test]
    fn cutting_before_tokenizing_changes_no_ids(t in text(), max_len in proptest::sample::select(vec![2usize, 4, 16, 64, 256])) {
        if !model_dir().join("tokenizer.json").exists() {
            eprintln!("cutting_before_tokenizing_changes_no_ids: SKIPPED (model not found: run scripts/get-minilm.sh)");
            return Ok(());
        }
        let tok = tokenizer(max_len);
        let (cut, used) = braid_serve::front::encode_cut(tok, &t).unwrap();
        let whole = tok.encode(&t).unwrap();
        prop_assert!(used <= t.len());
        prop_assert_eq!(cut, whole, "max_len {}, {} of {} bytes tokenized", max_len, used, t.len());
    }
}

/// One server for every request case.
fn server() -> SocketAddr {
    static SRV: OnceLock<SocketAddr> = OnceLock::new();
    *SRV.get_or_init(|| {
        let e = Arc::new(SentenceEmbedder::load(model_dir(), &Device::cpu().unwrap()).unwrap());
        let config = ServeConfig { max_inputs: 8, conn: ConnConfig { header_read_timeout: Duration::from_millis(500), keep_alive_timeout: Duration::from_millis(500), max_connections: 64, shutdown_timeout: Duration::from_secs(1) }, ..ServeConfig::default() };
        let state = AppState::new(e, "cpu".into(), config).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || rt.block_on(braid_serve::serve(listener, state, std::future::pending())));
        addr
    })
}

fn request() -> impl Strategy<Value = Vec<u8>> {
    let method = proptest::sample::select(vec!["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "G\u{e9}T", "", "POST POST"]);
    let path = prop_oneof![
        proptest::sample::select(vec!["/embed", "/v1/embeddings", "/health", "/info", "/metrics", "/", "*", "/embed?x=1", "//embed", "/%00", "/\u{e9}"]).prop_map(str::to_string),
        "/[ -~]{0,40}",
    ];
    let version = proptest::sample::select(vec!["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 x", "", "HTTP/9"]);
    let host = proptest::sample::select(vec!["Host: localhost\r\n", "Host: 127.0.0.1:1\r\n", "Host: evil.example\r\n", "", "Host: \r\n", "Host: localhost\r\nHost: evil\r\n"]);
    let body = prop_oneof![
        proptest::sample::select(vec![
            r#"{"inputs": "hello"}"#, r#"{"inputs": ["a", "b"]}"#, r#"{"input": ["x"]}"#, r#"{"inputs": []}"#, r#"{"inputs": [1]}"#, "[[[[[[[[[[[[[[[[[[[[", r#"{"inputs": "\ud800"}"#, "", "null", r#"{"inputs": ["a","b","c","d","e","f","g","h","i"]}"#,
        ]).prop_map(|s| s.as_bytes().to_vec()),
        proptest::collection::vec(any::<u8>(), 0..200),
    ];
    let headers = proptest::collection::vec(proptest::sample::select(vec!["Content-Type: application/json\r\n", "Content-Type: text/plain\r\n", "Transfer-Encoding: chunked\r\n", "Expect: 100-continue\r\n", "Connection: keep-alive\r\n", "Content-Length: 99999999999999999999\r\n", "Content-Length: -1\r\n", "X: \u{1}\r\n", ": empty\r\n", "NoColon\r\n"]), 0..3);
    (method, path, version, host, headers, body, any::<bool>(), 0usize..400, proptest::collection::vec(any::<u8>(), 0..8), any::<bool>()).prop_map(|(m, p, v, h, hs, b, with_len, cut, junk, do_cut)| {
        let mut r = format!("{m} {p} {v}\r\n{h}{}", hs.concat()).into_bytes();
        if with_len {
            r.extend_from_slice(format!("Content-Length: {}\r\n", b.len()).as_bytes());
        }
        r.extend_from_slice(b"\r\n");
        r.extend_from_slice(&b);
        if do_cut {
            let at = cut.min(r.len());
            r.truncate(at);
            r.extend_from_slice(&junk);
        }
        r
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(128), ..ProptestConfig::default() })]

    #[test]
    fn any_request_gets_a_json_error_or_a_close(req in request()) {
        if !have_model("any_request_gets_a_json_error_or_a_close") {
            return Ok(());
        }
        let addr = server();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let _ = s.write_all(&req);
        let _ = s.shutdown(Shutdown::Write);
        let mut out = Vec::new();
        let r = s.read_to_end(&mut out);
        prop_assert!(!matches!(&r, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)), "no answer and no close within 30 s for {:?}", String::from_utf8_lossy(&req));
        // Every response on the connection (there may be several, or none).
        let mut rest = &out[..];
        while !rest.is_empty() {
            let text = String::from_utf8_lossy(rest).into_owned();
            prop_assert!(text.starts_with("HTTP/1.1 ") || text.starts_with("HTTP/1.0 "), "not a response: {:?} for {:?}", text, String::from_utf8_lossy(&req));
            let (head, after) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            let status: u16 = head[9..12].parse().unwrap();
            // A response to HEAD has no body whatever its Content-Length.
            // (Unless the request could not be parsed as HEAD: then the
            // error's body follows.)
            let head_req = rest.len() == out.len() && req.starts_with(b"HEAD") && !after.starts_with('{');
            let len: usize = if head_req { 0 } else { head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())).unwrap_or(0) };
            let body = &after.as_bytes()[..len.min(after.len())];
            if status >= 400 && !head_req {
                let v: Result<serde_json::Value, _> = serde_json::from_slice(body);
                // TEI's shape (`{"error": "..."}`) or, on the OpenAI routes, OpenAI's
                // (`{"error": {"message": "...", ...}}`).
                prop_assert!(v.as_ref().is_ok_and(|v| v["error"].is_string() || v["error"]["message"].is_string()), "status {} without a JSON error body: {:?} for {:?}", status, String::from_utf8_lossy(body), String::from_utf8_lossy(&req));
            }
            let used = head.len() + 4 + len;
            if used >= rest.len() { break; }
            rest = &rest[used..];
        }
        // The server still answers.
        let mut h = TcpStream::connect(addr).unwrap();
        h.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        h.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
        let mut ok = String::new();
        let _ = h.read_to_string(&mut ok);
        prop_assert!(ok.starts_with("HTTP/1.1 200"), "/health after {:?}: {}", String::from_utf8_lossy(&req), ok);
    }
}
