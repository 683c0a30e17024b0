//! Every model family against its Python reference: the tiny random
//! checkpoints under tests/fixtures/<family>/ (made by
//! tests/fixtures/make_families.py with transformers / sentence-transformers)
//! must give the committed reference outputs: the same token ids, worst
//! cosine ≥ 0.99999 and max abs difference < 1e-4 (f32). Runs on CPU in CI;
//! `BRAID_TEST_DEVICE=cuda` runs it on a GPU. Also: bad model directories are
//! errors naming the file and the field.

use braid_nn::{CrossEncoder, SentenceEmbedder};
use braid_runtime::Device;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn device() -> Device {
    Device::parse(&std::env::var("BRAID_TEST_DEVICE").unwrap_or_else(|_| "cpu".into())).unwrap()
}

fn reference(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// (worst cosine, max abs diff) of rows against reference rows.
fn compare(got: &[Vec<f32>], want: &[Vec<f64>]) -> (f64, f64) {
    assert_eq!(got.len(), want.len());
    let (mut cos, mut abs) = (1.0f64, 0.0f64);
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.len(), w.len());
        let dot: f64 = g.iter().zip(w).map(|(a, b)| *a as f64 * b).sum();
        let na = g.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
        let nb = w.iter().map(|b| b * b).sum::<f64>().sqrt();
        let c = dot / (na * nb);
        cos = if c.is_nan() { f64::NAN } else { cos.min(c) };
        for (a, b) in g.iter().zip(w) {
            let d = (*a as f64 - b).abs();
            abs = if d.is_nan() { f64::NAN } else { abs.max(d) };
        }
    }
    (cos, abs)
}

fn assert_close(name: &str, cos: f64, abs: f64) {
    eprintln!("{name}: worst cosine {cos:.9}, max abs diff {abs:.2e}");
    assert!(cos >= 0.99999, "{name}: worst cosine {cos}");
    assert!(abs < 1e-4, "{name}: max abs diff {abs}");
}

