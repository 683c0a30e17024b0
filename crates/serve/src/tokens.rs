//! The server's tokenizer: the model's tokenizer.json through the HF
//! `tokenizers` crate with no truncation of its own, so each request can
//! choose: truncate (`Right`, as `braid embed` does, or `Left`) or refuse a
//! text over the model's length (413 naming both lengths). Owns that
//! choice, prompts (config_sentence_transformers.json), token-id
//! validation, `/tokenize`'s token list and `/decode`. A long text is cut
//! before it is tokenized ([`crate::front::encode_window`]).

use crate::error::ApiError;
use axum::http::StatusCode;
use braid_runtime::{Error, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use tokenizers::{PostProcessor, Tokenizer, TruncationDirection};

/// Which end a text over the model's length loses.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum Direction {
    #[default]
    #[serde(alias = "right")]
    Right,
    #[serde(alias = "left")]
    Left,
}

/// A token as `/tokenize` lists it (TEI's shape).
#[derive(serde::Serialize)]
pub struct TokenInfo {
    pub id: u32,
    pub text: String,
    pub special: bool,
    pub start: Option<usize>,
    pub stop: Option<usize>,
}

pub struct ServeTokenizer {
    inner: Tokenizer,
    max_len: usize,
    vocab: usize,
    /// Lower-case texts first (sentence_bert_config.json's `do_lower_case`,
    /// as the model's own tokenizer in braid-nn does).
    lowercase: bool,
}

