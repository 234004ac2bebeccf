"""Generation speed at batch 1: the cached engine against the naive no-cache reference.

Generates ``--tokens`` new tokens after a one-token prompt (within the context, so
both produce the same greedy text), ``--repeats`` times each, and prints tokens/s
(median). Usage: python bench/gen_speed.py RUN_OR_MODEL [--tokens 127] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import aigc
from aigc.generate.engine import naive_generate
from aigc.config import SampleConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("--tokens", type=int, default=0, help="new tokens (default: context - 1)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tm = aigc.load(args.model, device="cpu")
    n = args.tokens or ((tm.model.context_length or 128) - 1)
    prompt = [tm.tokenizer.eot_id]
    greedy = SampleConfig(temperature=0.0, max_new_tokens=n)
    results = {}
    cached_ids = naive_ids = None
    for name in ("kv_cache", "no_cache"):
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            if name == "kv_cache":
                cached_ids = [int(t) for t in tm.engine.generate(prompt, 1, greedy, seed=0)]
            else:
                naive_ids = naive_generate(tm.model, prompt, greedy, seed=0)
            times.append(time.perf_counter() - start)
        results[f"{name}_tokens_per_s"] = n / statistics.median(times)
    results.update({"model": str(tm.folder), "family": tm.family, "new_tokens": n, "threads": args.threads,
                    "same_greedy_output": cached_ids == naive_ids})
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
