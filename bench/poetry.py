"""Regulated verse and ci from tang-base: unconstrained sampling, constrained decoding, constrained +
reranked, and real poems, all scored by the same checker.

    python bench/poetry.py [--model tang-base] [--poems 10] [--candidates 4] [--tgz chinese-poetry-2.0.1.tgz]
                           [--json bench/results/poetry.json] [--only FORM_OR_TUNE ...]
                           [--temperature T] [--top-p P]   # (b), (c); (a) at these too when not the model's

For each of 10 themes x 4 forms: ``--poems`` poems of (a) plain sampling with the model's defaults
from the prompt "THEME\\n", cut to the form's number of lines (and, when ``--temperature``/``--top-p``
are not the model's, plain sampling at those too: row ``plain_same``); (b) constrained decoding
(`aigc poem`, one candidate each); (c) constrained, the best of ``--candidates`` by the model's
mean log-likelihood per character; and (d) real poems, which validate the checker: for shi the
poems 《唐诗三百首》 (in chinese-poetry@2.0.1, npm) files under that form (an anthology's
classification, not the checker's; editors' notes in brackets removed), for ci the Song ci of
that tune by poets other than Xin Qiji that follow the tune's pattern (sampled; the 部 merges
of ``check_ci(neighbours=True)`` were read off Xin Qiji's ci, so these validate them). Ci rows: 5 tunes x ``--poems`` themes, one ci per theme. Scored: form accuracy,
rhyme accuracy and tone conformity (:func:`aigc.data.poetry.check`, 一三五不论), the share of
lines found verbatim in the shipped corpus (for (d) the corpus without the poem itself),
distinct-2 over each row's bodies (raw, and rarefied to the smallest number of body bigrams among
the row's generated sets, :func:`aigc.evaluate.text.rarefied_distinct_n`: raw distinct-2 rises as a
set shrinks, and plain sampling often stops short; and theme by theme against plain sampling at the
same settings, :func:`within_theme`), the mean body length, the share of body characters that repeat an earlier one of the
same poem (重字, a 叠字 aside), theme presence (a character of the theme other than 的 in the
body) and theme-word presence (a two-character word of it: 秋天的落叶 -> 秋天 or 落叶), each beside
how often the same bodies mention the run's other nine themes (chance: a theme steers only as far as
its own words come more often than the others'), and the mean log-likelihood per body character
under the model. Every generated text is kept in the JSON (``texts``).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aigc  # noqa: E402
from aigc.atomic import write_json  # noqa: E402
from aigc.data.poetry import _CI_MARKS, FORMS, check, check_ci, poem_lines, repeated_characters, tune_named  # noqa: E402
from aigc.evaluate.text import distinct_n, ngrams, rarefied_distinct_n  # noqa: E402
from aigc.generate.poem import forbidden_lines, write_poems  # noqa: E402

THEMES = ["秋天的落叶", "春风", "明月", "送别", "边塞", "江南", "思乡", "梅花", "登高", "夜雨"]
TUNES = ["浣溪沙", "鹧鸪天", "临江仙", "蝶恋花", "渔家傲"]  # most written, one rhyme, fit tang-base's context
NOTE = re.compile(r"[(（][^)）]*[)）]")  # 《唐诗三百首》's "(明年 一作：年年)"


def corpus_tgz(path: str | None, tmp: str) -> Path:
    """chinese-poetry@2.0.1 as npm packs it (``--tgz``, or `npm pack` into ``tmp``)."""
    if path:
        return Path(path)
    subprocess.run(["npm", "pack", "chinese-poetry@2.0.1", "--pack-destination", tmp], check=True,
                   capture_output=True)
    return next(Path(tmp).glob("*.tgz"))


def real_sets(tgz: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(form -> 《唐诗三百首》 poems filed under it, tune -> Song ci by poets other than Xin Qiji),
    simplified with OpenCC t2s."""
    import opencc
    t2s = opencc.OpenCC("t2s").convert
    shi, ci = {}, {}
    with tarfile.open(tgz) as tar:
        anthology = json.load(tar.extractfile("package/dist/mengxue/tangshisanbaishou.json"))
        for group in anthology["content"]:
            form = t2s(group["type"])
            if form in FORMS:
                shi[form] = [t2s(q["chapter"] + "\n" + NOTE.sub("", "".join(q["paragraphs"])).strip())
                             for q in group["content"]]
        songci = []
        for m in sorted(tar.getmembers(), key=lambda m: m.name):
            if re.fullmatch(r"package/dist/songci/ci\.song\.\d+\.json", m.name):
                songci += json.load(tar.extractfile(m))
    for q in songci:
        tune = t2s(q["rhythmic"])
        if tune in TUNES and t2s(q["author"]) != "辛弃疾":
            ci.setdefault(tune, []).append(tune + "\n" + t2s("".join(q["paragraphs"])))
    return shi, ci


