"""The text watermark on tang-base: detection by length and delta, false positives on human poems,
the perplexity it costs, and detection after random token edits.

    python bench/watermark.py [--samples 200] [--human 1000] [--json bench/results/watermark.json]

Kirchenbauer et al. (2023) lefthash, gamma 0.25, the key fixed below (a benchmark, not a secret).
Watermarked samples: tang-base's own sampling defaults, prompts = the first two characters of
human poems, ``--samples`` per delta, 200 new tokens each (the end-of-document token ignored), the
first L of them tested at L = 25/50/100/200, z threshold 4. False positives: ``--human`` poems of
the shipped tang-poems dataset (human text; tang-base saw them in training, which does not matter
for the green-list test), poems joined until L characters, their first L. Perplexity cost: the perplexity, under the
unwatermarked model, of the 200 generated tokens, watermarked against unwatermarked samples of
the same prompts and seeds. Edits: 10/20/30% of the 200 tokens replaced by random vocabulary tokens.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import aigc  # noqa: E402
from aigc.atomic import write_json  # noqa: E402
from aigc.evaluate.watermark import detect  # noqa: E402
from aigc.generate.engine import BatchEngine  # noqa: E402
from aigc.generate.text import Prompt  # noqa: E402
from aigc.generate.watermark import WatermarkKey  # noqa: E402
from conftest import tang_documents  # noqa: E402

LENGTHS = (25, 50, 100, 200)
DELTAS = (1.0, 2.0, 4.0)
NEW = 200


def generated_ids(tm, prompts: list[str], key: WatermarkKey | None, seed: int, batch: int = 50) -> list[list[int]]:
    """Token ids (the document-start token and prompt first) of one sample per prompt, prompt i seeded
    ``seed + i``, decoded ``batch`` prompts at a time in a continuous-batching engine."""
    tm.use_watermark(key)
    engine, out = BatchEngine(tm.model, batch), []
    settings = tm.settings(max_new_tokens=NEW, stop_at_document_end=False)
    try:
        for start in tqdm(range(0, len(prompts), batch), desc=f"delta {key.delta if key else 0:g}", leave=False):
            group = [tm.encode(p).ids for p in prompts[start:start + batch]]
            seqs = [engine.add(ids, 1, settings, seed + start + j, None,
                               tm.request_hook(settings, 1, {tm.tokenizer.eot_id}, ids)) for j, ids in enumerate(group)]
            rows = [list(ids) for ids in group]
            for step in range(NEW):
                for row, seq in zip(rows, seqs):
                    row.append(int(next(seq)[0]))
                if step < NEW - 1:
                    engine.step()
            for seq in seqs:
                seq.close()
            out += rows
    finally:
        tm.use_watermark(None)
    return out


def perplexity(tm, rows: list[list[int]], skip: list[int]) -> float:
    """Perplexity of the tokens after each prompt; past the 128-token context, windows of 128 tokens
    with a stride of 64 (each token scored once, with at least 64 tokens before it)."""
    nll, count = 0.0, 0
    window = tm.model.context_length
    for ids, k in zip(rows, skip):
        scored, start = {}, 0
        while True:
            chunk = ids[start:start + window]
            for j, e in enumerate(tm.score(Prompt(chunk))):
                scored.setdefault(start + j + 1, e.logprob)  # position start + j + 1 of ids
            if start + window >= len(ids):
                break
            start += window // 2
        values = [v for pos, v in scored.items() if pos >= k]
        nll -= sum(values)
        count += len(values)
    return math.exp(nll / count)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--human", type=int, default=1000)
    p.add_argument("--json", default="bench/results/watermark.json")
    args = p.parse_args()
    tm = aigc.load("tang-base")
    docs = [d for d in tang_documents() if not tm.tokenizer.missing_characters([d])]
    rng = random.Random(0)
    rng.shuffle(docs)
    prompts = [d[:2] for d in docs[:args.samples]]
    skip = [len(tm.encode(q).ids) for q in prompts]
    base = dict(key="7e" * 32, scheme="lefthash", gamma=0.25, context=1, vocab_size=tm.tokenizer.vocab_size,
                tokenizer=tm.tokenizer.fingerprint())
    plain = generated_ids(tm, prompts, None, 0)
    result = {"samples": args.samples, "new_tokens": NEW, "plain_perplexity": perplexity(tm, plain, skip), "rows": []}
    for delta in DELTAS:
        key = WatermarkKey(delta=delta, **base)
        marked = generated_ids(tm, prompts, key, 0)
        row = {"delta": delta, "perplexity": perplexity(tm, marked, skip)}
        for length in LENGTHS:
            z = [detect(key, ids[:k + length], k).z for ids, k in zip(marked, skip)]
            row[f"tpr_{length}"] = sum(v is not None and v >= 4 for v in z) / len(z)
            row[f"median_z_{length}"] = sorted(v for v in z if v is not None)[len(z) // 2]
        for share in (0.1, 0.2, 0.3):
            edited = []
            for ids, k in zip(marked, skip):
                ids = list(ids[:k + NEW])
                for i in rng.sample(range(k, len(ids)), int(share * NEW)):
                    ids[i] = rng.randrange(3, tm.tokenizer.vocab_size)
                edited.append(detect(key, ids, k).z)
            row[f"tpr_edit_{int(share * 100)}"] = sum(v is not None and v >= 4 for v in edited) / len(edited)
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
    key = WatermarkKey(delta=2.0, **base)
    fp = {}
    for length in LENGTHS:
        zs, pool = [], iter(docs[args.samples:])
        while len(zs) < args.human:  # human text of this length: poems joined one after another
            text = ""
            while len(tm.tokenizer.encode(text)) < length:
                text += next(pool) + "\n"
            zs.append(detect(key, [tm.tokenizer.bos_id] + tm.tokenizer.encode(text)[:length]).z)
        fp[str(length)] = {"texts": len(zs), "false_positives": sum(v is not None and v >= 4 for v in zs),
                           "max_z": max((v for v in zs if v is not None), default=None)}
    result["human"] = fp
    print(json.dumps(fp))
    write_json(args.json, result)


if __name__ == "__main__":
    main()
