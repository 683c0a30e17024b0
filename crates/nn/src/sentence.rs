//! sentence-transformers modules after the encoder, read from a model
//! directory's `modules.json`: [`Pooling`] (`1_Pooling/config.json`: CLS,
//! mean, max, mean-sqrt-len, weighted mean, last token, alone or
//! concatenated), [`Dense`] (`2_Dense`: a linear layer and its activation)
//! and Normalize; plus [`SbertConfig`] (`sentence_bert_config.json`:
//! `max_seq_length`, `do_lower_case`). A directory without `modules.json`
//! gets sentence-transformers' own defaults for a plain HF model (mean
//! pooling, no Dense, no Normalize), and [`SentenceModules::notes`] says so.
//!
//! Pooling, Dense and Normalize run on the device where an op exists (mean,
//! weighted mean, CLS, last token; Dense with identity/ReLU/GELU; L2
//! normalisation); the rest (max, mean-sqrt-len, concatenated modes, tanh)
//! runs on the host in f64 over the pooled rows. Anything braid cannot
//! honour — an unknown module type, pooling mode or activation — is an error
//! naming the file and the field.

use crate::models::{Encoder, Hidden};
use crate::{ops, BertInput, HostWeights, Linear, Tensor};
use braid_runtime::{Activation, Device, DType, Error, Result};
use std::path::Path;

/// One pooling mode (sentence-transformers' names in the docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolingMode {
    Cls,
    Max,
    Mean,
    MeanSqrtLen,
    WeightedMean,
    LastToken,
}

impl PoolingMode {
    pub fn name(self) -> &'static str {
        match self {
            PoolingMode::Cls => "cls",
            PoolingMode::Max => "max",
            PoolingMode::Mean => "mean",
            PoolingMode::MeanSqrtLen => "mean_sqrt_len_tokens",
            PoolingMode::WeightedMean => "weightedmean",
            PoolingMode::LastToken => "lasttoken",
        }
    }
    /// sentence-transformers' string (`pooling_mode`) form.
    fn parse(s: &str) -> Option<PoolingMode> {
        Some(match s {
            "cls" => PoolingMode::Cls,
            "max" => PoolingMode::Max,
            "mean" => PoolingMode::Mean,
            "mean_sqrt_len_tokens" => PoolingMode::MeanSqrtLen,
            "weightedmean" => PoolingMode::WeightedMean,
            "lasttoken" => PoolingMode::LastToken,
            _ => return None,
        })
    }
}

/// Concatenation order of sentence-transformers' `Pooling.forward`.
const ORDER: [(PoolingMode, &str); 6] = [
    (PoolingMode::Cls, "pooling_mode_cls_token"),
    (PoolingMode::Max, "pooling_mode_max_tokens"),
    (PoolingMode::Mean, "pooling_mode_mean_tokens"),
    (PoolingMode::MeanSqrtLen, "pooling_mode_mean_sqrt_len_tokens"),
    (PoolingMode::WeightedMean, "pooling_mode_weightedmean_tokens"),
    (PoolingMode::LastToken, "pooling_mode_lasttoken"),
];

/// `1_Pooling/config.json`: the modes, concatenated in sentence-transformers' order.
#[derive(Clone, Debug, PartialEq)]
pub struct Pooling {
    pub modes: Vec<PoolingMode>,
}

