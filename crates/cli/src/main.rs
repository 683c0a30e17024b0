//! The `braid` command: `info`, `check`, `bench story`, `bench compare`,
//! `embed`. Owns argument parsing and exit codes; each subcommand lives in its
//! own module.

mod info;

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
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("braid: error: {e}");
            ExitCode::from(2)
        }
    }
}
