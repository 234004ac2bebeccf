"""Text metrics: perplexity and bits per character on held-out data; diversity of samples.

- Perplexity = exp(mean next-token cross-entropy in nats) over the val split, read
  in consecutive non-overlapping windows of ``block_size`` tokens.
- Bits per character = mean loss * (val tokens / val characters) / ln 2, so models
  with different tokenizers compare on the same scale (see :mod:`aigc.data.shards`).
  Chat data is scored on assistant tokens only: loss per assistant token, bits per
  assistant character.
- distinct-n (Li et al. 2016): distinct n-grams / all n-grams, pooled over samples;
  n-grams of the model's tokens (characters for a character tokenizer). It falls as a sample
  grows (a longer text repeats more), so sets of different sizes compare only after rarefaction:
  the expected distinct share in a random subsample of the same number of n-grams (Sanders 1968,
  Hurlbert 1971, from ecology's species counts; the size bias of distinct-n: Liu et al. 2022).
- Repeated 4-gram share: the share of each sample's 4-grams that already occurred
  earlier in the same sample, pooled over samples (a degeneration measure in the
  spirit of Welleck et al. 2020).
"""

from __future__ import annotations

import collections
import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from aigc.data.shards import TokenData, bits_per_char


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, data: TokenData, split: str = "val", max_tokens: int = 0,
                 progress: bool = True) -> tuple[float, int]:
    """Mean next-token loss (nats) over ``split`` and the number of tokens scored
    (chat data: the assistant tokens; targets of -100 are not scored).

    Windows hold ``block_size`` tokens for a GPT and 1024 for a recurrent model
    (whose state carries across windows).
    """
    model.eval()
    device = next(model.parameters()).device
    window = model.context_length or 1024
    total, count = 0.0, 0
    cache = None if model.context_length else model.new_cache(1)
    arr_len = data.splits[split].size - 1
    n = min(arr_len, max_tokens) if max_tokens else arr_len
    with tqdm(total=n, desc=f"scoring {split}", unit="tok", unit_scale=True, disable=not progress,
              leave=False) as bar:
        for x, y in data.windows(split, window, max_tokens):
            logits = model(x.to(device), cache=cache) if cache is not None else model(x.to(device))
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.to(device).view(-1),
                                   ignore_index=-100, reduction="sum")
            total += loss.item()
            count += int((y != -100).sum())
            bar.update(y.numel())
    return total / max(count, 1), count


def heldout_metrics(model: torch.nn.Module, data: TokenData, max_tokens: int = 0, progress: bool = True) -> dict:
    """``{"val_loss", "val_perplexity", "val_bpc", "val_tokens_scored"}`` for the val split."""
    loss, count = heldout_loss(model, data, "val", max_tokens, progress)
    return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50)),
            "val_bpc": bits_per_char(loss, data.tokens_per_char("val")), "val_tokens_scored": count}


def ngrams(tokens: list, n: int) -> list[tuple]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(samples: list[list], n: int) -> float:
    """Distinct n-grams over all n-grams, pooled over ``samples`` (lists of tokens); 0 when there are none."""
    grams = [g for s in samples for g in ngrams(s, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def rarefied_distinct_n(samples: list[list], n: int, k: int) -> float:
    """Expected distinct-n of ``k`` n-grams drawn without replacement from those pooled over ``samples``:
    sum over distinct n-grams g of 1 - C(N - n_g, k) / C(N, k), divided by ``k`` (Hurlbert 1971, eq. 3),
    with N n-grams in all, n_g of them g. Equals :func:`distinct_n` at ``k = N``.

    Raises:
        ValueError: ``k`` below 1 or above the number of n-grams.
    """
    counts = collections.Counter(g for s in samples for g in ngrams(s, n))
    total = sum(counts.values())
    if not 1 <= k <= total:
        raise ValueError(f"k={k}: expected 1 to the {total} {n}-grams of the samples")

    def log_choose(a: int, b: int) -> float:
        return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)

    base = log_choose(total, k)
    expected = sum(1.0 if total - c < k else 1.0 - math.exp(log_choose(total - c, k) - base)
                   for c in counts.values())
    return expected / k


def repeated_ngram_share(samples: list[list], n: int = 4) -> float:
    """Share of n-grams that repeat an earlier n-gram of the same sample, pooled over ``samples``."""
    total = repeats = 0
    for s in samples:
        grams = ngrams(s, n)
        total += len(grams)
        repeats += len(grams) - len(set(grams))
    return repeats / total if total else 0.0


def diversity_metrics(samples: list[list]) -> dict:
    """distinct-1, distinct-2 and the repeated 4-gram share of tokenized samples."""
    return {"distinct_1": distinct_n(samples, 1), "distinct_2": distinct_n(samples, 2),
            "repeated_4gram_share": repeated_ngram_share(samples, 4)}
