//! [`TextTokenizer`]: the HF `tokenizers` crate over a model's
//! tokenizer.json, set to truncate at the model's max length (special
//! tokens included, as sentence-transformers does) with padding done per
//! batch, to the longest text of the batch ([`BertInput::from_rows`]).

use crate::BertInput;
use braid_runtime::{Error, Result};
use std::path::Path;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// A tokenizer that truncates at `max_len` tokens. `Send + Sync`.
pub struct TextTokenizer {
    inner: Tokenizer,
    max_len: usize,
    pad_id: u32,
    lowercase: bool,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TextTokenizer(max_len {}, pad {})", self.max_len, self.pad_id)
    }
}

impl TextTokenizer {
    /// Load tokenizer.json; `max_len` counts the special tokens.
    pub fn from_file(path: impl AsRef<Path>, max_len: usize) -> Result<TextTokenizer> {
        let path = path.as_ref();
        let io = |message: String| Error::Io { path: path.display().to_string(), message };
        if !path.is_file() {
            return Err(io("tokenizer file not found".into()));
        }
        let mut inner = Tokenizer::from_file(path).map_err(|e| io(format!("not a valid tokenizer.json: {e}")))?;
        inner
            .with_truncation(Some(TruncationParams { max_length: max_len, strategy: TruncationStrategy::LongestFirst, stride: 0, direction: TruncationDirection::Right }))
            .map_err(|e| io(format!("cannot set truncation: {e}")))?;
        inner.with_padding(None);
        let pad_id = inner.get_padding().map(|p| p.pad_id).or_else(|| inner.token_to_id("[PAD]")).or_else(|| inner.token_to_id("<pad>")).unwrap_or(0);
        Ok(TextTokenizer { inner, max_len, pad_id, lowercase: false })
    }

    /// Pad with `id` (the model's `pad_token_id`).
    pub fn set_pad_id(&mut self, id: u32) {
        self.pad_id = id;
    }

    /// Lower-case texts before tokenizing (`do_lower_case` of
    /// sentence_bert_config.json, as sentence-transformers does).
    pub fn set_lowercase(&mut self, on: bool) {
        self.lowercase = on;
    }

    /// Ids the tokenizer can produce (added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    fn prepare<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        if self.lowercase {
            std::borrow::Cow::Owned(text.to_lowercase())
        } else {
            std::borrow::Cow::Borrowed(text)
        }
    }

    /// Ids and token type ids of a text pair (`a` then `b`, the model's
    /// special tokens around them), truncated longest-first to the max length.
    pub fn encode_pair(&self, a: &str, b: &str) -> Result<(Vec<u32>, Vec<u32>)> {
        let (a, b) = (self.prepare(a), self.prepare(b));
        let enc = self
            .inner
            .encode((a.as_ref(), b.as_ref()), true)
            .map_err(|e| Error::InvalidArgument(format!("cannot tokenize the pair ({:?}, {:?}): {e}", short(&a), short(&b))))?;
        Ok((enc.get_ids().to_vec(), enc.get_type_ids().to_vec()))
    }

    /// The id used to pad rows to a batch's longest.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Token ids of one text, with the special tokens, truncated.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let text = self.prepare(text);
        let enc = self.inner.encode(text.as_ref(), true).map_err(|e| Error::InvalidArgument(format!("cannot tokenize {:?}: {e}", short(&text))))?;
        Ok(enc.get_ids().to_vec())
    }

    /// A batch padded to its longest text.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<BertInput> {
        let rows = texts.iter().map(|t| self.encode(t)).collect::<Result<Vec<_>>>()?;
        Ok(BertInput::from_rows(&rows, self.pad_id))
    }
}

fn short(s: &str) -> String {
    s.chars().take(40).collect()
}
