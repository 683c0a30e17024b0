//! `braid check [--device D]`: every op and module against the CPU float64
//! reference on fresh random inputs, then parallel correctness (16 threads x
//! 200 forwards, each equal to the serial result). One line per check; the
//! exit status is non-zero if any check fails.

use braid_nn::CheckResult;
use braid_runtime::{Device, Result};
use std::process::ExitCode;

fn line(r: &CheckResult) -> String {
    let status = if r.passed { "PASS" } else { "FAIL" };
    match &r.error {
        Some(e) => format!("{status}  {:<60} error: {e}", r.name),
        None => format!("{status}  {:<60} rel err {:.2e} (tol {:.0e})", r.name, r.max_rel_err, r.tol),
    }
}

pub fn run(device: &Device, threads: usize, iters: usize) -> Result<ExitCode> {
    eprintln!("braid check on {} ({})", device.name(), device.kind().name());
    let mut failed = 0;
    let mut total = 0;
    eprintln!("[1/2] ops and modules vs the CPU f64 reference");
    for r in braid_nn::check(device)? {
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