fn embed_family(name: &str) {
    let dir = fixtures().join(name);
    let r = reference(&dir);
    let model = SentenceEmbedder::load(&dir, &device()).unwrap_or_else(|e| panic!("{name}: {e}"));
    eprintln!("{name}: {}", model.describe());
    assert_eq!(model.max_seq_length(), r["max_seq_length"].as_u64().unwrap() as usize);
    let (mut cos, mut abs) = (1.0f64, 0.0f64);
    let mut n = 0;
    for b in r["batches"].as_array().unwrap() {
        let texts: Vec<&str> = b["sentences"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        for (t, ids) in texts.iter().zip(b["token_ids"].as_array().unwrap()) {
            let want: Vec<u32> = ids.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            assert_eq!(model.tokenizer().encode(t).unwrap(), want, "{name}: token ids of {t:?}");
        }
        let got = model.embed(&texts).unwrap();
        let want: Vec<Vec<f64>> = b["embeddings"].as_array().unwrap().iter().map(f64s).collect();
        let (c, a) = compare(&got, &want);
        cos = cos.min(c);
        abs = abs.max(a);
        n += texts.len();
    }
    assert!(n >= 12);
    assert_close(name, cos, abs);
}

fn cross_family(name: &str) {
    let dir = fixtures().join(name);
    let r = reference(&dir);
    let model = CrossEncoder::load(&dir, &device()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let query = r["query"].as_str().unwrap();
    let texts: Vec<&str> = r["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    for (t, ids) in texts.iter().zip(r["pair_token_ids"].as_array().unwrap()) {
        let want: Vec<u32> = ids.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(model.tokenize_pair(query, t).unwrap().0, want, "{name}: token ids of ({query:?}, {t:?})");
    }
    let got = model.rerank(query, &texts).unwrap();
    let want: Vec<Vec<f64>> = r["pair_logits"].as_array().unwrap().iter().map(f64s).collect();
    let (_, abs) = compare(&got, &want);
    let flat_g: Vec<f32> = got.concat();
    let flat_w: Vec<f64> = want.concat();
    let (cos, _) = compare(&[flat_g], &[flat_w]);
    assert_close(&format!("{name} pairs"), cos, abs);
    let singles: Vec<&str> = r["single_texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    let got = model.predict(&singles).unwrap();
    let want: Vec<Vec<f64>> = r["single_logits"].as_array().unwrap().iter().map(f64s).collect();
    let (_, abs) = compare(&got, &want);
    let (cos, _) = compare(&[got.concat()], &[want.concat()]);
    assert_close(&format!("{name} single texts"), cos, abs);
}

#[test]
fn bert_cls_bge_style() {
    embed_family("bert_cls");
}
#[test]
fn bert_mean_e5_gte_style() {
    embed_family("bert_mean");
}
#[test]
fn bert_weightedmean_dense_tanh_lowercase() {
    embed_family("bert_dense");
}
#[test]
fn bert_lasttoken_dense_identity() {
    embed_family("bert_lasttoken");
}
#[test]
fn distilbert() {
    embed_family("distilbert");
}
#[test]
fn xlm_roberta() {
    embed_family("xlm_roberta");
}
#[test]
fn mpnet_relative_position_bias() {
    embed_family("mpnet");
}
#[test]
fn modernbert_rotary_geglu_sliding_window() {
    embed_family("modernbert");
}
#[test]
fn nomic_bert_rotary_swiglu() {
    embed_family("nomic_bert");
}
#[test]
fn cross_encoder_bert() {
    cross_family("cross_bert");
}
#[test]
fn cross_encoder_xlm_roberta_labels() {
    cross_family("cross_xlm_roberta");
    let m = CrossEncoder::load(fixtures().join("cross_xlm_roberta"), &device()).unwrap();
    assert_eq!(m.labels(), ["negative", "neutral", "positive"]);
}

/// A copy of a fixture in a temp dir, with `edit` applied.
fn broken(name: &str, tag: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let src = fixtures().join(name);
    let dst = std::env::temp_dir().join(format!("braid-families-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    copy_dir(&src, &dst);
    edit(&dst);
    dst
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

fn edit_json(path: &Path, f: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_string(&v).unwrap()).unwrap();
}

fn load_err(dir: &Path) -> String {
    let e = SentenceEmbedder::load(dir, &Device::cpu().unwrap()).expect_err("a broken model directory must not load").to_string();
    let _ = std::fs::remove_dir_all(dir);
    e
}

#[test]
fn bad_model_directories_are_clear_errors() {
    let d = broken("bert_cls", "type", |d| edit_json(&d.join("config.json"), |v| v["model_type"] = "gpt2".into()));
    let e = load_err(&d);
    assert!(e.contains("config.json") && e.contains("model_type") && e.contains("gpt2"), "{e}");

    let d = broken("bert_cls", "pool", |d| edit_json(&d.join("1_Pooling/config.json"), |v| v["pooling_mode"] = "median".into()));
    let e = load_err(&d);
    assert!(e.contains("1_Pooling") && e.contains("pooling_mode") && e.contains("median"), "{e}");

    let d = broken("bert_cls", "shape", |d| edit_json(&d.join("config.json"), |v| v["intermediate_size"] = 48.into()));
    let e = load_err(&d);
    assert!(e.contains("intermediate.dense.weight") && e.contains("shape"), "{e}");

    let d = broken("bert_cls", "missing", |d| edit_json(&d.join("config.json"), |v| v["num_hidden_layers"] = 3.into()));
    let e = load_err(&d);
    assert!(e.contains("encoder.layer.2") && e.contains("missing"), "{e}");

    let d = broken("xlm_roberta", "vocab", |d| std::fs::copy(fixtures().join("bert_cls/tokenizer.json"), d.join("tokenizer.json")).map(|_| ()).unwrap());
    let e = load_err(&d);
    assert!(e.contains("tokenizer.json") && e.contains("vocab_size"), "{e}");

    for bad in [0, 41] {
        let d = broken("bert_cls", &format!("len{bad}"), |d| edit_json(&d.join("sentence_bert_config.json"), |v| v["max_seq_length"] = bad.into()));
        let e = load_err(&d);
        assert!(e.contains("sentence_bert_config.json") && e.contains("max_seq_length"), "{e}");
    }

    let d = broken("cross_bert", "classifier-as-embedder", |_| {});
    let e = load_err(&d);
    assert!(e.contains("ForSequenceClassification"), "{e}");
}

#[test]
fn no_modules_json_gets_the_documented_defaults() {
    let d = broken("bert_mean", "defaults", |d| {
        std::fs::remove_file(d.join("modules.json")).unwrap();
        std::fs::remove_file(d.join("sentence_bert_config.json")).unwrap();
    });
    let m = SentenceEmbedder::load(&d, &Device::cpu().unwrap()).unwrap();
    let desc = m.describe();
    assert!(desc.contains("pooling mean") && desc.contains("no modules.json"), "{desc}");
    assert!(m.modules().post.is_empty(), "no Dense, no Normalize: {desc}");
    assert_eq!(m.max_seq_length(), 24, "tokenizer_config.json's model_max_length");
    let e = m.embed(&["hello"]).unwrap();
    let norm: f32 = e[0].iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() > 1e-3, "without Normalize the embedding is not unit length: {norm}");
    let _ = std::fs::remove_dir_all(&d);
}
