//! `braid serve` end to end as a user runs it: the binary on an ephemeral
//! port, one embedding request over HTTP, then SIGTERM: it must stop by
//! itself with exit status 0 after saying it drained. Also: a bad option (to
//! serve, or a soak duration) is
//! a clear error, not a panic. Needs all-MiniLM-L6-v2 for the first test
//! (SKIPPED without it).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn model_dir() -> PathBuf {
    std::env::var_os("BRAID_MINILM_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2"))
}

#[test]
fn serve_answers_then_stops_on_sigterm() {
    let dir = model_dir();
    if !dir.join("model.safetensors").exists() {
        eprintln!("serve_answers_then_stops_on_sigterm: SKIPPED (model not found at models/all-MiniLM-L6-v2: run scripts/get-minilm.sh)");
        return;
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_braid"))
        .args(["serve", "--device", "cpu", "--port", "0", "--model"])
        .arg(&dir)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    // "serve: listening on http://127.0.0.1:PORT ..."
    let mut addr = None;
    let mut seen = String::new();
    let t0 = Instant::now();
    while addr.is_none() && t0.elapsed() < Duration::from_secs(120) {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            break;
        }
        seen.push_str(&line);
        addr = line.split("http://").nth(1).and_then(|r| r.split_whitespace().next()).map(str::to_string);
    }
    let Some(addr) = addr else {
        let _ = child.kill();
        panic!("braid serve never said where it listens: {seen}");
    };
    let body = r#"{"inputs": ["hello from the CLI test"]}"#;
    let mut s = TcpStream::connect(&addr).unwrap();
    write!(s, "POST /embed HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let json = resp.split_once("\r\n\r\n").unwrap().1;
    let v: Vec<Vec<f32>> = serde_json::from_str(json).unwrap();
    assert_eq!(v[0].len(), 384);
    // SAFETY: kill(2) on our own child's pid, which has not been waited for
    // (so the pid cannot have been reused).
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("braid serve did not stop within 60 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut rest = String::new();
    let _ = err.read_to_string(&mut rest);
    assert!(status.success(), "exit {status:?}: {rest}");
    assert!(rest.contains("drained"), "no drain message: {rest}");
}

#[test]
fn serve_rejects_bad_options_clearly() {
    let out = Command::new(env!("CARGO_BIN_EXE_braid")).args(["serve", "--device", "cpu", "--max-delay-ms=-1", "--model", "/nonexistent"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max-delay-ms") && !err.contains("panicked"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_braid")).args(["serve", "--device", "cpu", "--max-delay-ms=1e300", "--model", "/nonexistent"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max-delay-ms") && !err.contains("panicked"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_braid")).args(["serve", "--device", "cpu", "--model", "/nonexistent"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent") && !err.contains("panicked"), "{err}");
}

/// Every `braid serve` option can come from its BRAID_* variable (as TEI's
/// do): the variable is used when the flag is absent, the flag wins over
/// it, and a bad value from the environment is as clear an error as one
/// from the command line.
#[test]
fn serve_options_come_from_braid_env_variables() {
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_braid"));
        c.args(["serve", "--device", "cpu"]).args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&[("BRAID_MODEL", "/nonexistent-from-env")], &[]);
    assert!(err.contains("/nonexistent-from-env") && !err.contains("panicked"), "{err}");
    let err = run(&[("BRAID_MODEL", "/nonexistent-from-env")], &["--model", "/nonexistent-from-flag"]);
    assert!(err.contains("/nonexistent-from-flag"), "the flag must win over the variable: {err}");
    let err = run(&[("BRAID_MAX_DELAY_MS", "-1"), ("BRAID_MODEL", "/nonexistent")], &[]);
    assert!(err.contains("max-delay-ms") && !err.contains("panicked"), "{err}");
    let err = run(&[("BRAID_MAX_BATCH", "many")], &["--model", "/nonexistent"]);
    assert!(err.contains("max-batch") && err.contains("many"), "{err}");
    let err = run(&[("BRAID_AUTO_TRUNCATE", "maybe")], &["--model", "/nonexistent"]);
    assert!(err.contains("auto-truncate"), "{err}");
}

#[test]
fn soak_rejects_bad_durations_clearly() {
    for minutes in ["--minutes=1e300", "--minutes=nan", "--minutes=-1"] {
        let out = Command::new(env!("CARGO_BIN_EXE_braid")).args(["soak", "--device", "cpu", minutes]).output().unwrap();
        assert!(!out.status.success(), "{minutes} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--minutes") && !err.contains("panicked"), "{minutes}: {err}");
    }
}