def body_of(text: str) -> str:
    """The poem's body: everything after its title line ("" when there is none)."""
    return text.split("\n", 1)[1] if "\n" in text else ""


def body_score(tm, text: str) -> float:
    """Mean log-probability per body character (title is context; newlines not counted)."""
    title = text.split("\n", 1)[0]
    k = len(tm.encode(title + "\n").ids) - 1
    nl = tm.tokenizer.encode("\n")[0]
    scored = [e.logprob for e in tm.score(text)[k:] if e.token != nl]
    return sum(scored) / max(len(scored), 1)


def plain(tm, title: str, lines_wanted: int, chars: int, n: int, seed: int, marks: str = "，。？！；",
          settings=None) -> list[str]:
    """(a): the model's own sampling from ``title`` (at ``settings``, default the model's), the body cut after
    ``lines_wanted`` lines."""
    out = []
    for text in tm.generate(title + "\n", n=n, seed=seed, max_new_tokens=min(chars + 8, 120), settings=settings):
        body, lines, end = body_of(text), 0, 0
        for j, ch in enumerate(body):
            if ch in marks:
                lines += 1
                if lines == lines_wanted:
                    end = j + 1
                    break
        out.append(title + "\n" + (body[:end] if end else body))
    return out


def mentions(body: str, theme: str, n: int = 1) -> bool:
    """Whether ``body`` holds an n-character piece of ``theme`` (n=1: a character other than 的; n=2: a
    word-sized bigram without 的, 秋天的落叶 -> 秋天, 落叶)."""
    pieces = [theme[i:i + n] for i in range(len(theme) - n + 1)]
    return any(p in body for p in pieces if "的" not in p)


def rarefied_together(groups: dict[str, list[str]]) -> dict[str, float]:
    """Each group's distinct-2 over its texts' bodies, all rarefied to the fewest body bigrams among them."""
    bodies = {k: [list(body_of(t)) for t in v] for k, v in groups.items()}
    k2 = min(sum(len(ngrams(b, 2)) for b in group) for group in bodies.values())
    return {k: rarefied_distinct_n(group, 2, k2) for k, group in bodies.items()}


def within_theme(rows: dict[str, list[str]], per_theme: int) -> dict[str, list[float]]:
    """Each generated row's distinct-2 minus plain sampling's at the same settings (``plain_same`` when the
    run has it), theme by theme: the ``per_theme`` bodies of one theme, all rows rarefied to the fewest
    bigrams among them, so a row is compared with plain sampling on the same prompt. Returns the
    [mean, standard error] of the differences over the themes, per row."""
    base = "plain_same" if "plain_same" in rows else "plain"
    diffs: dict[str, list[float]] = {k: [] for k in rows if k not in ("plain", base)}
    for start in range(0, len(rows[base]), per_theme):
        d2 = rarefied_together({k: v[start:start + per_theme] for k, v in rows.items()})
        for k in diffs:
            diffs[k].append(d2[k] - d2[base])
    return {k: [statistics.mean(d), statistics.stdev(d) / len(d) ** 0.5] for k, d in diffs.items() if len(d) > 1}