impl Pooling {
    /// Parse either form: `"pooling_mode": "cls"` (or a list) or the
    /// `pooling_mode_*` booleans. `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Pooling> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| Error::Io { path: origin.into(), message: format!("not valid JSON: {e}") })?;
        let obj = v.as_object().ok_or_else(|| Error::Model(format!("{origin}: expected a JSON object")))?;
        let mut on = Vec::new();
        if let Some(m) = obj.get("pooling_mode") {
            let names: Vec<&serde_json::Value> = match m {
                serde_json::Value::Array(a) => a.iter().collect(),
                other => vec![other],
            };
            for n in names {
                let s = n.as_str().ok_or_else(|| Error::Model(format!("{origin}: field pooling_mode must be a string or a list of strings, got {n}")))?;
                on.push(PoolingMode::parse(s).ok_or_else(|| {
                    Error::Model(format!("{origin}: field pooling_mode {s:?} is not a pooling mode braid has (cls, max, mean, mean_sqrt_len_tokens, weightedmean, lasttoken)"))
                })?);
            }
        }
        for (key, val) in obj {
            if let Some(rest) = key.strip_prefix("pooling_mode_") {
                let set = val.as_bool().ok_or_else(|| Error::Model(format!("{origin}: field {key} must be true or false, got {val}")))?;
                match ORDER.iter().find(|(_, k)| k == key) {
                    Some((mode, _)) if set => on.push(*mode),
                    Some(_) => {}
                    None if set => return Err(Error::Model(format!("{origin}: field {key} (pooling mode {rest:?}) is not a pooling mode braid has"))),
                    None => {}
                }
            }
        }
        let modes: Vec<PoolingMode> = ORDER.iter().map(|(m, _)| *m).filter(|m| on.contains(m)).collect();
        if modes.is_empty() {
            return Err(Error::Model(format!("{origin}: no pooling mode is set (pooling_mode or a pooling_mode_* field)")));
        }
        Ok(Pooling { modes })
    }

    pub fn describe(&self) -> String {
        self.modes.iter().map(|m| m.name()).collect::<Vec<_>>().join("+")
    }
}

/// A Dense module's activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenseAct {
    Identity,
    Tanh,
    Relu,
    Gelu,
}

/// `2_Dense`: `act(W x + b)` on the pooled embedding.
#[derive(Clone, Debug)]
pub struct Dense {
    pub linear: Linear,
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
    pub in_features: usize,
    pub out_features: usize,
    pub act: DenseAct,
}

impl Dense {
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Dense> {
        let cpath = dir.join("config.json");
        let origin = cpath.display().to_string();
        let v: serde_json::Value = serde_json::from_str(&read(&cpath)?).map_err(|e| Error::Io { path: origin.clone(), message: format!("not valid JSON: {e}") })?;
        let field = |k: &str| v.get(k).and_then(|x| x.as_u64()).map(|x| x as usize).ok_or_else(|| Error::Model(format!("{origin}: field {k} is missing or not a number")));
        let (inp, out) = (field("in_features")?, field("out_features")?);
        let bias = v.get("bias").and_then(|b| b.as_bool()).unwrap_or(true);
        let act_name = v.get("activation_function").and_then(|a| a.as_str()).unwrap_or("torch.nn.modules.activation.Tanh");
        let act = match act_name.rsplit('.').next().unwrap_or("") {
            "Identity" => DenseAct::Identity,
            "Tanh" => DenseAct::Tanh,
            "ReLU" => DenseAct::Relu,
            "GELU" => DenseAct::Gelu,
            _ => return Err(Error::Model(format!("{origin}: field activation_function {act_name:?} is not supported (Identity, Tanh, ReLU, GELU)"))),
        };
        let wpath = dir.join("model.safetensors");
        if !wpath.is_file() {
            return Err(Error::Io { path: wpath.display().to_string(), message: "Dense weights not found (braid reads model.safetensors, not pytorch_model.bin)".into() });
        }
        let w = HostWeights::load_safetensors(&wpath)?;
        let weight = w.get("linear.weight", &[out, inp])?.data.into_owned();
        let bias_v = if bias { Some(w.get("linear.bias", &[out])?.data.into_owned()) } else { None };
        let linear = Linear::load(&w, "linear", inp, out, bias, device, dtype)?;
        Ok(Dense { linear, weight, bias: bias_v, in_features: inp, out_features: out, act })
    }

    fn host(&self, x: &[f32]) -> Vec<f32> {
        x.chunks(self.in_features)
            .flat_map(|row| {
                (0..self.out_features).map(move |o| {
                    let w = &self.weight[o * self.in_features..][..self.in_features];
                    let acc: f64 = w.iter().zip(row).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() + self.bias.as_ref().map_or(0.0, |b| b[o] as f64);
                    host_act(acc, self.act) as f32
                })
            })
            .collect()
    }
}

