"""The cost of grammar-constrained decoding (response_format json_schema) against unconstrained decoding.

    python bench/grammar.py [--rounds 5] [--tokens 128] [--vocab 8192]

A GPT of tang-base's shape (6 layers, d_model 256, 8/4 heads) with a byte-level BPE vocabulary of
``--vocab`` tokens trained on the shipped Tang poems plus JSON text, randomly initialised (speed
does not depend on the weights; the grammar keeps the output valid JSON whatever they are).
Batch 1 and batch 8 (8 samples of one request), ``--tokens`` new tokens each, the two modes
alternated round by round; reports the median tokens/s and the spread (min-max) over rounds.
Unconstrained rows ignore the end-of-document token so they run the full length; constrained
rows count the tokens they generated (a sample ends when its JSON is complete).
"""

from __future__ import annotations

import argparse
import json
import lzma
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aigc.data.sources import DATASETS  # noqa: E402
from aigc.data.tokenizer import train_bpe_tokenizer  # noqa: E402
from aigc.formats.model_folder import save_model_folder  # noqa: E402
from aigc.generate.text import TextModel  # noqa: E402
from aigc.models.transformer import GPT, GPTConfig  # noqa: E402
from aigc.runtime import set_threads  # noqa: E402

SCHEMA = {"type": "object", "required": ["title", "lines", "tags"], "additionalProperties": False,
          "properties": {"title": {"type": "string", "maxLength": 40}, "lines": {"type": "integer"},
                         "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 8}}}


def model(folder: Path, vocab: int) -> TextModel:
    raw = lzma.decompress(DATASETS["tang-poems"]["path"].read_bytes()).decode("utf-8")
    docs = [json.loads(line)["text"] for line in raw.splitlines()[:3000] if line.strip()]
    docs += [json.dumps({"title": d[:8], "lines": d.count("\n"), "tags": ["poem", "tang"]}, ensure_ascii=False)
             for d in docs[:1000]]
    tok = train_bpe_tokenizer(docs, vocab, show_progress=False)
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=6, n_head=8, n_kv_head=4, d_model=256,
                        bias=False, norm="rmsnorm", positions="rope", mlp="swiglu"))
    save_model_folder(folder, gpt, tok, {"temperature": 1.0, "top_p": 1.0, "top_k": 0})
    from aigc.api import load
    return load(folder)


def run(tm: TextModel, batch: int, tokens: int, constrained: bool, seed: int) -> float:
    """Generated tokens per second for one request of ``batch`` samples."""
    extra = {"response_format": "json_schema", "json_schema": SCHEMA} if constrained else \
        {"stop_at_document_end": False}
    settings = tm.settings(max_new_tokens=tokens, **extra)
    prompt = tm.encode("诗：", heal=False)
    start, count = time.perf_counter(), [0] * batch
    for step in tm.steps(prompt, settings, batch, seed):
        count = step.tokens
    return sum(count) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--folder", default="runs/bench-grammar-model")
    args = p.parse_args()
    set_threads(args.threads)
    tm = model(Path(args.folder), args.vocab)
    print(f"model: {sum(x.numel() for x in tm.model.parameters()) / 1e6:.2f} M parameters, vocabulary "
          f"{tm.tokenizer.vocab_size}, {torch.get_num_threads()} threads")
    run(tm, 1, 8, True, 0)  # warm-up: the grammar's vocabulary and the first matcher
    rows = {}
    for r in range(args.rounds):
        for batch in (1, 8):
            for constrained in (False, True):
                rows.setdefault((batch, constrained), []).append(run(tm, batch, args.tokens, constrained, r))
    print("| batch | decoding | tokens/s (median) | spread (min-max) | vs unconstrained |")
    print("|---|---|---|---|---|")
    for batch in (1, 8):
        free = statistics.median(rows[(batch, False)])
        for constrained in (False, True):
            v = rows[(batch, constrained)]
            med = statistics.median(v)
            print(f"| {batch} | {'json_schema' if constrained else 'unconstrained'} | {med:,.0f} | "
                  f"{min(v):,.0f}-{max(v):,.0f} | {med / free:.2f}x |")


if __name__ == "__main__":
    main()