impl ServeTokenizer {
    /// `dir`/tokenizer.json; `max_len` counts special tokens.
    pub fn load(dir: &Path, max_len: usize, vocab: usize, lowercase: bool) -> Result<ServeTokenizer> {
        let path = dir.join("tokenizer.json");
        let io = |message: String| Error::Io { path: path.display().to_string(), message };
        let mut inner = Tokenizer::from_file(&path).map_err(|e| io(format!("not a valid tokenizer.json: {e}")))?;
        inner.with_truncation(None).map_err(|e| io(format!("cannot unset truncation: {e}")))?;
        inner.with_padding(None);
        Ok(ServeTokenizer { inner, max_len, vocab, lowercase })
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The encoding of `text` as the model sees it, the byte offset its
    /// offsets are relative to, and the bytes tokenized. Only a window of a
    /// long text is tokenized ([`crate::front::encode_window`]): enough for
    /// the tokens kept, plus one to tell that a text is over the length.
    fn encoding(&self, text: &str, special: bool, truncate: bool, dir: Direction) -> std::result::Result<(tokenizers::Encoding, usize, usize), ApiError> {
        // Lower-casing keeps byte lengths for ASCII only; offsets into a
        // lower-cased non-ASCII text may then be off, which only `/tokenize`'s
        // `start`/`stop` would show.
        let lowered;
        let text = if self.lowercase {
            lowered = text.to_lowercase();
            lowered.as_str()
        } else {
            text
        };
        let bad = |e: tokenizers::Error| ApiError::new(StatusCode::BAD_REQUEST, format!("cannot tokenize {:?}: {e}", text.chars().take(40).collect::<String>()));
        let added = if special { self.inner.get_post_processor().map_or(0, |p| p.added_tokens(false)) } else { 0 };
        let room = self.max_len.saturating_sub(added);
        let (mut enc, base, used) = crate::front::encode_window(text, room + 1, truncate && dir == Direction::Left, |t| self.inner.encode(t, false).map_err(bad), |e| e.len())?;
        if enc.len() > room {
            if !truncate {
                let whole = used == text.len();
                return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("input of {}{} tokens is longer than the model's maximum of {} tokens; send truncate: true or a shorter text", if whole { "" } else { "more than " }, enc.len() + added, self.max_len)).param("inputs"));
            }
            let d = match dir {
                Direction::Right => TruncationDirection::Right,
                Direction::Left => TruncationDirection::Left,
            };
            enc.truncate(room, 0, d);
        }
        if special {
            enc = self.inner.post_process(enc, None, true).map_err(bad)?;
        }
        Ok((enc, base, used))
    }

    /// Token ids of `text` (special tokens added when `special`), cut to
    /// the model's length from `dir`, or a 413 when `truncate` is false.
    pub fn encode_ids(&self, text: &str, special: bool, truncate: bool, dir: Direction) -> std::result::Result<Vec<u32>, ApiError> {
        Ok(self.encode_ids_counted(text, special, truncate, dir)?.0)
    }

    /// As [`encode_ids`](Self::encode_ids), with the bytes of `text` that
    /// were tokenized (less than its length when it was cut first).
    pub fn encode_ids_counted(&self, text: &str, special: bool, truncate: bool, dir: Direction) -> std::result::Result<(Vec<u32>, usize), ApiError> {
        let (enc, _, used) = self.encoding(text, special, truncate, dir)?;
        Ok((enc.get_ids().to_vec(), used))
    }

    /// `/tokenize`'s list for `text`.
    pub fn tokens(&self, text: &str, special: bool, truncate: bool, dir: Direction) -> std::result::Result<Vec<TokenInfo>, ApiError> {
        let (enc, base, _) = self.encoding(text, special, truncate, dir)?;
        let mut out = Vec::with_capacity(enc.len());
        for i in 0..enc.len() {
            let is_special = enc.get_special_tokens_mask()[i] == 1;
            let (s, e) = enc.get_offsets()[i];
            // Offsets are relative to the window that was tokenized.
            let (start, stop) = if is_special { (None, None) } else { (Some(base + s), Some(base + e)) };
            let text = match (start, stop) {
                (Some(s), Some(e)) => text.get(s..e).unwrap_or_default().to_string(),
                _ => enc.get_tokens()[i].clone(),
            };
            out.push(TokenInfo { id: enc.get_ids()[i], text, special: is_special, start, stop });
        }
        Ok(out)
    }

    /// Check caller-given ids: in the vocabulary, not empty, within the
    /// model's length (or cut to it when `truncate`).
    pub fn check_ids(&self, mut ids: Vec<u32>, truncate: bool, dir: Direction) -> std::result::Result<Vec<u32>, ApiError> {
        if ids.is_empty() {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "an input of token ids is empty".into()).param("input"));
        }
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= self.vocab) {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("token id {bad} is outside the model's vocabulary (0..{})", self.vocab)).param("input"));
        }
        if ids.len() > self.max_len {
            if !truncate {
                return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("input of {} tokens is longer than the model's maximum of {} tokens", ids.len(), self.max_len)).param("input"));
            }
            match dir {
                Direction::Right => ids.truncate(self.max_len),
                Direction::Left => {
                    ids.drain(..ids.len() - self.max_len);
                }
            }
        }
        Ok(ids)
    }

    /// Text of `ids` (`/decode`).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> std::result::Result<String, ApiError> {
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= self.vocab) {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("token id {bad} is outside the model's vocabulary (0..{})", self.vocab)).param("ids"));
        }
        self.inner.decode(ids, skip_special).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("cannot decode: {e}")))
    }
}

/// The model's named prompts and its default prompt's name, from
/// `dir`/config_sentence_transformers.json (none if the file is absent; a
/// file that is not JSON, or prompts that are not strings, is an error).
pub fn read_prompts(dir: &Path) -> Result<(BTreeMap<String, String>, Option<String>)> {
    let path = dir.join("config_sentence_transformers.json");
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok((BTreeMap::new(), None)) };
    let bad = |m: String| Error::Io { path: path.display().to_string(), message: m };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let mut prompts = BTreeMap::new();
    if let Some(p) = v.get("prompts").filter(|p| !p.is_null()) {
        let obj = p.as_object().ok_or_else(|| bad("\"prompts\" is not an object".into()))?;
        for (k, v) in obj {
            prompts.insert(k.clone(), v.as_str().ok_or_else(|| bad(format!("prompt {k:?} is not a string")))?.to_string());
        }
    }
    let default = v.get("default_prompt_name").and_then(|d| d.as_str()).map(str::to_string);
    Ok((prompts, default))
}