fn host_act(x: f64, act: DenseAct) -> f64 {
    match act {
        DenseAct::Identity => x,
        DenseAct::Tanh => x.tanh(),
        DenseAct::Relu => x.max(0.0),
        DenseAct::Gelu => 0.5 * x * (1.0 + libm_erf(x / std::f64::consts::SQRT_2)),
    }
}

/// The f64 erf of the reference implementation.
fn libm_erf(x: f64) -> f64 {
    crate::reference::erf(x)
}

/// A module after pooling.
#[derive(Clone, Debug)]
pub enum PostModule {
    Dense(Dense),
    Normalize,
}

/// `sentence_bert_config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct SbertConfig {
    pub max_seq_length: usize,
    pub do_lower_case: bool,
}

impl SbertConfig {
    /// Parse; `max_seq_length` must be in `1..=max_tokens` (the model's
    /// positions), else an error naming the file and the field. Absent, it
    /// is `default`.
    pub fn parse(text: &str, origin: &str, max_tokens: usize) -> Result<SbertConfig> {
        Self::parse_or(text, origin, max_tokens, max_tokens)
    }

    pub fn parse_or(text: &str, origin: &str, max_tokens: usize, default: usize) -> Result<SbertConfig> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| Error::Io { path: origin.into(), message: format!("not valid JSON: {e}") })?;
        let max_seq_length = match v.get("max_seq_length") {
            None | Some(serde_json::Value::Null) => default,
            Some(m) => {
                let n = m.as_u64().ok_or_else(|| Error::Model(format!("{origin}: field max_seq_length must be a positive integer, got {m}")))?;
                if n == 0 || n as usize > max_tokens {
                    return Err(Error::Model(format!("{origin}: field max_seq_length {n} is outside 1..={max_tokens} (the model's max_position_embeddings allow {max_tokens} tokens)")));
                }
                n as usize
            }
        };
        let do_lower_case = match v.get("do_lower_case") {
            None | Some(serde_json::Value::Null) => false,
            Some(b) => b.as_bool().ok_or_else(|| Error::Model(format!("{origin}: field do_lower_case must be true or false, got {b}")))?,
        };
        Ok(SbertConfig { max_seq_length, do_lower_case })
    }
}

/// Everything after the encoder, and what was defaulted.
#[derive(Clone, Debug)]
pub struct SentenceModules {
    pub pooling: Pooling,
    pub post: Vec<PostModule>,
    pub sbert: SbertConfig,
    /// One line per default used (no modules.json, no sentence_bert_config.json, ...).
    pub notes: Vec<String>,
}

/// The max length when sentence_bert_config.json does not set one:
/// tokenizer_config.json's `model_max_length` (where sentence-transformers
/// 5+ saves it) capped at the model's positions, else the positions.
pub(crate) fn default_max_len(dir: &Path, max_tokens: usize) -> Result<usize> {
    let p = dir.join("tokenizer_config.json");
    if !p.is_file() {
        return Ok(max_tokens);
    }
    let v: serde_json::Value = serde_json::from_str(&read(&p)?).map_err(|e| Error::Io { path: p.display().to_string(), message: format!("not valid JSON: {e}") })?;
    // HF writes a huge sentinel (1e30) for "no limit"; as_u64 fails on it.
    Ok(match v.get("model_max_length").and_then(|m| m.as_u64()) {
        Some(0) => return Err(Error::Model(format!("{}: field model_max_length is 0", p.display()))),
        Some(n) => (n as usize).min(max_tokens),
        None => max_tokens,
    })
}

pub(crate) fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::Io { path: path.display().to_string(), message: e.to_string() })
}

