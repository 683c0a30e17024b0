//! `braid bench compare OURS.json PEER.json`: one table per section, braid and
//! the peer side by side, with the ratio (>1 means braid is better).

use crate::report::{Report, Row};
use braid_runtime::{Error, Result};
use std::fmt::Write;

pub fn load(path: &str) -> Result<Report> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io { path: path.into(), message: e.to_string() })?;
    serde_json::from_str(&text).map_err(|e| Error::Io { path: path.into(), message: format!("not a braid/peer JSON report: {e}") })
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() < 1e-2 {
        format!("{v:.2e}")
    } else if v.abs() < 10.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.0}")
    }
}

/// The comparison as Markdown tables.
pub fn compare(ours: &Report, peer: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{} ({}, {}) vs {} ({}, {}), workload {}\n", ours.tool, ours.backend, ours.device, peer.tool, peer.backend, peer.device, ours.workload);
    if ours.workload != peer.workload {
        let _ = writeln!(s, "WARNING: workloads differ ({} vs {})\n", ours.workload, peer.workload);
    }
    for section in ["correctness", "threads", "batching", "sync", "pipeline", "dynamic"] {
        let rows: Vec<&Row> = ours.results.iter().filter(|r| r.section() == section).collect();
        let peer_rows: Vec<&Row> = peer.results.iter().filter(|r| r.section() == section).collect();
        if rows.is_empty() && peer_rows.is_empty() {
            continue;
        }
        let unit = rows.first().or(peer_rows.first()).map(|r| r.headline().1).unwrap_or("");
        let _ = writeln!(s, "### {section}\n\n| row | {} {unit} | {} {unit} | ratio |\n| --- | ---: | ---: | ---: |", ours.tool, peer.tool);
        let mut keys: Vec<String> = rows.iter().map(|r| r.key()).collect();
        for r in &peer_rows {
            if !keys.contains(&r.key()) {
                keys.push(r.key());
            }
        }
        for k in keys {
            let a = rows.iter().find(|r| r.key() == k);
            let b = peer_rows.iter().find(|r| r.key() == k);
            let va = a.map(|r| r.headline().0);
            let vb = b.map(|r| r.headline().0);
            let higher = a.or(b).map(|r| r.headline().2).unwrap_or(true);
            let ratio = match (va, vb) {
                (Some(x), Some(y)) if x > 0.0 && y > 0.0 => format!("{:.2}x", if higher { x / y } else { y / x }),
                _ => "-".into(),
            };
            let extra = |r: Option<&&Row>| match r {
                Some(Row::Dynamic { p50_ms, p99_ms, mean_batch, .. }) => format!(" (p50 {p50_ms:.2} ms, p99 {p99_ms:.2} ms, batch {mean_batch:.1})"),
                Some(Row::Batching { latency_ms, .. }) => format!(" ({latency_ms:.3} ms)"),
                _ => String::new(),
            };
            let _ = writeln!(s, "| {k} | {}{} | {}{} | {ratio} |", va.map(fmt_num).unwrap_or("-".into()), extra(a), vb.map(fmt_num).unwrap_or("-".into()), extra(b));
        }
        s.push('\n');
    }
    s
}
