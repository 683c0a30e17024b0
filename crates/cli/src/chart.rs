//! `braid bench compare --svg PATH`: an SVG chart of two reports side by
//! side: thread scaling (ops/s against threads, one line per mode) and
//! batching (samples/s against batch size), braid solid and the peer dashed,
//! both axes logarithmic. Owns only the drawing; the numbers come from the
//! reports as they are.

use crate::report::{Report, Row};
use std::fmt::Write;

const PANEL_W: f64 = 460.0;
const PANEL_H: f64 = 300.0;
const MARGIN: (f64, f64, f64, f64) = (64.0, 20.0, 36.0, 48.0); // left, right, top, bottom
const COLORS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];

/// One line: its label, points (x, y) with x, y > 0, and dashed or not.
struct Series {
    label: String,
    points: Vec<(f64, f64)>,
    dashed: bool,
    color: &'static str,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Powers of ten (and 2x, 5x where few) between lo and hi, for log ticks.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut t = Vec::new();
    let (a, b) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let steps: &[f64] = if b - a <= 2 { &[1.0, 2.0, 5.0] } else { &[1.0] };
    for e in a..=b {
        for &m in steps {
            let v = m * 10f64.powi(e);
            if v >= lo * 0.999 && v <= hi * 1.001 {
                t.push(v);
            }
        }
    }
    t
}

fn fmt_tick(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{}k", v / 1e3)
    } else {
        format!("{v}")
    }
}

