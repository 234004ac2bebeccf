"""Decoding throughput of continuous batching: BatchEngine with B concurrent sequences, no HTTP.

Each of B sequences (its own prompt, seed and generator) decodes ``--tokens`` tokens with
the model's default sampling settings (generation_config.json); tokens/s counts every
sequence's tokens over the wall time, median of ``--repeats``. B = 1 is the single-stream
speed. Usage: python bench/batch_speed.py RUN_OR_MODEL [--batches 1 8 32 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import aigc
from aigc.generate.engine import BatchEngine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tm = aigc.load(args.model, device="cpu")
    d = tm.defaults
    params = d  # the model's own sampling settings (its generation_config.json)
    print(f"{tm.folder}: temperature {d.temperature}, top-k {d.top_k}, top-p {d.top_p}; {args.tokens} tokens each")
    for b in args.batches:
        speeds = []
        for r in range(args.repeats):
            engine = BatchEngine(tm.model, max_rows=b)
            start = time.perf_counter()
            seqs = [engine.add([tm.tokenizer.eot_id, 10 + i], 1, params, seed=r * 1000 + i) for i in range(b)]
            for _ in range(args.tokens):
                for s in seqs:
                    next(s)
                engine.step()
            speeds.append(b * args.tokens / (time.perf_counter() - start))
        print(f"B = {b:3d}: {statistics.median(speeds):7.0f} tokens/s")


if __name__ == "__main__":
    main()
