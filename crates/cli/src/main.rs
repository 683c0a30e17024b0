//! The `braid` command: `info`, `check`, `bench story`, `bench compare`,
//! `embed`, `soak`, `serve`. Owns argument parsing and exit codes; each subcommand lives in its
//! own module.

mod chart;
mod check;
mod compare;
mod drill;
mod dynamic;
mod embed;
mod info;
mod report;
mod rerank;
mod serve;
mod soak;
mod story;
mod workloads;

use braid_runtime::{DType, Device};

/// `--dtype`: f32 (the default), f16 or bf16; anything else is an error.
pub fn parse_dtype(s: &str) -> std::result::Result<DType, String> {
    DType::parse(s).map_err(|e| e.to_string())
}

/// A seed that differs run to run (fresh random inputs for checks).
pub fn fresh_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0x5eed)
}

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
    /// Backends and devices found, and the pool settings in force; with --model, what braid reads from that model directory.
    Info {
        /// A model directory: its family, pooling, modules and the defaults used (or its classifier labels).
        #[arg(long)]
        model: Option<String>,
    },
    /// Every op and model against a CPU float64 reference, then parallel correctness.
    Check {
        /// auto, cpu, cuda or cuda:N.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Threads for the parallel check.
        #[arg(long, default_value_t = 16)]
        threads: usize,
        /// Forwards per thread in the parallel check.
        #[arg(long, default_value_t = 200)]
        iters: usize,
        /// MiniLM model directory (checked against sentence-transformers if present),
        /// or any model directory carrying a reference.json.
        #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
        model: String,
        /// Folder of family fixtures (<family>/reference.json), each checked against its Python reference.
        #[arg(long, default_value = "crates/nn/tests/fixtures")]
        fixtures: String,
        /// The model check (MiniLM vs its reference) in f32 (default), f16 or bf16 (GEMMs on tensor cores, f32 accumulation; half needs a GPU).
        #[arg(long, default_value = "f32", value_parser = parse_dtype)]
        dtype: DType,
    },
    /// Score (query, text) pairs with a cross-encoder, best first; or classify texts (--predict).
    Rerank {
        /// A *ForSequenceClassification model directory.
        #[arg(long)]
        model: String,
        /// auto, cpu, cuda or cuda:N.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Logits instead of sigmoid (rerank) or softmax (predict) scores.
        #[arg(long)]
        raw_scores: bool,
        /// Classify each text alone, with the labels of config.json's id2label.
        #[arg(long)]
        predict: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// QUERY TEXT... (or TEXT... with --predict).
        args: Vec<String>,
    },
    /// Sentence embeddings from any sentence-transformers model directory, one per text.
    Embed {
        /// The model directory (scripts/get-minilm.sh puts it in models/all-MiniLM-L6-v2).
        #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
        model: String,
        /// auto, cpu, cuda or cuda:N.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Weights and activations in f32 (default), f16 or bf16 (GEMMs on tensor cores, f32 accumulation; half needs a GPU).
        #[arg(long, default_value = "f32", value_parser = parse_dtype)]
        dtype: DType,
        /// The texts.
        texts: Vec<String>,
    },
    /// Mixed workloads from many threads with thread churn, for a while: operations, errors, memory growth.
    Soak {
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// auto, cpu, cuda or cuda:N.
        #[arg(long, default_value = "auto")]
        device: String,
        #[arg(long, default_value_t = 8)]
        threads: usize,
        /// MiniLM model directory (used if present).
        #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
        model: String,
        /// Also write the report here.
        #[arg(long)]
        json: Option<String>,
    },
    /// HTTP server for sentence embeddings: text-embeddings-inference's and OpenAI's embeddings APIs over the dynamic batcher. Every option can also be set from its BRAID_* environment variable.
    Serve(serve::Options),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        cmd: BenchCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// The complete story: correctness, threads, batching, sync, pipeline, dynamic batching.
    Story {
        /// auto, cpu, cuda or cuda:N.
        #[arg(long, default_value = "auto")]
        device: String,
        /// mlp, encoder, minilm (128 tokens a text) or mixed (MiniLM on seeded lengths 8..256, mean ~60).
        #[arg(long, default_value = "mlp")]
        workload: String,
        /// Short runs (under a minute on a 2-core CPU).
        #[arg(long)]
        quick: bool,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<String>,
        /// Run only these sections (comma-separated): correctness, threads, batching, sync, pipeline, dynamic.
        #[arg(long)]
        sections: Option<String>,
        /// Batch sizes for the batching section (comma-separated), instead of the workload's own.
        #[arg(long, value_delimiter = ',')]
        batches: Option<Vec<usize>>,
        /// MiniLM model directory (for --workload minilm).
        #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
        model: String,
        /// Weights and activations in f32 (default), f16 or bf16 for --workload minilm or mixed (GEMMs on tensor cores, f32 accumulation; half needs a GPU).
        #[arg(long, default_value = "f32", value_parser = parse_dtype)]
        dtype: DType,
    },
    /// braid and a peer (PyTorch) side by side, one table per section, with ratios.
    Compare {
        /// braid's JSON report (`braid bench story --json`).
        ours: String,
        /// The peer's JSON report (`bench/peers/torch_story.py --json`).
        peer: String,
        /// Also draw thread scaling and batching, braid solid and the peer dashed, as SVG here.
        #[arg(long)]
        svg: Option<String>,
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
        Cmd::Info { model } => info::run(model.as_deref()),
        Cmd::Embed { model, device, json, dtype, texts } => Device::parse_many(&device).and_then(|d| embed::run(&d, &model, &texts, json, dtype)),
        Cmd::Serve(opts) => serve::run(&opts),
        Cmd::Soak { minutes, device, threads, model, json } => Device::parse_many(&device).and_then(|d| soak::run(&d, minutes, threads, &model, json.as_deref())),
        Cmd::Check { device, threads, iters, model, fixtures, dtype } => Device::parse(&device).and_then(|d| check::run(&d, threads, iters, &model, &fixtures, dtype)),
        Cmd::Rerank { model, device, raw_scores, predict, json, args } => Device::parse(&device).and_then(|d| {
            let (query, texts) = if predict { (None, &args[..]) } else { (args.first().map(|s| s.as_str()), args.get(1..).unwrap_or(&[])) };
            rerank::run(&d, &model, query, texts, raw_scores, predict, json)
        }),
        Cmd::Bench { cmd: BenchCmd::Story { device, workload, quick, json, sections, batches, model, dtype } } => story_cmd(&device, &workload, quick, json.as_deref(), sections.as_deref(), batches, &model, dtype),
        Cmd::Bench { cmd: BenchCmd::Compare { ours, peer, svg } } => compare::load(&ours).and_then(|a| {
            let b = compare::load(&peer)?;
            print!("{}", compare::compare(&a, &b));
            if let Some(path) = svg {
                std::fs::write(&path, chart::svg(&a, &b)).map_err(|e| braid_runtime::Error::Io { path: path.clone(), message: e.to_string() })?;
                eprintln!("chart written to {path}");
            }
            Ok(ExitCode::SUCCESS)
        }),
    };
    // BRAID_WGPU_PROFILE: the wgpu backend's host-path counters and
    // per-kernel times (docs/backends.md, "Profiling the wgpu backend").
    #[cfg(feature = "wgpu")]
    if braid_runtime::backend::wgpu::profile::enabled() {
        if let Some(report) = braid_runtime::backend::wgpu::profile_report() {
            eprint!("{report}");
        }
    }
    // BRAID_CPU_PROFILE: wall time per CPU op and shape (docs/cpu.md).
    if braid_runtime::backend::cpu::profile::enabled() {
        if let Some(report) = braid_runtime::backend::cpu::profile::report() {
            eprint!("{report}");
        }
    }
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("braid: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn story_cmd(device: &str, workload: &str, quick: bool, json: Option<&str>, sections: Option<&str>, batches: Option<Vec<usize>>, model: &str, dtype: DType) -> braid_runtime::Result<ExitCode> {
    if dtype != DType::F32 && !matches!(workload, "minilm" | "mixed") {
        return Err(braid_runtime::Error::InvalidArgument(format!("--dtype {} applies to --workload minilm or mixed; the {workload} workload is f32 only", dtype.name())));
    }
    let devices = Device::parse_many(device)?;
    // A list (`cuda:all`, `cpu:0,1`) runs the dynamic rows over a replica
    // per device, even where the list has one device; a single name runs
    // them on that device directly.
    let replicated = device.contains(',') || device.trim().ends_with(":all");
    let mut settings = story::Settings::new(quick);
    if let Some(list) = sections {
        settings.only(list)?;
    }
    if let Some(b) = batches {
        if b.is_empty() || b.contains(&0) {
            return Err(braid_runtime::Error::InvalidArgument("--batches takes batch sizes of at least 1".into()));
        }
        settings.batches = Some(b);
    }
    let d0 = &devices[0];
    // Checked before anything runs: a bad policy, or a fault drill the
    // story would not honour, is an error, not ignored.
    let policy = dynamic::policy()?;
    if std::env::var_os(drill::VAR).is_some() {
        return Err(braid_runtime::Error::InvalidArgument(format!("{} is honoured by `braid serve` only; unset it for `bench story`", drill::VAR)));
    }
    eprintln!("braid bench story: workload {workload} ({}) on {} ({}){}{}, batch policy {}", dtype.name(), d0.name(), d0.kind().name(), if quick { ", quick" } else { "" }, if replicated { format!(", dynamic rows over {} device(s)", devices.len()) } else { String::new() }, policy.name());
    let report = match workload {
        "mlp" => story::run(&devices, &devices.iter().map(workloads::MlpBench::new).collect::<braid_runtime::Result<Vec<_>>>()?, replicated, &settings)?,
        "encoder" => story::run(&devices, &devices.iter().map(workloads::EncoderBench::new).collect::<braid_runtime::Result<Vec<_>>>()?, replicated, &settings)?,
        "minilm" => story::run(&devices, &devices.iter().map(|d| workloads::MiniLmBench::new(d, model, dtype, false)).collect::<braid_runtime::Result<Vec<_>>>()?, replicated, &settings)?,
        "mixed" => story::run(&devices, &devices.iter().map(|d| workloads::MiniLmBench::new(d, model, dtype, true)).collect::<braid_runtime::Result<Vec<_>>>()?, replicated, &settings)?,
        other => return Err(braid_runtime::Error::InvalidArgument(format!("unknown workload {other:?}: expected mlp, encoder, minilm or mixed"))),
    };
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| braid_runtime::Error::Io { path: path.into(), message: e.to_string() })?;
        std::fs::write(path, text).map_err(|e| braid_runtime::Error::Io { path: path.into(), message: e.to_string() })?;
        eprintln!("wrote {path}");
    }
    Ok(ExitCode::SUCCESS)
}
