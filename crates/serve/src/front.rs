//! The tokenizer front: cutting a long text before it is tokenized, so the
//! work done for a text is proportional to what the model keeps (its first
//! `max_len` tokens), not to the text's length. Owns [`encode_cut`].
//!
//! Why the cut is exact: the text is cut just before an ASCII whitespace
//! character at or after a byte window. The tokenizers braid loads split
//! words at whitespace before anything else (BERT's WordPiece, and the
//! byte-level and metaspace pre-tokenizers alike), so the tokens of the
//! prefix are the leading tokens of the whole text. When the prefix alone
//! already fills `max_len` (truncation cut it), the truncated result is the
//! whole text's. Otherwise the window grows fourfold and the prefix is
//! tokenized again (total work at most ~4/3 of the last prefix); a text
//! with no whitespace past the window is tokenized whole. The property test
//! in `tests/front.rs` checks `encode_cut == encode` on random texts.

use braid_nn::TextTokenizer;
use braid_runtime::Result;

/// The first window, in bytes, for a tokenizer that keeps `max_len`
/// tokens: 16 bytes a token (English WordPiece averages ~4-5).
pub fn first_window(max_len: usize) -> usize {
    max_len.saturating_mul(16).max(1024)
}

/// Token ids of `text`, truncated to the tokenizer's `max_len` exactly as
/// `tok.encode(text)` would, and the number of bytes actually tokenized.
pub fn encode_cut(tok: &TextTokenizer, text: &str) -> Result<(Vec<u32>, usize)> {
    let max = tok.max_len();
    if max == 0 {
        // No truncation: every token is kept, so all must be made.
        return Ok((tok.encode(text)?, text.len()));
    }
    let mut window = first_window(max);
    loop {
        if window >= text.len() {
            return Ok((tok.encode(text)?, text.len()));
        }
        let cut = match text.as_bytes()[window..].iter().position(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
            // An ASCII byte is always a char boundary in UTF-8.
            Some(p) => window + p,
            None => return Ok((tok.encode(text)?, text.len())),
        };
        let ids = tok.encode(&text[..cut])?;
        if ids.len() >= max {
            return Ok((ids, cut));
        }
        window = window.saturating_mul(4);
    }
}

/// The general form of [`encode_cut`], for a tokenizer without truncation
/// of its own: `encode` a window of `text` that surely holds `need` tokens
/// at the end the model keeps (`from_end`: the last tokens, for left
/// truncation), growing the window fourfold until it does or is the whole
/// text. Returns the encoding, the byte offset of the window in `text`
/// (its encoding's offsets are relative to that), and the bytes encoded.
/// Exact for the same reason as `encode_cut`: windows start or end at ASCII
/// whitespace, where the pre-tokenizers split first.
pub fn encode_window<E, X>(text: &str, need: usize, from_end: bool, mut encode: impl FnMut(&str) -> std::result::Result<E, X>, len: impl Fn(&E) -> usize) -> std::result::Result<(E, usize, usize), X> {
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let mut window = first_window(need);
    loop {
        if window >= text.len() {
            return Ok((encode(text)?, 0, text.len()));
        }
        let (start, end) = if from_end {
            // The window starts at a whitespace byte at or before
            // len - window, and keeps it: a byte-level or metaspace
            // tokenizer then sees the window's first word as it sees it in
            // the whole text (with its leading space).
            match text.as_bytes()[..text.len() - window].iter().rposition(ws) {
                Some(p) => (p, text.len()),
                None => return Ok((encode(text)?, 0, text.len())),
            }
        } else {
            match text.as_bytes()[window..].iter().position(ws) {
                // An ASCII byte is always a char boundary in UTF-8.
                Some(p) => (0, window + p),
                None => return Ok((encode(text)?, 0, text.len())),
            }
        };
        let enc = encode(&text[start..end])?;
        if len(&enc) >= need {
            return Ok((enc, start, end - start));
        }
        window = window.saturating_mul(4);
    }
}
