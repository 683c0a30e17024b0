//! Weights files: missing tensors, wrong shapes or dtypes are errors naming
//! the tensor; truncated or corrupt files and bad configs are errors, never
//! crashes. Uses small files made here (a tiny random BERT).

use braid_nn::reference::check::tiny_bert;
use braid_nn::{BertConfig, BertModel, HostWeights, Rng, SentenceEmbedder};
use braid_runtime::{DType, Device, Error};
use std::path::PathBuf;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("braid-nn-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn model_err(r: braid_runtime::Result<BertModel>) -> String {
    match r {
        Err(Error::Model(m)) => m,
        Err(e) => panic!("expected a model error, got {e}"),
        Ok(_) => panic!("expected a model error, got a model"),
    }
}

#[test]
fn safetensors_round_trip_and_load() {
    let (w, config) = tiny_bert(&mut Rng::new(3)).unwrap();
    let path = tmp("roundtrip").join("model.safetensors");
    w.save_safetensors(&path).unwrap();
    let back = HostWeights::load_safetensors(&path).unwrap();
    for n in w.names() {
        assert_eq!(w.get_any(n).unwrap(), back.get_any(n).unwrap(), "{n}");
    }
    BertModel::load(&back, &config, &Device::cpu().unwrap(), DType::F32).unwrap();
}