def score_row(tm, texts: list[str], judge, themes: list[str], lines_of, real: bool = False) -> dict:
    """The row's metrics; ``judge(text)`` is the checker's verdict for the row's form or tune."""
    verdicts = [judge(t) for t in texts]
    bodies = [body_of(t) for t in texts]
    copied = total = 0
    for t in texts:
        for line in poem_lines(t, marks="".join(_CI_MARKS))[1]:
            if line:
                total += 1
                copied += line[-1] in lines_of.get(line[:-1], ())
    present = [mentions(b, theme) for b, theme in zip(bodies, themes)]
    words = [mentions(b, theme, 2) for b, theme in zip(bodies, themes)]
    others = sorted(set(themes))  # chance: how often a body mentions the other themes of the run
    def chance(n: int) -> float | None:
        pairs = [(b, o) for b, theme in zip(bodies, themes) for o in others if o != theme]
        return None if real or not pairs else sum(mentions(b, o, n) for b, o in pairs) / len(pairs)
    return {"poems": len(texts), "form": sum(v.form_ok for v in verdicts) / len(texts),
            "rhyme": sum(v.rhyme_ok for v in verdicts) / len(texts),
            "tone": sum(v.tone for v in verdicts) / len(texts),
            "copied_lines": None if real else copied / max(total, 1),  # real poems are the corpus
            "distinct_2": distinct_n([list(b) for b in bodies], 2),
            "bigrams": sum(len(ngrams(list(b), 2)) for b in bodies),
            "body_chars": sum(len(b.replace("\n", "")) for b in bodies) / len(texts),
            "repeated_chars": sum(len(repeated_characters(t, "".join(_CI_MARKS))) for t in texts)
            / max(sum(sum(map(len, poem_lines(t, "".join(_CI_MARKS))[1])) for t in texts), 1),
            "theme_presence": sum(present) / len(texts), "theme_presence_other_themes": chance(1),
            "theme_word_presence": sum(words) / len(texts), "theme_word_presence_other_themes": chance(2),
            "loglik_per_char": sum(body_score(tm, t) for t in texts) / len(texts)}


