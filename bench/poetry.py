"""Regulated verse from tang-base: unconstrained sampling, constrained decoding, constrained + reranked,
and real poems, all scored by the same checker.

    python bench/poetry.py [--model tang-base] [--poems 10] [--candidates 4] [--json bench/results/poetry.json]

For each of 10 themes x 4 forms: ``--poems`` poems of (a) plain sampling with the model's defaults
from the prompt "THEME\\n", cut to the form's number of lines; (b) constrained decoding
(`aigc poem`, one candidate each); (c) constrained, the best of ``--candidates`` by the model's
mean log-likelihood per character; and (d) real poems of the shipped corpus with that exact
shape (the last 5% of tang-poems, sampled; they validate the checker). Scored: form accuracy,
rhyme accuracy and tone conformity (:func:`aigc.data.poetry.check`, 一三五不论), the share of
lines found verbatim in the shipped corpus (for (d) the corpus without the poem itself),
distinct-2 over each row's bodies, theme presence (a character of the theme other than 的 in the
body), and the mean log-likelihood per body character under the model.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import aigc  # noqa: E402
from aigc.atomic import write_json  # noqa: E402
from aigc.data.poetry import FORMS, check, poem_lines  # noqa: E402
from aigc.evaluate.text import distinct_n  # noqa: E402
from aigc.generate.poem import shipped_lines, write_poems  # noqa: E402
from conftest import tang_documents  # noqa: E402

THEMES = ["秋天的落叶", "春风", "明月", "送别", "边塞", "江南", "思乡", "梅花", "登高", "夜雨"]


def body_score(tm, text: str) -> float:
    """Mean log-probability per body character (title is context; newlines not counted)."""
    title = text.split("\n", 1)[0]
    k = len(tm.encode(title + "\n").ids) - 1
    nl = tm.tokenizer.encode("\n")[0]
    scored = [e.logprob for e in tm.score(text)[k:] if e.token != nl]
    return sum(scored) / max(len(scored), 1)


def plain(tm, theme: str, form, n: int, seed: int) -> list[str]:
    """(a): the model's own sampling, the body cut after the form's number of lines."""
    out = []
    for text in tm.generate(theme + "\n", n=n, seed=seed, max_new_tokens=form.lines * (form.chars + 1) + 8):
        body, lines, end = text.split("\n", 1)[1] if "\n" in text else "", 0, 0
        for j, ch in enumerate(body):
            if ch in "，。？！；":
                lines += 1
                if lines == form.lines:
                    end = j + 1
                    break
        out.append(theme + "\n" + (body[:end] if end else body))
    return out


def score_row(tm, texts: list[str], form, themes: list[str], lines_of, real: bool = False) -> dict:
    verdicts = [check(t, form) for t in texts]
    bodies = [t.split("\n", 1)[1] if "\n" in t else "" for t in texts]
    copied = total = 0
    for t in texts:
        for line in poem_lines(t)[1]:
            if len(line) == form.chars:
                total += 1
                copied += line[-1] in lines_of.get(line[:-1], ())
    present = [any(c in b for c in theme if c != "的") for b, theme in zip(bodies, themes)]
    return {"poems": len(texts), "form": sum(v.form_ok for v in verdicts) / len(texts),
            "rhyme": sum(v.rhyme_ok for v in verdicts) / len(texts),
            "tone": sum(v.tone for v in verdicts) / len(texts),
            "copied_lines": None if real else copied / max(total, 1),  # real poems are the corpus
            "distinct_2": distinct_n([list(b) for b in bodies], 2),
            "theme_presence": sum(present) / len(texts),
            "loglik_per_char": sum(body_score(tm, t) for t in texts) / len(texts)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tang-base")
    p.add_argument("--poems", type=int, default=10)
    p.add_argument("--candidates", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default="bench/results/poetry.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tm = aigc.load(args.model)
    docs = tang_documents()
    held_out = docs[int(len(docs) * 0.95):]
    result = {"model": args.model, "themes": THEMES, "poems_per_theme": args.poems,
              "candidates": args.candidates, "rows": {}}
    for name, form in FORMS.items():
        lines_of = shipped_lines(form.chars)
        rows = {"plain": [], "constrained": [], "reranked": []}
        for t, theme in enumerate(tqdm(THEMES, desc=name)):
            seed = 1000 * t
            rows["plain"] += plain(tm, theme, form, args.poems, seed)
            rows["constrained"] += [q["text"] for q in sorted(write_poems(tm, theme, form, args.poems, seed,
                                                                          forbidden=lines_of), key=lambda q: q["seed"])]
            for k in range(args.poems):
                best = write_poems(tm, theme, form, args.candidates, seed + 100 + k * args.candidates,
                                   forbidden=lines_of)[0]
                rows["reranked"].append(best["text"])
        themes = [th for th in THEMES for _ in range(args.poems)]
        real = [d for d in held_out if check(d, form).form_ok and not tm.tokenizer.missing_characters([d])]
        real = random.Random(0).sample(real, min(len(real), len(themes)))
        out = {k: score_row(tm, v, form, themes, lines_of) for k, v in rows.items()}
        out["real"] = score_row(tm, real, form, [d.split("\n", 1)[0] for d in real], lines_of, real=True)
        out["real"]["note"] = "shipped poems of this exact shape from the last 5% of tang-poems (tang-base read them)"
        result["rows"][name] = out
        result["examples"] = result.get("examples", {}) | {name: rows["reranked"][:2]}
        print(name, json.dumps(out, ensure_ascii=False), flush=True)
        write_json(args.json, result)


if __name__ == "__main__":
    main()