/// A file is mapped, not read: f32 tensors are views into the map (no host
/// copy), f16/bf16 ones are widened exactly, and a renamed tensor shares
/// its view.
#[test]
fn file_tensors_are_views_into_the_map() {
    use std::borrow::Cow;
    let path = tmp("views").join("model.safetensors");
    let mut src = HostWeights::new("made here");
    let vals: Vec<f32> = (0..96).map(|i| i as f32 * 0.25 - 7.0).collect();
    src.insert("a.weight", &[8, 12], vals.clone()).unwrap();
    src.save_safetensors(&path).unwrap();
    let w = HostWeights::load_safetensors(&path).unwrap();
    let t = w.get("a.weight", &[8, 12]).unwrap();
    assert!(matches!(t.data, Cow::Borrowed(_)), "an f32 tensor of a mapped file must be a view, not a copy");
    assert_eq!(&*t.data, &vals[..]);
    let mut renamed = HostWeights::new("renamed");
    renamed.alias("b", &w, "a.weight", &[8, 12]).unwrap();
    let b = renamed.get("b", &[8, 12]).unwrap();
    assert!(matches!(b.data, Cow::Borrowed(_)));
    assert_eq!(b.data.as_ptr(), t.data.as_ptr(), "an alias shares the mapped bytes");
    assert!(renamed.alias("c", &w, "a.weight", &[12, 8]).unwrap_err().to_string().contains("a.weight"));

    // f16 and bf16 files: widened on request, exactly (these values are representable).
    for (dtype, enc) in [
        (safetensors::Dtype::F16, (|v: f32| half_bits(v)) as fn(f32) -> u16),
        (safetensors::Dtype::BF16, |v: f32| (v.to_bits() >> 16) as u16),
    ] {
        let bytes: Vec<u8> = vals.iter().flat_map(|&v| enc(v).to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(dtype, vec![8, 12], &bytes).unwrap();
        let image = safetensors::serialize(vec![("h".to_string(), view)], None).unwrap();
        let p = tmp("views").join(format!("{dtype:?}.safetensors"));
        std::fs::write(&p, image).unwrap();
        let w = HostWeights::load_safetensors(&p).unwrap();
        assert_eq!(&*w.get("h", &[8, 12]).unwrap().data, &vals[..], "{dtype:?}");
    }
}

/// f16 bits of a value that f16 holds exactly (multiples of 1/4 below 2^10).
fn half_bits(v: f32) -> u16 {
    if v == 0.0 {
        return 0;
    }
    let sign = if v < 0.0 { 0x8000u16 } else { 0 };
    let a = v.abs();
    let e = a.log2().floor() as i32;
    let man = ((a / 2f32.powi(e) - 1.0) * 1024.0).round() as u16;
    sign | (((e + 15) as u16) << 10) | man
}

#[test]
fn missing_misshapen_and_non_float_tensors_are_named() {
    let device = Device::cpu().unwrap();
    let (w, config) = tiny_bert(&mut Rng::new(4)).unwrap();
    let rebuild = |skip: &str, reshape: Option<&str>| {
        let mut out = HostWeights::new("test.safetensors");
        for n in w.names() {
            let t = w.get_any(n).unwrap();
            if n == skip {
                continue;
            }
            if Some(n) == reshape {
                out.insert(n, &[t.data.len()], t.data.to_vec()).unwrap();
            } else {
                out.insert(n, &t.shape, t.data.to_vec()).unwrap();
            }
        }
        out
    };
    let name = "encoder.layer.1.attention.self.key.weight";
    let m = model_err(BertModel::load(&rebuild(name, None), &config, &device, DType::F32));
    assert!(m.contains(name) && m.contains("missing"), "{m}");
    let m = model_err(BertModel::load(&rebuild("", Some(name)), &config, &device, DType::F32));
    assert!(m.contains(name) && m.contains("[1024]") && m.contains("[32, 32]"), "{m}");

    // A tensor stored as I64 where a float is needed.
    use safetensors::tensor::{Dtype, TensorView};
    let ids = vec![0u8; 8 * 4];
    let f = vec![0u8; 4 * 4];
    let bytes = safetensors::serialize(
        vec![("a.weight".to_string(), TensorView::new(Dtype::I64, vec![2, 2], &ids).unwrap()), ("a.bias".to_string(), TensorView::new(Dtype::F32, vec![2, 2], &f).unwrap())],
        None,
    )
    .unwrap();
    let w = HostWeights::from_safetensors(&bytes, "ints.safetensors").unwrap();
    match w.get("a.weight", &[2, 2]) {
        Err(Error::Model(m)) => assert!(m.contains("a.weight") && m.contains("I64"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn truncated_or_corrupt_files_are_errors() {
    let (w, _) = tiny_bert(&mut Rng::new(5)).unwrap();
    let good = w.to_safetensors().unwrap();
    for cut in [0, 4, 8, 20, good.len() / 2, good.len() - 1] {
        let r = HostWeights::from_safetensors(&good[..cut], "cut.safetensors");
        assert!(matches!(r, Err(Error::Io { .. })), "cut at {cut}: {:?}", r.map(|_| ()));
    }
    let mut bad = good.clone();
    bad[8..16].copy_from_slice(b"{garbage");
    assert!(matches!(HostWeights::from_safetensors(&bad, "bad"), Err(Error::Io { .. })));
    let mut huge = good.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(HostWeights::from_safetensors(&huge, "huge"), Err(Error::Io { .. })));
    let mut rng = Rng::new(6);
    for _ in 0..200 {
        let mut b = good.clone();
        let i = rng.below(b.len().min(400) as u64) as usize;
        b[i] = rng.next_u64() as u8;
        let _ = HostWeights::from_safetensors(&b, "fuzz"); // any result but a crash
    }
    match HostWeights::load_safetensors("/nonexistent/model.safetensors") {
        Err(Error::Io { path, .. }) => assert!(path.contains("nonexistent")),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn bad_configs_and_model_dirs_are_errors() {
    assert!(matches!(BertConfig::from_json("{", "c.json"), Err(Error::Io { .. })));
    assert!(matches!(BertConfig::from_json(r#"{"vocab_size": 5}"#, "c.json"), Err(Error::Io { .. })));
    let c = r#"{"vocab_size": 5, "hidden_size": 10, "num_hidden_layers": 1, "num_attention_heads": 3, "intermediate_size": 4}"#;
    assert!(matches!(BertConfig::from_json(c, "c.json"), Err(Error::Model(_))));
    let c = r#"{"vocab_size": 5, "hidden_size": 12, "num_hidden_layers": 1, "num_attention_heads": 3, "intermediate_size": 4, "hidden_act": "swish"}"#;
    assert!(matches!(BertConfig::from_json(c, "c.json"), Err(Error::Model(_))));
    let device = Device::cpu().unwrap();
    assert!(matches!(SentenceEmbedder::load("/nonexistent-model-dir", &device), Err(Error::Io { .. })));
    // A directory with weights and config but a corrupt tokenizer.json.
    let dir = tmp("dir");
    let (w, _) = tiny_bert(&mut Rng::new(7)).unwrap();
    w.save_safetensors(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"model_type": "bert", "vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 40}"#).unwrap();
    std::fs::write(dir.join("tokenizer.json"), "{ not json").unwrap();
    match SentenceEmbedder::load(&dir, &device) {
        Err(Error::Io { path, message }) => assert!(path.ends_with("tokenizer.json") && message.contains("tokenizer"), "{path}: {message}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn bert_input_shape_errors() {
    let (w, config) = tiny_bert(&mut Rng::new(8)).unwrap();
    let model = BertModel::load(&w, &config, &Device::cpu().unwrap(), DType::F32).unwrap();
    let mut input = braid_nn::BertInput::from_rows(&[vec![1, 2, 3], vec![4]], 0);
    assert_eq!(input.mask, vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
    input.ids.pop();
    assert!(matches!(model.embed(&input), Err(Error::Shape { .. })));
    let long = braid_nn::BertInput::from_rows(&[vec![1; 41]], 0);
    assert!(matches!(model.embed(&long), Err(Error::Shape { .. })));
    let oov = braid_nn::BertInput::from_rows(&[vec![1, 50]], 0);
    assert!(matches!(model.embed(&oov), Err(Error::InvalidArgument(_))));
}
