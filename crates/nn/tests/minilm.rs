//! all-MiniLM-L6-v2 against sentence-transformers' embeddings (the fixture
//! made by scripts/make-reference.py), and 16 threads sharing one model.
//! Skipped, with a message on stderr, when the model is not installed.

use braid_nn::SentenceEmbedder;
use braid_runtime::Device;
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Deserialize)]
struct Fixture {
    max_seq_length: usize,
    batches: Vec<Batch>,
}

#[derive(Deserialize)]
struct Batch {
    sentences: Vec<String>,
    token_ids: Vec<Vec<u32>>,
    embeddings: Vec<Vec<f32>>,
}

fn model_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("BRAID_MINILM_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2"));
    if dir.join("model.safetensors").is_file() {
        Some(dir)
    } else {
        eprintln!("SKIPPED (model not found at models/all-MiniLM-L6-v2: run scripts/get-minilm.sh)");
        None
    }
}

fn fixture() -> Fixture {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn device() -> Device {
    Device::parse(&std::env::var("BRAID_TEST_DEVICE").unwrap_or_else(|_| "cpu".into())).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn minilm_matches_sentence_transformers() {
    let Some(dir) = model_dir() else { return };
    let fx = fixture();
    let t0 = std::time::Instant::now();
    let model = SentenceEmbedder::load(&dir, &device()).unwrap();
    eprintln!("loaded in {:.1} s", t0.elapsed().as_secs_f64());
    assert_eq!(model.max_seq_length(), fx.max_seq_length);
    assert_eq!(model.dim(), 384);
    let (mut worst_cos, mut worst_abs) = (1.0f64, 0.0f64);
    for b in &fx.batches {
        let texts: Vec<&str> = b.sentences.iter().map(|s| s.as_str()).collect();
        for (t, ids) in texts.iter().zip(&b.token_ids) {
            assert_eq!(&model.tokenizer().encode(t).unwrap(), ids, "token ids of {t:?}");
        }
        let got = model.embed(&texts).unwrap();
        assert_eq!(got.len(), texts.len());
        for ((t, g), want) in texts.iter().zip(&got).zip(&b.embeddings) {
            let cos = cosine(g, want);
            let abs = g.iter().zip(want).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max);
            let norm: f64 = g.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            eprintln!("{:<50} tokens {:>3} cosine {cos:.9} max_abs_diff {abs:.2e}", format!("{:?}", t.chars().take(44).collect::<String>()), model.tokenizer().encode(t).unwrap().len());
            assert!((norm - 1.0).abs() < 1e-5, "not normalised: {norm}");
            assert!(cos >= 0.99999, "{t:?}: cosine {cos}");
            assert!(abs < 1e-4, "{t:?}: max abs diff {abs}");
            worst_cos = worst_cos.min(cos);
            worst_abs = worst_abs.max(abs);
        }
    }
    eprintln!("worst cosine {worst_cos:.9}, worst max abs diff {worst_abs:.2e}");
    // One at a time gives the same as in a padded batch (to f32 rounding).
    let single = model.embed(&[fx.batches[0].sentences[1].as_str()]).unwrap();
    assert!(cosine(&single[0], &fx.batches[0].embeddings[1]) >= 0.99999);
    assert!(model.embed(&[]).unwrap().is_empty());
}

/// 16 threads share one `Arc` model, each embedding its own texts many times
/// (`BRAID_PARALLEL_ITERS`; 200 in release builds, 1 in debug builds, where
/// the unoptimised GEMM makes 3,200 forwards take minutes); every result must
/// be bitwise equal to the serial one.
#[test]
fn minilm_parallel_threads_equal_serial() {
    let Some(dir) = model_dir() else { return };
    let iters: usize = std::env::var("BRAID_PARALLEL_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(if cfg!(debug_assertions) { 1 } else { 200 });
    let fx = fixture();
    let short: Vec<String> = fx.batches.iter().flat_map(|b| b.sentences.iter()).filter(|s| s.len() < 120).cloned().collect();
    let model = Arc::new(SentenceEmbedder::load(&dir, &device()).unwrap());
    let threads = 16;
    let texts: Vec<Vec<String>> = (0..threads).map(|t| vec![short[t % short.len()].clone(), format!("thread {t} asks: {}", short[(t + 3) % short.len()])]).collect();
    let serial: Vec<Vec<Vec<f32>>> = texts.iter().map(|ts| model.embed(&ts.iter().map(|s| s.as_str()).collect::<Vec<_>>()).unwrap()).collect();
    let start = std::time::Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (model, texts, serial) = (model.clone(), &texts[t], &serial[t]);
            s.spawn(move || {
                let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
                for i in 0..iters {
                    let got = model.embed(&refs).unwrap();
                    let same = got.iter().flatten().map(|v| v.to_bits()).eq(serial.iter().flatten().map(|v| v.to_bits()));
                    assert!(same, "thread {t} iteration {i}: result differs from the serial result");
                }
            });
        }
    });
    eprintln!("{threads} threads x {iters} embeds (2 texts each): all bitwise equal to serial, {:.1} s", start.elapsed().as_secs_f64());
}