impl SentenceModules {
    /// Read `dir`'s modules. `max_tokens` bounds `max_seq_length`.
    pub fn load(dir: &Path, max_tokens: usize, device: &Device, dtype: DType) -> Result<SentenceModules> {
        let mut notes = Vec::new();
        let default_len = default_max_len(dir, max_tokens)?;
        let sb_path = dir.join("sentence_bert_config.json");
        let sbert = if sb_path.is_file() {
            SbertConfig::parse_or(&read(&sb_path)?, &sb_path.display().to_string(), max_tokens, default_len)?
        } else {
            notes.push(format!("no sentence_bert_config.json: max_seq_length {default_len}, no lower-casing"));
            SbertConfig { max_seq_length: default_len, do_lower_case: false }
        };
        let mpath = dir.join("modules.json");
        if !mpath.is_file() {
            notes.push("no modules.json: sentence-transformers' defaults for a plain model (mean pooling, no Dense, no Normalize)".into());
            return Ok(SentenceModules { pooling: Pooling { modes: vec![PoolingMode::Mean] }, post: Vec::new(), sbert, notes });
        }
        let origin = mpath.display().to_string();
        let list: Vec<serde_json::Value> = serde_json::from_str(&read(&mpath)?).map_err(|e| Error::Io { path: origin.clone(), message: format!("not a JSON list of modules: {e}") })?;
        let mut pooling = None;
        let mut post = Vec::new();
        for (i, m) in list.iter().enumerate() {
            let ty = m.get("type").and_then(|t| t.as_str()).ok_or_else(|| Error::Model(format!("{origin}: module {i} has no field type")))?;
            let path = m.get("path").and_then(|t| t.as_str()).unwrap_or("");
            let sub = dir.join(path);
            match ty.rsplit('.').next().unwrap_or("") {
                "Transformer" if i == 0 => {}
                "Pooling" if pooling.is_none() && i == 1 => {
                    let p = sub.join("config.json");
                    pooling = Some(Pooling::parse(&read(&p)?, &p.display().to_string())?);
                }
                "Dense" if pooling.is_some() => post.push(PostModule::Dense(Dense::load(&sub, device, dtype)?)),
                "Normalize" if pooling.is_some() => post.push(PostModule::Normalize),
                _ => {
                    return Err(Error::Model(format!(
                        "{origin}: module {i} has type {ty:?} at a place braid cannot run it (braid runs Transformer, then Pooling, then any of Dense and Normalize)"
                    )))
                }
            }
        }
        let pooling = pooling.ok_or_else(|| Error::Model(format!("{origin}: no Pooling module (braid needs Transformer then Pooling)")))?;
        Ok(SentenceModules { pooling, post, sbert, notes })
    }

    /// Width of the final embedding for a `hidden`-wide encoder.
    pub fn dim(&self, hidden: usize) -> usize {
        let mut d = hidden * self.pooling.modes.len();
        for m in &self.post {
            if let PostModule::Dense(dn) = m {
                d = dn.out_features;
            }
        }
        d
    }

    /// Check the Dense widths chain from the pooled width; `origin` for errors.
    pub fn check_widths(&self, hidden: usize, origin: &str) -> Result<()> {
        let mut d = hidden * self.pooling.modes.len();
        for m in &self.post {
            if let PostModule::Dense(dn) = m {
                if dn.in_features != d {
                    return Err(Error::Model(format!("{origin}: a Dense module takes in_features {} but the embedding before it has {d}", dn.in_features)));
                }
                d = dn.out_features;
            }
        }
        Ok(())
    }

    /// One line: pooling, then the modules after it.
    pub fn describe(&self) -> String {
        let mut s = vec![format!("pooling {}", self.pooling.describe())];
        for m in &self.post {
            s.push(match m {
                PostModule::Dense(d) => format!("Dense {}->{} {:?}", d.in_features, d.out_features, d.act),
                PostModule::Normalize => "Normalize".into(),
            });
        }
        s.push(format!("max_seq_length {}", self.sbert.max_seq_length));
        if self.sbert.do_lower_case {
            s.push("lower-cased".into());
        }
        s.join(", ")
    }

    /// Sentence embeddings `[batch, dim]` of one tokenized batch.
    pub fn embed(&self, encoder: &dyn Encoder, input: &BertInput) -> Result<Tensor> {
        let hidden = encoder.forward_hidden(input)?;
        self.after(encoder, input, &hidden, true)
    }