def generated_rows(tm, shape, title_of, themes: list[str], per_theme: int, candidates: int, lines_of,
                   clauses: int, chars: int, settings=None, plain_settings=None) -> dict[str, list[str]]:
    """(a) plain, (b) constrained, (c) reranked texts for ``per_theme`` poems on each theme; ``settings``
    (a SampleConfig) for (b) and (c), the model's own for (a), and ``plain_settings`` (when not None) for
    (a) again as row ``plain_same``."""
    rows = {"plain": [], "plain_same": [], "constrained": [], "reranked": []}
    for t, theme in enumerate(tqdm(themes, desc=shape.name)):
        seed = 1000 * t
        rows["plain"] += plain(tm, title_of(theme), clauses, chars, per_theme, seed, "".join(_CI_MARKS))
        if plain_settings is not None:
            rows["plain_same"] += plain(tm, title_of(theme), clauses, chars, per_theme, seed, "".join(_CI_MARKS),
                                        plain_settings)
        rows["constrained"] += [q["text"] for q in sorted(write_poems(tm, theme, shape, per_theme, seed,
                                                                      forbidden=lines_of, settings=settings),
                                                          key=lambda q: q["seed"])]
        for k in range(per_theme):
            best = write_poems(tm, theme, shape, candidates, seed + 100 + k * candidates, forbidden=lines_of,
                               settings=settings)[0]
            rows["reranked"].append(best["text"])
    return {k: v for k, v in rows.items() if v}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tang-base")
    p.add_argument("--poems", type=int, default=10)
    p.add_argument("--candidates", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tgz", default=None, help="chinese-poetry-2.0.1.tgz (default: npm pack it)")
    p.add_argument("--json", default="bench/results/poetry.json")
    p.add_argument("--only", nargs="+", help="only these forms or tunes, merged into --json's other rows")
    p.add_argument("--temperature", type=float, help="constrained candidates (default: the model's)")
    p.add_argument("--top-p", type=float, help="constrained candidates (default: the model's)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tm = aigc.load(args.model)
    settings = tm.settings(temperature=args.temperature, top_p=args.top_p)  # None: the model's own
    own = tm.settings()
    plain_settings = None if (settings.temperature, settings.top_p) == (own.temperature, own.top_p) else settings
    with tempfile.TemporaryDirectory() as tmp:
        shi, ci = real_sets(corpus_tgz(args.tgz, tmp))
    result = {"model": args.model, "themes": THEMES, "tunes": TUNES, "poems_per_theme": args.poems,
              "candidates": args.candidates, "constrained_temperature": settings.temperature,
              "constrained_top_p": settings.top_p, "plain_temperature": own.temperature,
              "plain_top_p": own.top_p, "rows": {}, "examples": {}}
    if args.only and Path(args.json).is_file():
        result = json.loads(Path(args.json).read_text(encoding="utf-8"))
    shapes = [(form, lambda th: th, args.poems, form.lines, form.lines * (form.chars + 1)) for form in FORMS.values()]
    shapes += [(tune_named(t), lambda th, t=t: f"{t}·{th}", 1, len(tune_named(t).lines),
                sum(x["chars"] + 1 for x in tune_named(t).lines)) for t in TUNES]
    for shape, title_of, per_theme, clauses, chars in shapes:
        if args.only and shape.name not in args.only:
            continue
        is_shi = shape.name in FORMS
        lines_of = forbidden_lines(shape)
        rows = generated_rows(tm, shape, title_of, THEMES, per_theme, args.candidates, lines_of, clauses, chars,
                              settings, plain_settings)
        judge = (lambda x: check(x, shape)) if is_shi else (lambda x: check_ci(x, shape))
        themes = [th for th in THEMES for _ in range(per_theme)]
        out = {k: score_row(tm, v, judge, themes, lines_of) for k, v in rows.items()}
        k2 = min(r["bigrams"] for r in out.values())
        for k, d2 in rarefied_together(rows).items():
            out[k]["distinct_2_rarefied"] = d2
        filed = [d for d in (shi if is_shi else ci).get(shape.name, []) if not tm.tokenizer.missing_characters([d])]
        real = [d for d in filed if judge(d).form_ok]
        form_of_filed = len(real) / max(len(filed), 1)
        if not is_shi:
            real = random.Random(0).sample(real, min(len(real), 100))  # the checker's validation: 100 real ci
        out["real"] = score_row(tm, real, judge, [d.split("\n", 1)[0] for d in real], lines_of, real=True)
        out["real"]["filed"], out["real"]["form_of_filed"] = len(filed), form_of_filed
        real_bodies = [list(body_of(d)) for d in real]
        out["real"]["distinct_2_rarefied"] = (rarefied_distinct_n(real_bodies, 2, k2)
                                              if out["real"]["bigrams"] >= k2 else None)
        out["rarefied_to_bigrams"] = k2
        for k, v in (within_theme(rows, per_theme) if per_theme > 1 else {}).items():  # ci: one per theme
            out[k]["distinct_2_within_theme_minus_plain"] = v
        if not is_shi:
            out["real"]["rhyme_neighbours"] = sum(check_ci(d, shape, neighbours=True).rhyme_ok
                                                  for d in real) / max(len(real), 1)
        out["real"]["note"] = ("《唐诗三百首》 poems filed under this form that pass the form check" if is_shi else
                               "Song ci of this tune, not Xin Qiji's, that follow the pattern (sampled)")
        result["rows"][shape.name] = out
        result["examples"][shape.name] = rows["reranked"][:2]
        result.setdefault("texts", {})[shape.name] = rows
        print(shape.name, json.dumps(out, ensure_ascii=False), flush=True)
        write_json(args.json, result)


if __name__ == "__main__":
    main()
