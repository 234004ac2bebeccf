"""Tokenizer compression on held-out Python files: byte-level BPE vs the character tokenizer.

Reads the python-stdlib dataset, splits it by file exactly as `aigc prepare` does
(data.split_seed, data.val_fraction), trains both tokenizers on the train files (BPE with
the recipe's vocabulary and FIM tokens), and reports bytes per token on the held-out
files. A character the character tokenizer never saw in training counts as one token
(it could not encode it at all; the count of such characters is printed).

    .venv/bin/python bench/code_tokenizer.py [--vocab-size 8192]
"""

from __future__ import annotations

import argparse
import json

from aigc.config import DataConfig
from aigc.data.code import read_python_stdlib
from aigc.data.fim import FIM_TOKENS
from aigc.data.shards import split_documents
from aigc.data.tokenizer import train_bpe_tokenizer, train_char_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab-size", type=int, default=8192)
    args = ap.parse_args()
    cfg = DataConfig(dataset="python-stdlib")
    corpus = read_python_stdlib(cfg.max_file_bytes)
    is_val = split_documents(len(corpus.texts), cfg.val_fraction, cfg.split_seed)
    train = [t for t, v in zip(corpus.texts, is_val) if not v]
    val = [t for t, v in zip(corpus.texts, is_val) if v]
    val_bytes = sum(len(t.encode("utf-8")) for t in val)
    bpe = train_bpe_tokenizer(train, args.vocab_size, show_progress=False, extra_special=FIM_TOKENS)
    bpe_tokens = sum(len(ids) for ids in bpe.encode_batch(val))
    exact = all(bpe.decode(ids) == t for ids, t in zip(bpe.encode_batch(val), val))
    char = train_char_tokenizer(train)
    vocab = char.tk.get_vocab()
    unknown = sum(1 for t in val for ch in t if ch not in vocab)
    char_tokens = sum(len(t) for t in val)  # one token per character, known or not
    report = {
        "corpus": corpus.report(), "held_out_files": len(val), "held_out_bytes": val_bytes,
        "bpe": {"vocab_size": bpe.vocab_size, "tokens": bpe_tokens, "bytes_per_token": round(val_bytes / bpe_tokens, 3),
                "round_trip_exact": exact},
        "char": {"vocab_size": char.vocab_size, "tokens": char_tokens,
                 "bytes_per_token": round(val_bytes / char_tokens, 3), "unseen_characters": unknown},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
