"""The text watermark: detection by length and delta, false positives on human text, the
perplexity it costs, and detection after random token edits; SynthID-text side by side.

    python bench/watermark.py [--model tang-base] [--scheme lefthash] [--samples 200] [--human 1000]
        [--synthid] [--json bench/results/watermark.json]

Kirchenbauer et al. (2023), gamma 0.25, the key fixed below (a benchmark, not a secret), context 1
for lefthash and 4 for selfhash (the paper's settings). Watermarked samples: the model's own
sampling defaults, ``--samples`` prompts, 200 new tokens each (the end-of-document token ignored),
the first L of them tested at L = 25/50/100/200, z threshold 4. Prompts and human text: for
tang-base the first two characters of shipped poems and poems joined until L characters; for a
run trained on prepared data (the code model) the first 16 tokens of evenly spaced windows of its
val split, and 1,000 evenly spaced windows of L val tokens (for L = 200 the 171,360 val tokens of
python-stdlib make neighbouring windows overlap by about 30 tokens). Perplexity cost: the
perplexity, under the unwatermarked model, of the 200 generated tokens, watermarked against
unwatermarked samples of the same prompts and seeds. Edits: 10/20/30% of the 200 tokens replaced
by random vocabulary tokens.

``--synthid``: the same model exported to transformers (``aigc export``) generates with
``SynthIDTextWatermarkingConfig`` (Dathathri et al. 2024; 30 keys, n-gram length 5, the same
temperature and top-p, EOS masked), scored with the paper's mean g-value test: each g-value of an
unrepeated context after the prompt is Bernoulli(1/2) without the watermark, so
z = (sum g - N/2) / sqrt(N/4) over N = tokens x 30 layers, threshold 4.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import aigc  # noqa: E402
from aigc.atomic import write_json  # noqa: E402
from aigc.config import load_config  # noqa: E402
from aigc.data.prepared import ensure_prepared  # noqa: E402
from aigc.evaluate.watermark import detect  # noqa: E402
from aigc.generate.engine import BatchEngine  # noqa: E402
from aigc.generate.text import Prompt  # noqa: E402
from aigc.generate.watermark import WatermarkKey  # noqa: E402
from conftest import tang_documents  # noqa: E402

SYNTHID_KEYS = [(97 * i + 13) % 1000 + 1 for i in range(30)]
SYNTHID_NGRAM = 5

LENGTHS = (25, 50, 100, 200)
DELTAS = (1.0, 2.0, 4.0)
NEW = 200


def generated_ids(tm, prompts: list[list[int]], key: WatermarkKey | None, seed: int,
                  batch: int = 50) -> list[list[int]]:
    """Token ids (the prompt ids, document-start token first, then 200 new ones) of one sample per prompt,
    prompt i seeded ``seed + i``, decoded ``batch`` prompts at a time in a continuous-batching engine."""
    tm.use_watermark(key)
    engine, out = BatchEngine(tm.model, batch), []
    settings = tm.settings(max_new_tokens=NEW, stop_at_document_end=False)
    try:
        for start in tqdm(range(0, len(prompts), batch), desc=f"delta {key.delta if key else 0:g}", leave=False):
            group = prompts[start:start + batch]
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


def prompts_and_human(tm, args) -> tuple[list[list[int]], dict[int, list[list[int]]]]:
    """The prompts (ids) and, per length L, ``--human`` human texts of L tokens (ids, document-start first)."""
    bos = tm.tokenizer.bos_id
    if args.model == "tang-base":
        docs = [d for d in tang_documents() if not tm.tokenizer.missing_characters([d])]
        random.Random(0).shuffle(docs)
        prompts = [tm.encode(d[:2]).ids for d in docs[:args.samples]]
        human = {}
        for length in LENGTHS:
            texts, pool = [], iter(docs[args.samples:])
            while len(texts) < args.human:  # human text of this length: poems joined one after another
                text = ""
                while len(tm.tokenizer.encode(text)) < length:
                    text += next(pool) + "\n"
                texts.append([bos] + tm.tokenizer.encode(text)[:length])
            human[length] = texts
        return prompts, human
    folder = ensure_prepared(load_config(Path(args.model) / "config.toml"), False).folder
    meta = json.loads((folder / "meta.json").read_text())
    val = np.fromfile(folder / "val.bin", dtype=meta.get("dtype", "uint16")).astype(np.int64)
    starts = np.linspace(0, len(val) - 217, args.samples).astype(int)
    prompts = [[bos] + val[s:s + 16].tolist() for s in starts]
    human = {length: [[bos] + val[s:s + length].tolist()
                      for s in np.linspace(0, len(val) - length, args.human).astype(int)] for length in LENGTHS}
    return prompts, human


def edited(ids: list[int], k: int, share: float, vocab: int, rng: random.Random) -> list[int]:
    """``ids`` with ``share`` of the 200 tokens after index ``k`` replaced by random tokens."""
    ids = list(ids[:k + NEW])
    for i in rng.sample(range(k, len(ids)), int(share * NEW)):
        ids[i] = rng.randrange(3, vocab)
    return ids


def rates(zs_by_length: dict, edits: dict) -> dict:
    """TPR and median z per length, TPR after edits."""
    row = {}
    for length, z in zs_by_length.items():
        row[f"tpr_{length}"] = sum(v is not None and v >= 4 for v in z) / len(z)
        row[f"median_z_{length}"] = sorted(v for v in z if v is not None)[len(z) // 2]
    for share, z in edits.items():
        row[f"tpr_edit_{int(share * 100)}"] = sum(v is not None and v >= 4 for v in z) / len(z)
    return row


def false_positives(test, human: dict) -> dict:
    """Texts flagged (z >= 4) among the human texts of each length, with the largest z."""
    fp = {}
    for length, texts in human.items():
        zs = [test(ids, 1) for ids in texts]
        fp[str(length)] = {"texts": len(zs), "false_positives": sum(v is not None and v >= 4 for v in zs),
                           "max_z": max((v for v in zs if v is not None), default=None)}
    return fp


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tang-base")
    p.add_argument("--scheme", default="lefthash", choices=("lefthash", "selfhash"))
    p.add_argument("--deltas", default="1,2,4")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--human", type=int, default=1000)
    p.add_argument("--synthid", action="store_true", help="also SynthID-text on the exported model")
    p.add_argument("--hf-plain", action="store_true", help="with --synthid: also transformers' sampling without "
                   "the watermark, SynthID's perplexity baseline")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default="bench/results/watermark.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tm = aigc.load(args.model)
    prompts, human = prompts_and_human(tm, args)
    skip = [len(q) for q in prompts]
    vocab = tm.tokenizer.vocab_size
    base = dict(key="7e" * 32, scheme=args.scheme, gamma=0.25, context=4 if args.scheme == "selfhash" else 1,
                vocab_size=vocab, tokenizer=tm.tokenizer.fingerprint())
    plain = generated_ids(tm, prompts, None, 0)
    result = {"model": args.model, "scheme": args.scheme, "samples": args.samples, "new_tokens": NEW,
              "plain_perplexity": perplexity(tm, plain, skip), "rows": []}
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}), flush=True)
    rng = random.Random(1)
    for delta in [float(d) for d in args.deltas.split(",") if d]:
        key = WatermarkKey(delta=delta, **base)
        marked = generated_ids(tm, prompts, key, 0)
        zs = {length: [detect(key, ids[:k + length], k).z for ids, k in zip(marked, skip)] for length in LENGTHS}
        edits = {share: [detect(key, edited(ids, k, share, vocab, rng), k).z for ids, k in zip(marked, skip)]
                 for share in (0.1, 0.2, 0.3)}
        row = {"delta": delta, "perplexity": perplexity(tm, marked, skip), **rates(zs, edits)}
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
    key = WatermarkKey(delta=2.0, **base)
    result["human"] = false_positives(lambda ids, k: detect(key, ids, k).z, human)
    print(json.dumps(result["human"]), flush=True)
    if args.synthid:
        result["synthid"] = synthid(tm, args, prompts, skip, human, rng)
    write_json(args.json, result)


def synthid(tm, args, prompts, skip, human, rng) -> dict:
    """SynthID-text rows: transformers' generation on the exported model, the mean g-value test."""
    import subprocess
    import tempfile

    from transformers import AutoModelForCausalLM, SynthIDTextWatermarkingConfig
    folder = Path(tempfile.mkdtemp()) / "hf"
    subprocess.run([sys.executable, "-m", "aigc", "export", args.model, str(folder)], check=True)
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    cfg = SynthIDTextWatermarkingConfig(keys=SYNTHID_KEYS, ngram_len=SYNTHID_NGRAM)
    proc = cfg.construct_processor(hf.config.vocab_size, "cpu")
    s = tm.settings()

    def generate(watermark) -> list[list[int]]:
        rows = []
        for start in tqdm(range(0, len(prompts), 50), desc="synthid", leave=False):
            torch.manual_seed(start)
            ids = torch.tensor(prompts[start:start + 50])
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=s.temperature,
                              top_p=s.top_p, top_k=0, max_new_tokens=NEW, min_new_tokens=NEW,
                              watermarking_config=watermark, pad_token_id=tm.tokenizer.eot_id)
            rows += out.tolist()
        return rows

    if args.hf_plain:  # the same transformers sampling without the watermark: the perplexity baseline
        plain = generate(None)
        print(json.dumps({"hf_plain_perplexity": perplexity(tm, plain, skip)}), flush=True)
    marked = generate(cfg)

    def test(ids: list[int], k: int) -> float | None:
        """The mean g-value z-score of the tokens from index ``k`` (None when none is scored)."""
        x = torch.tensor([ids])
        g = proc.compute_g_values(x)[0].double()  # (len - ngram + 1, depth): g of token j + ngram - 1
        mask = proc.compute_context_repetition_mask(x)[0]
        first = max(k - (SYNTHID_NGRAM - 1), 0)
        g, mask = g[first:], mask[first:].bool()
        g = g[mask]
        n = g.numel()
        return None if n == 0 else float((g.sum() - n / 2) / (n / 4) ** 0.5)

    zs = {length: [test(ids[:k + length], k) for ids, k in zip(marked, skip)] for length in LENGTHS}
    edits = {share: [test(edited(ids, k, share, tm.tokenizer.vocab_size, rng), k) for ids, k in zip(marked, skip)]
             for share in (0.1, 0.2, 0.3)}
    row = {"scheme": f"synthid ({len(SYNTHID_KEYS)} layers, n-gram {SYNTHID_NGRAM}, mean score)",
           **({"hf_plain_perplexity": perplexity(tm, plain, skip)} if args.hf_plain else {}),
           "perplexity": perplexity(tm, marked, skip), **rates(zs, edits),
           "human": false_positives(test, human)}
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    main()
