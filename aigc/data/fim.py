"""Fill-in-the-middle (FIM): training examples and infilling prompts (Bavarian et al. 2022).

A document is cut at two character positions drawn uniformly, into prefix, middle
and suffix, and rearranged so that a left-to-right model learns to write the middle
last, after seeing both sides. With sentinel tokens ``<|fim_prefix|>`` (P),
``<|fim_suffix|>`` (S) and ``<|fim_middle|>`` (M), and Enc the tokenizer::

    PSM: P Enc(prefix) S Enc(suffix) M Enc(middle)
    SPM: P S Enc(suffix) M Enc(prefix) Enc(middle)     (the paper's SPM variant for joint training)

followed, like every document, by the document-boundary token, which is what ends
an infill at generation time. Each piece is encoded on its own, so no BPE merge
crosses a cut. At generation a PSM prompt is ``P Enc(prefix) S Enc(suffix) M``.
"""

from __future__ import annotations

import numpy as np

from aigc.errors import AigcError

FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX = "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"
FIM_TOKENS = [FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX]


def fim_token_ids(tokenizer) -> tuple[int, int, int] | None:
    """(prefix, middle, suffix) sentinel ids of a tokenizer, or None if it has none."""
    ids = [tokenizer.tk.token_to_id(t) for t in FIM_TOKENS]
    return None if any(i is None for i in ids) else (ids[0], ids[1], ids[2])


def fim_example(tokenizer, doc: str, rng: np.random.Generator, spm_rate: float) -> list[int]:
    """One document as a FIM training example (token ids, without the boundary token)."""
    pre, mid, suf = fim_token_ids(tokenizer)
    i, j = sorted(rng.integers(0, len(doc) + 1, size=2).tolist())
    prefix, middle, suffix = (tokenizer.encode(x, "document") for x in (doc[:i], doc[i:j], doc[j:]))
    if rng.random() < spm_rate:
        return [pre, suf] + suffix + [mid] + prefix + middle
    return [pre] + prefix + [suf] + suffix + [mid] + middle


def infill_prompt(tokenizer, prefix: str, suffix: str) -> list[int]:
    """The PSM prompt whose continuation is the middle between ``prefix`` and ``suffix``.

    Raises:
        AigcError: the tokenizer has no FIM tokens (a model not trained with data.fim_rate > 0).
    """
    ids = fim_token_ids(tokenizer)
    if ids is None:
        raise AigcError("this model's tokenizer has no fill-in-the-middle tokens: infilling (--suffix) needs a "
                        "model trained with data.fim_rate > 0")
    pre, mid, suf = ids
    return [tokenizer.bos_id, pre] + tokenizer.encode(prefix, "prompt") + [suf] + \
        tokenizer.encode(suffix, "suffix") + [mid]
