//! The `braid` command: `info`, `check`, `bench story`, `bench compare`,
//! `embed`. Owns argument parsing and exit codes; each subcommand lives in its
//! own module.

mod compare;
mod info;
mod report;
#[allow(dead_code)]
mod story;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "braid", version, about = "Many threads, one GPU: braid's runtime, checks and benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Backends and devices found, and the pool settings in force.
    Info,
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        cmd: BenchCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// braid and a peer (PyTorch) side by side, one table per section, with ratios.
    Compare {
        /// braid's JSON report (`braid bench story --json`).
        ours: String,
        /// The peer's JSON report (`bench/peers/torch_story.py --json`).
        peer: String,
    },
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`braid info | head`) like other Unix tools.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread
    // starts; no handler is installed.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Info => info::run(),
        Cmd::Bench { cmd: BenchCmd::Compare { ours, peer } } => compare::load(&ours).and_then(|a| {
            let b = compare::load(&peer)?;
            print!("{}", compare::compare(&a, &b));
            Ok(ExitCode::SUCCESS)
        }),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("braid: error: {e}");
            ExitCode::from(2)
        }
    }
}