    /// The last hidden state (packed or padded: [`Hidden::padded`] gives
    /// `[batch, seq, hidden]`) and the embedding `[batch, dim]` before a
    /// final Normalize module (the whole pipeline when there is none): what
    /// a server needs to answer `normalize: false` and token embeddings from
    /// one forward.
    pub fn forward_parts(&self, encoder: &dyn Encoder, input: &BertInput) -> Result<(Hidden, Tensor)> {
        let hidden = encoder.forward_hidden(input)?;
        let e = self.after(encoder, input, &hidden, false)?;
        Ok((hidden, e))
    }

    /// Pooling and the modules after it, over hidden states `h`; a final
    /// Normalize only when `final_normalize`.
    fn after(&self, encoder: &dyn Encoder, input: &BertInput, hidden: &Hidden, final_normalize: bool) -> Result<Tensor> {
        let (b, s, d) = (input.batch, input.seq, encoder.hidden_size());
        let device = encoder.device();
        // Mean pooling of a packed state runs per segment; every other
        // pooling reads the padded state.
        if let (Hidden::Packed { h, cu_seqlens, .. }, [PoolingMode::Mean]) = (hidden, self.pooling.modes.as_slice()) {
            let cur = Stage::Device(ops::segment_mean_pool(h, cu_seqlens)?);
            return self.post(cur, b, device, final_normalize);
        }
        let (h, mask) = hidden.padded()?;
        let cur = if self.pooling.modes.len() == 1 {
            match self.pooling.modes[0] {
                PoolingMode::Mean => Stage::Device(ops::mean_pool(&h, Some(&mask))?),
                PoolingMode::WeightedMean => {
                    // sentence-transformers: weights 1..=seq times the mask.
                    let w: Vec<f32> = input.mask.iter().enumerate().map(|(i, &m)| m * ((i % s.max(1)) + 1) as f32).collect();
                    Stage::Device(ops::mean_pool(&h, Some(&Tensor::from_slice(device, &w, &[b, s])?))?)
                }
                PoolingMode::Cls => Stage::Device(ops::embedding(&h.reshape(&[b * s, d])?, &(0..b).map(|i| (i * s) as u32).collect::<Vec<_>>())?),
                PoolingMode::LastToken => Stage::Device(ops::embedding(&h.reshape(&[b * s, d])?, &last_rows(input))?),
                _ => Stage::Host(host_pool(&h.to_vec()?, input, d, &self.pooling.modes), d * self.pooling.modes.len()),
            }
        } else {
            Stage::Host(host_pool(&h.to_vec()?, input, d, &self.pooling.modes), d * self.pooling.modes.len())
        };
        self.post(cur, b, device, final_normalize)
    }

    /// The modules after pooling (a final Normalize only when
    /// `final_normalize`), on `b` pooled rows.
    fn post(&self, mut cur: Stage, b: usize, device: &Device, final_normalize: bool) -> Result<Tensor> {
        let n_post = if !final_normalize && matches!(self.post.last(), Some(PostModule::Normalize)) { self.post.len() - 1 } else { self.post.len() };
        for m in &self.post[..n_post] {
            cur = match (m, cur) {
                (PostModule::Dense(dn), Stage::Device(t)) => match dn.act {
                    DenseAct::Identity => Stage::Device(dn.linear.forward(&t)?),
                    DenseAct::Relu => Stage::Device(dn.linear.forward_act(&t, Activation::Relu)?),
                    DenseAct::Gelu => Stage::Device(dn.linear.forward_act(&t, Activation::GeluErf)?),
                    DenseAct::Tanh => Stage::Host(dn.linear.forward(&t)?.to_vec()?.into_iter().map(|v| (v as f64).tanh() as f32).collect(), dn.out_features),
                },
                (PostModule::Dense(dn), Stage::Host(x, _)) => Stage::Host(dn.host(&x), dn.out_features),
                (PostModule::Normalize, Stage::Device(t)) => Stage::Device(ops::l2_normalize(&t)?),
                (PostModule::Normalize, Stage::Host(x, w)) => Stage::Host(host_normalize(x, w), w),
            };
        }
        match cur {
            Stage::Device(t) => Ok(t),
            Stage::Host(x, w) => Tensor::from_slice(device, &x, &[b, w]),
        }
    }
}

