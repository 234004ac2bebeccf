"""Character unigram and bigram baselines on a prepared dataset, in bits per character.

Both models are estimated on the train split and scored on every val token, on the
same token streams (boundary token included) and with the same bits-per-character
conversion as the neural models (:func:`aigc.data.shards.bits_per_char`):

- unigram: add-one (Laplace) smoothed token frequencies;
- bigram: lambda * P_ML(b | a) + (1 - lambda) * P_unigram(b) (Jelinek & Mercer 1980),
  lambda chosen on the last 10% of the train stream after fitting on the first 90%,
  then refit on the whole train split.

Usage: python bench/ngram_baseline.py prepared/tang-poems-char
"""

from __future__ import annotations

import json
import sys

import numpy as np

from aigc.data.shards import TokenData, bits_per_char


def unigram(train: np.ndarray, vocab: int) -> np.ndarray:
    counts = np.bincount(train, minlength=vocab).astype(np.float64) + 1.0
    return counts / counts.sum()


def bigram_nll(train: np.ndarray, test: np.ndarray, vocab: int, lam: float) -> float:
    """Mean negative log-likelihood (nats) of ``test[1:]`` given the previous token."""
    p_uni = unigram(train, vocab)
    pairs, pair_counts = np.unique(train[:-1].astype(np.int64) * vocab + train[1:], return_counts=True)
    context_counts = np.bincount(train[:-1], minlength=vocab).astype(np.float64)
    query = test[:-1].astype(np.int64) * vocab + test[1:]
    pos = np.clip(np.searchsorted(pairs, query), 0, len(pairs) - 1)
    count = np.where(pairs[pos] == query, pair_counts[pos], 0).astype(np.float64)
    ctx = context_counts[test[:-1]]
    p_ml = np.divide(count, ctx, out=np.zeros_like(count), where=ctx > 0)
    p = lam * p_ml + (1 - lam) * p_uni[test[1:]]
    return float(-np.log(p).mean())


def main(folder: str) -> dict:
    data = TokenData(folder)
    vocab = data.meta["vocab_size"]
    train = np.asarray(data.splits["train"]).astype(np.int64)
    val = np.asarray(data.splits["val"]).astype(np.int64)
    tpc = data.tokens_per_char("val")
    uni_nll = float(-np.log(unigram(train, vocab)[val[1:]]).mean())
    cut = int(len(train) * 0.9)
    grid = [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95]
    lam = min(grid, key=lambda g: bigram_nll(train[:cut], train[cut:], vocab, g))
    bi_nll = bigram_nll(train, val, vocab, lam)
    result = {"data": str(folder), "val_tokens": int(len(val) - 1),
              "unigram_bpc": bits_per_char(uni_nll, tpc), "bigram_bpc": bits_per_char(bi_nll, tpc),
              "bigram_lambda": lam}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "prepared/tang-poems-char")
