"""`aigc poem`: regulated verse on a theme, its form, tones and rhyme kept by constrained decoding,
candidates ranked by the model's likelihood, each printed with the checker's verdict."""

from __future__ import annotations

import json
import secrets
import sys

from aigc.api import load
from aigc.cli.common import add_runtime_flags, check_seed, no_overrides, threads
from aigc.data.poetry import ALIASES, FORMS, form_named, tune_named, tunes
from aigc.errors import AigcError
from aigc.generate.poem import forbidden_lines, write_poems
from aigc.generate.text import TextModel

POEM = ("Write regulated verse (近体诗) titled THEME, or a ci to a tune (--tune): the form's line lengths and punctuation, the tones of a "
        "平仄 template (一三五不论 unless --strict) and a 平水韵 rhyme hold by construction; --acrostic fixes each "
        "line's first character; no line of the shipped tang-poems corpus is copied whole. The N candidates are "
        "printed best first by the model's mean log-likelihood per character, each with the checker's verdict.")


def poem_arguments(p) -> None:
    p.add_argument("model", help="a character model of poems (tang-base, or a run fine-tuned from it)")
    p.add_argument("--theme", help="the title (the poem follows it), e.g. 秋天的落叶 or 秋 落叶")
    p.add_argument("--form", help=f"one of {', '.join(FORMS)} (or {', '.join(ALIASES)}); default 七言绝句")
    p.add_argument("--tune", help="a ci tune (词牌) instead of a form, e.g. 西江月, 浣溪沙, 卜算子: the line lengths, "
                   "rhyme positions and fixed tones of the Song ci in that tune; --list-tunes shows them")
    p.add_argument("--list-tunes", action="store_true", help="list the known tunes and exit")
    p.add_argument("--acrostic", default="", help="藏头诗: the first character of each line, e.g. 秋天落叶")
    p.add_argument("--n", type=int, default=4, help="candidates (default 4, at most 32)")
    p.add_argument("--seed", type=int, help="seed: candidate i uses seed + i")
    p.add_argument("--strict", action="store_true", help="check every character's tone, not only the 2nd, "
                   "4th, 6th and last")
    p.add_argument("--repeats", action="store_true", help="allow a character twice in a poem (by default "
                   "only a reduplication such as 萧萧 repeats: regulated verse avoids 重字)")
    p.add_argument("--temperature", type=float, help="sampling temperature (default: the model's)")
    p.add_argument("--top-p", type=float, help="nucleus sampling: keep the smallest set of allowed tokens whose "
                   "probability reaches P (default: the model's)")
    p.add_argument("--json", action="store_true", help="one JSON object per candidate")
    add_runtime_flags(p)


def run_poem(args, overrides: list[str]) -> int:
    no_overrides("poem", overrides)
    if args.list_tunes:
        for t in tunes().values():
            print(f"{t.name}\t{len(t.lines)} clauses, {sum(x['rhyme'] for x in t.lines)} rhymed ({t.rhyme_tone}); "
                  f"{t.follow} of {t.ci} Song ci follow this pattern")
        return 0
    if args.form and args.tune:
        raise AigcError("--form and --tune: give one (a regulated-verse form, or a ci tune)")
    if not 1 <= args.n <= 32:
        raise AigcError(f"--n {args.n}: expected 1 to 32 candidates")
    check_seed(args.seed)
    theme = (args.theme or "").strip()
    if not theme or "\n" in theme:
        raise AigcError("--theme: expected one line of text (the poem's title)")
    threads(args.threads)
    tm = load(args.model, device=args.device, dtype=args.dtype)
    if not isinstance(tm, TextModel):
        raise AigcError(f"{args.model}: an image model; poems need a character model of poems such as tang-base")
    missing = tm.tokenizer.missing_characters([theme])
    if missing:
        raise AigcError(f"--theme: character {missing[0]!r} is not in the model's vocabulary")
    seed = secrets.randbelow(2**31) if args.seed is None else args.seed
    form = tune_named(args.tune) if args.tune else form_named(args.form or "七言绝句")
    forbidden = forbidden_lines(form)
    settings = tm.settings(temperature=args.temperature, top_p=args.top_p)  # a None keeps the model's own
    poems = write_poems(tm, theme, form, args.n, seed, args.acrostic, not args.strict, forbidden, settings,
                        args.repeats)
    for rank, p in enumerate(poems, 1):
        v = p["verdict"]
        if args.json:
            print(json.dumps({"rank": rank, "text": p["text"], "score": p["score"], "seed": p["seed"],
                              "form_ok": v.form_ok, "rhyme_ok": v.rhyme_ok, "tone": v.tone, "template": v.template,
                              "rhyme_group": v.group}, ensure_ascii=False))
            continue
        verdict = "keeps the rules" if v.ok else "; ".join(v.problems)
        print(f"--- {rank}/{len(poems)}  log-likelihood {p['score']:.3f} per character, seed {p['seed']}")
        print(p["text"])
        print(f"[checker: {verdict}; {v.template}, rhyme {v.group}]")
    print(f"{len(poems)} candidates, best first; `--seed {seed}` gives them again", file=sys.stderr)
    return 0