enum Stage {
    Device(Tensor),
    Host(Vec<f32>, usize),
}

/// Row index (in `[batch*seq]`) of each row's last token (right padding).
fn last_rows(input: &BertInput) -> Vec<u32> {
    (0..input.batch).map(|i| (i * input.seq + input.row_len(i).max(1) - 1) as u32).collect()
}

fn host_normalize(mut x: Vec<f32>, w: usize) -> Vec<f32> {
    for row in x.chunks_mut(w.max(1)) {
        let n = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v = (*v as f64 / n) as f32);
    }
    x
}

/// sentence-transformers' pooling on the host, modes concatenated.
fn host_pool(h: &[f32], input: &BertInput, d: usize, modes: &[PoolingMode]) -> Vec<f32> {
    let s = input.seq;
    let mut out = Vec::with_capacity(input.batch * d * modes.len());
    for i in 0..input.batch {
        let row = |j: usize| &h[(i * s + j) * d..][..d];
        let m = |j: usize| input.mask[i * s + j] as f64;
        let n = input.row_len(i);
        for mode in modes {
            let v: Vec<f64> = match mode {
                PoolingMode::Cls => row(0).iter().map(|&x| x as f64).collect(),
                PoolingMode::LastToken => row(n.max(1) - 1).iter().map(|&x| x as f64).collect(),
                PoolingMode::Max => (0..d).map(|k| (0..s).map(|j| if m(j) != 0.0 { row(j)[k] as f64 } else { -1e9 }).fold(f64::NEG_INFINITY, f64::max)).collect(),
                PoolingMode::Mean | PoolingMode::MeanSqrtLen | PoolingMode::WeightedMean => {
                    let wt = |j: usize| if *mode == PoolingMode::WeightedMean { m(j) * (j + 1) as f64 } else { m(j) };
                    let total: f64 = (0..s).map(wt).sum::<f64>().max(1e-9);
                    let div = if *mode == PoolingMode::MeanSqrtLen { total.sqrt() } else { total };
                    (0..d).map(|k| (0..s).map(|j| wt(j) * row(j)[k] as f64).sum::<f64>() / div).collect()
                }
            };
            out.extend(v.into_iter().map(|x| x as f32));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn pooling_forms() {
        let old = r#"{"word_embedding_dimension": 8, "pooling_mode_cls_token": false, "pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": true}"#;
        assert_eq!(Pooling::parse(old, "p").unwrap().modes, vec![PoolingMode::Max, PoolingMode::Mean]);
        assert_eq!(Pooling::parse(r#"{"pooling_mode": "cls"}"#, "p").unwrap().modes, vec![PoolingMode::Cls]);
        let e = Pooling::parse(r#"{"pooling_mode": "median"}"#, "x/1_Pooling/config.json").unwrap_err().to_string();
        assert!(e.contains("x/1_Pooling/config.json") && e.contains("pooling_mode") && e.contains("median"), "{e}");
        let e = Pooling::parse(r#"{"pooling_mode_median_tokens": true}"#, "p").unwrap_err().to_string();
        assert!(e.contains("pooling_mode_median_tokens"), "{e}");
        assert!(Pooling::parse(r#"{"pooling_mode_mean_tokens": false}"#, "p").is_err());
    }
    #[test]
    fn max_seq_length_bounds() {
        assert_eq!(SbertConfig::parse(r#"{"max_seq_length": 256}"#, "s", 512).unwrap().max_seq_length, 256);
        for bad in [r#"{"max_seq_length": 0}"#, r#"{"max_seq_length": 513}"#, r#"{"max_seq_length": -1}"#, r#"{"max_seq_length": "x"}"#] {
            let e = SbertConfig::parse(bad, "dir/sentence_bert_config.json", 512).unwrap_err().to_string();
            assert!(e.contains("dir/sentence_bert_config.json") && e.contains("max_seq_length"), "{e}");
        }
    }
}