/// One panel at (ox, oy).
fn panel(s: &mut String, ox: f64, oy: f64, title: &str, xlabel: &str, ylabel: &str, series: &[Series]) {
    let pts: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.iter().copied()).filter(|&(x, y)| x > 0.0 && y > 0.0 && x.is_finite() && y.is_finite()).collect();
    let _ = writeln!(s, r#"<text x="{}" y="{}" font-size="14" font-weight="bold">{}</text>"#, ox + MARGIN.0, oy + 20.0, esc(title));
    if pts.is_empty() {
        let _ = writeln!(s, r#"<text x="{}" y="{}" font-size="12">no data</text>"#, ox + MARGIN.0, oy + PANEL_H / 2.0);
        return;
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in &pts {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    // Pad the ranges so a single point or a flat line still has room.
    let (x0, x1) = (x0 / 1.2, x1 * 1.2);
    let (y0, y1) = (y0 / 1.5, y1 * 1.5);
    let (l, r, t, b) = (ox + MARGIN.0, ox + PANEL_W - MARGIN.1, oy + MARGIN.2, oy + PANEL_H - MARGIN.3);
    let sx = |x: f64| l + (x.log10() - x0.log10()) / (x1.log10() - x0.log10()) * (r - l);
    let sy = |y: f64| b - (y.log10() - y0.log10()) / (y1.log10() - y0.log10()) * (b - t);
    let _ = writeln!(s, r##"<rect x="{l}" y="{t}" width="{}" height="{}" fill="none" stroke="#888"/>"##, r - l, b - t);
    for v in log_ticks(x0, x1) {
        let x = sx(v);
        let _ = writeln!(s, r##"<line x1="{x:.1}" y1="{b}" x2="{x:.1}" y2="{t}" stroke="#eee"/><text x="{x:.1}" y="{}" font-size="11" text-anchor="middle">{}</text>"##, b + 14.0, fmt_tick(v));
    }
    for v in log_ticks(y0, y1) {
        let y = sy(v);
        let _ = writeln!(s, r##"<line x1="{l}" y1="{y:.1}" x2="{r}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##, l - 4.0, y + 4.0, fmt_tick(v));
    }
    let _ = writeln!(s, r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">{}</text>"#, (l + r) / 2.0, b + 32.0, esc(xlabel));
    let _ = writeln!(s, r#"<text x="{}" y="{}" font-size="12" text-anchor="middle" transform="rotate(-90 {} {})">{}</text>"#, ox + 14.0, (t + b) / 2.0, ox + 14.0, (t + b) / 2.0, esc(ylabel));
    for (i, se) in series.iter().enumerate() {
        let p: Vec<String> = se.points.iter().filter(|&&(x, y)| x > 0.0 && y > 0.0 && x.is_finite() && y.is_finite()).map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect();
        if p.is_empty() {
            continue;
        }
        let dash = if se.dashed { r#" stroke-dasharray="6 4""# } else { "" };
        let _ = writeln!(s, r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#, p.join(" "), se.color);
        // Legend below the plot, two columns.
        let lx = l + (i % 2) as f64 * (r - l) / 2.0;
        let ly = b + 50.0 + 16.0 * (i / 2) as f64;
        let _ = writeln!(s, r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2"{dash}/><text x="{}" y="{}" font-size="11">{}</text>"#, lx + 24.0, se.color, lx + 28.0, ly + 4.0, esc(&se.label));
    }
}

/// The chart as an SVG document.
pub fn svg(ours: &Report, peer: &Report) -> String {
    let mut modes: Vec<String> = Vec::new();
    for r in ours.results.iter().chain(&peer.results) {
        if let Row::Threads { mode, .. } = r {
            if !modes.contains(mode) {
                modes.push(mode.clone());
            }
        }
    }
    let mut threads = Vec::new();
    for (ci, mode) in modes.iter().enumerate() {
        for (rep, dashed) in [(ours, false), (peer, true)] {
            let points: Vec<(f64, f64)> = rep.results.iter().filter_map(|r| if let Row::Threads { threads, mode: m, ops_per_s } = r { (m == mode).then_some((*threads as f64, *ops_per_s)) } else { None }).collect();
            if !points.is_empty() {
                threads.push(Series { label: format!("{} {mode}", rep.tool), points, dashed, color: COLORS[ci % COLORS.len()] });
            }
        }
    }
    let mut batching = Vec::new();
    for (rep, dashed) in [(ours, false), (peer, true)] {
        let points: Vec<(f64, f64)> = rep.results.iter().filter_map(|r| if let Row::Batching { batch, samples_per_s, .. } = r { Some((*batch as f64, *samples_per_s)) } else { None }).collect();
        if !points.is_empty() {
            batching.push(Series { label: rep.tool.clone(), points, dashed, color: COLORS[0] });
        }
    }
    // Room under the panels for the legends (two entries a row).
    let legend_rows = threads.len().max(batching.len()).div_ceil(2) as f64;
    let (w, h) = (2.0 * PANEL_W, PANEL_H + 50.0 + 16.0 * legend_rows);
    let mut s = String::new();
    let _ = writeln!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif">"#);
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="12" y="22" font-size="13">{} ({}) solid, {} ({}) dashed; workload {}</text>"#, esc(&ours.tool), esc(&ours.device), esc(&peer.tool), esc(&peer.device), esc(&ours.workload));
    panel(&mut s, 0.0, 36.0, "thread scaling", "threads", "ops/s", &threads);
    panel(&mut s, PANEL_W, 36.0, "batching", "batch size", "samples/s", &batching);
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(tool: &str, scale: f64) -> Report {
        let mut results = Vec::new();
        for t in [1usize, 2, 4, 8, 16] {
            results.push(Row::Threads { threads: t, mode: "per-thread-stream".into(), ops_per_s: 1000.0 * t as f64 * scale });
            results.push(Row::Threads { threads: t, mode: "graph".into(), ops_per_s: 2000.0 * t as f64 * scale });
        }
        for b in [1usize, 8, 64, 256] {
            results.push(Row::Batching { batch: b, latency_ms: 0.1, samples_per_s: 500.0 * b as f64 * scale });
        }
        Report { tool: tool.into(), device: "dev <1>".into(), backend: "cpu".into(), workload: "mlp".into(), date: None, quick: true, dynamic_devices: None, results }
    }

    #[test]
    fn chart_has_a_line_per_series_and_escapes_text() {
        let s = svg(&report("braid", 2.0), &report("torch", 1.0));
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        // 2 modes x 2 tools + 2 batching lines.
        assert_eq!(s.matches("<polyline").count(), 6);
        assert_eq!(s.matches("stroke-dasharray").count(), 6, "3 dashed lines, each with its legend swatch");
        assert!(s.contains("dev &lt;1&gt;") && !s.contains("dev <1>"));
        assert!(!s.contains("NaN") && !s.contains("inf"));
        // Every coordinate lies inside the drawing.
        for pts in s.split("points=\"").skip(1) {
            for p in pts.split('"').next().unwrap().split(' ') {
                let (x, y) = p.split_once(',').unwrap();
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!((0.0..=2.0 * PANEL_W).contains(&x) && (0.0..=PANEL_H + 36.0).contains(&y), "{x},{y}");
            }
        }
    }

    #[test]
    fn empty_or_degenerate_reports_still_draw() {
        let mut a = report("braid", 1.0);
        a.results.clear();
        let s = svg(&a, &a.clone());
        assert_eq!(s.matches("no data").count(), 2);
        // A single point and a zero value (dropped, not NaN).
        a.results.push(Row::Batching { batch: 8, latency_ms: 1.0, samples_per_s: 0.0 });
        a.results.push(Row::Batching { batch: 16, latency_ms: 1.0, samples_per_s: 100.0 });
        let s = svg(&a, &report("torch", 1.0));
        assert!(!s.contains("NaN") && !s.contains("inf"));
    }
}
