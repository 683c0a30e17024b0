//! `braid check [--device D]`: every op and module against the CPU float64
//! reference on fresh random inputs, then parallel correctness (16 threads x
//! 200 forwards, each equal to the serial result). Also every model family
//! fixture (and `--model` if it carries a reference.json) against its Python
//! reference. One line per check; the
//! exit status is non-zero if any check fails.

use braid_nn::CheckResult;
use braid_runtime::{DType, Device, Result};
use std::process::ExitCode;

fn line(r: &CheckResult) -> String {
    let status = if r.passed { "PASS" } else { "FAIL" };
    match &r.error {
        Some(e) => format!("{status}  {:<60} error: {e}", r.name),
        None if r.name.ends_with("max abs diff") || r.name.ends_with("1 - worst cosine") => format!("{status}  {} {:.2e} (tol {:.0e})", r.name, r.max_rel_err, r.tol),
        None => format!("{status}  {:<60} rel err {:.2e} (tol {:.0e})", r.name, r.max_rel_err, r.tol),
    }
}

/// all-MiniLM-L6-v2 against sentence-transformers' f32 embeddings (the
/// fixture made by scripts/make-reference.py): in f32 worst cosine ≥ 0.99999
/// and max abs difference < 1e-4; in f16/bf16 (weights and activations in
/// that dtype) worst cosine ≥ 0.999. `None` if the model is not installed.
fn minilm(device: &Device, dir: &str, dtype: DType) -> Result<Option<CheckResult>> {
    // A directory with its own reference.json is checked against that (families()).
    if !std::path::Path::new(dir).join("model.safetensors").exists() || std::path::Path::new(dir).join("reference.json").exists() {
        return Ok(None);
    }
    let model = braid_nn::SentenceEmbedder::load_with(dir, device, dtype)?;
    let fixture: serde_json::Value = serde_json::from_str(crate::workloads::FIXTURE).map_err(|e| braid_runtime::Error::Io { path: "minilm_reference.json".into(), message: e.to_string() })?;
    let (mut worst_cos, mut worst_abs, mut n) = (1.0f64, 0.0f64, 0);
    for batch in fixture["batches"].as_array().into_iter().flatten() {
        let texts: Vec<&str> = batch["sentences"].as_array().into_iter().flatten().filter_map(|t| t.as_str()).collect();
        let got = model.embed(&texts)?;
        for (g, want) in got.iter().zip(batch["embeddings"].as_array().into_iter().flatten()) {
            let want: Vec<f64> = want.as_array().into_iter().flatten().map(|v| v.as_f64().unwrap_or(f64::NAN)).collect();
            let dot: f64 = g.iter().zip(&want).map(|(a, b)| *a as f64 * b).sum();
            let na: f64 = g.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
            let nb: f64 = want.iter().map(|b| b * b).sum::<f64>().sqrt();
            let cos = dot / (na * nb);
            worst_cos = if cos.is_nan() { f64::NAN } else { worst_cos.min(cos) };
            worst_abs = g.iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs()).fold(worst_abs, f64::max);
            n += 1;
        }
    }
    if dtype.is_half() {
        let gap = 1.0 - worst_cos;
        return Ok(Some(CheckResult {
            name: format!("minilm {} vs sentence-transformers f32, {n} sentences: worst cosine {worst_cos:.6} (max abs diff {worst_abs:.2e}), 1 - worst cosine", dtype.name()),
            max_rel_err: gap,
            tol: 1e-3,
            passed: gap <= 1e-3 && n > 0,
            error: None,
        }));
    }
    let passed = worst_cos >= 0.99999 && worst_abs < 1e-4 && n > 0;
    Ok(Some(CheckResult {
        name: format!("minilm vs sentence-transformers, {n} sentences: worst cosine {worst_cos:.9}, max abs diff"),
        max_rel_err: worst_abs,
        tol: 1e-4,
        passed,
        error: None,
    }))
}

/// Each model directory under `fixtures` (and `model` itself) that carries
/// a reference.json, against it. A directory that fails to load is a FAIL.
fn families(device: &Device, model: &str, fixtures: &str) -> Vec<CheckResult> {
    let mut dirs: Vec<std::path::PathBuf> = std::fs::read_dir(fixtures).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.join("reference.json").is_file()).collect();
    dirs.sort();
    if std::path::Path::new(model).join("reference.json").is_file() {
        dirs.push(model.into());
    }
    dirs.iter()
        .map(|d| {
            let name = d.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            match braid_nn::reference::check_model_dir(d, device) {
                Ok(r) => r.check_result(&name),
                Err(e) => CheckResult { name: format!("family {name} vs python reference"), max_rel_err: f64::NAN, tol: 1e-4, passed: false, error: Some(e.to_string()) },
            }
        })
        .collect()
}

pub fn run(device: &Device, threads: usize, iters: usize, model: &str, fixtures: &str, dtype: DType) -> Result<ExitCode> {
    if !device.supports(dtype) {
        return Err(braid_runtime::Error::Unsupported { backend: device.kind().name(), what: format!("--dtype {} (this device runs f32 only)", dtype.name()) });
    }
    eprintln!("braid check on {} ({})", device.name(), device.kind().name());
    let mut failed = 0;
    let mut total = 0;
    eprintln!("[1/2] ops and modules vs the CPU f64 reference");
    for r in braid_nn::check(device)? {
        println!("{}", line(&r));
        total += 1;
        failed += usize::from(!r.passed);
    }
    if !device.capabilities().varlen_attention {
        println!("SKIPPED  attention varlen (no packed attention kernel on {}: BERT batches take the padded path there)", device.kind().name());
    }
    match minilm(device, model, dtype)? {
        Some(r) => {
            println!("{}", line(&r));
            total += 1;
            failed += usize::from(!r.passed);
        }
        None if std::path::Path::new(model).join("reference.json").exists() => {}
        None => println!("SKIPPED  minilm vs sentence-transformers (model not found at {model}: run scripts/get-minilm.sh)"),
    }
    let fams = families(device, model, fixtures);
    if fams.is_empty() {
        println!("SKIPPED  model families (no <family>/reference.json under {fixtures}: run from the repository root)");
    }
    for r in fams {
        println!("{}", line(&r));
        total += 1;
        failed += usize::from(!r.passed);
    }
    eprintln!("[2/2] parallel correctness: {threads} threads x {iters} forwards vs serial");
    for r in braid_nn::check_parallel(device, threads, iters)? {
        println!("{}", line(&r));
        total += 1;
        failed += usize::from(!r.passed);
    }
    println!("{} passed, {failed} failed", total - failed);
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
