"""Build aigc/data/builtin/ci-tunes.json: the line-length, rhyme-position and tone patterns of the most
frequent ci tunes (词牌), derived from the Song ci themselves.

    npm pack chinese-poetry@2.0.1          # 85 MB; the Song ci are package/dist/songci/ci.song.*.json
    python scripts/build_ci_tunes.py chinese-poetry-2.0.1.tgz [--tunes 30]

For each tune (``rhythmic``; 失调名 "tune lost" left out) every ci is cut into clauses at ，。？！；、：
and its shape is the sequence of (clause length, clause-ending mark: ，-like or 。-like). The tune's
pattern is its most common shape, with how many of its ci follow it. Among those ci:

- the rhyme: each ci's rhyme is the 词林正韵 部 (with its tone) shared by most of its 。-ending
  clauses' last characters; a clause is a rhyme position when at least 60% of the ci end it in
  their rhyme (tunes that change rhyme part-way keep only their main rhyme here);
- the tones: a character position is 平 or 仄 when at least 85% of the ci whose character there has
  one tone agree, else free (中).

Source: npm ``chinese-poetry@2.0.1`` (MIT, Copyright (c) 2016 JackeyGao), already simplified; the
rhyme tables are aigc's own (:mod:`aigc.data.rhyme`).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aigc.data.rhyme import rhyme_tables  # noqa: E402

OUT = ROOT / "aigc" / "data" / "builtin" / "ci-tunes.json"
MEMBER = re.compile(r"^package/dist/songci/ci\.song\.\d+\.json$")
STOPS = "。？！；"
MARKS = "，。？！；、："


def clauses(paragraphs: list[str]) -> list[tuple[str, str]]:
    """(clause text, its mark: ， or 。) for a ci's paragraphs; None when a clause holds a non-CJK character."""
    out, cur = [], ""
    for ch in "".join(paragraphs):
        if ch in MARKS:
            if not cur:
                return []
            out.append((cur, "。" if ch in STOPS else "，"))
            cur = ""
        elif "\u4e00" <= ch <= "\u9fff":
            cur += ch
        else:
            return []
    return out if not cur else []


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tgz")
    p.add_argument("--tunes", type=int, default=30)
    args = p.parse_args()
    tables = rhyme_tables()
    ci = []
    with tarfile.open(args.tgz) as t:
        for name in sorted(n for n in t.getnames() if MEMBER.match(n)):
            ci += json.load(t.extractfile(name))
    by_tune = collections.defaultdict(list)
    for c in ci:
        parts = clauses(c["paragraphs"])
        if parts and c["rhythmic"] != "失调名":
            by_tune[c["rhythmic"]].append(parts)
    out = {}
    for tune, items in sorted(by_tune.items(), key=lambda kv: -len(kv[1]))[:args.tunes]:
        shape = lambda parts: tuple((len(t), m) for t, m in parts)  # noqa: E731
        best, follow = collections.Counter(shape(x) for x in items).most_common(1)[0]
        same = [x for x in items if shape(x) == best]
        rhyme_hits = [0] * len(best)
        tone_votes = [[collections.Counter() for _ in range(n)] for n, _ in best]
        rhyme_tone = collections.Counter()
        for parts in same:
            ends = collections.Counter(p for (t, m) in parts if m == "。" for p in tables.ci_parts(t[-1]))
            if not ends:
                continue
            main_part = ends.most_common(1)[0][0]
            rhyme_tone[main_part[-1]] += 1
            for i, (t, _) in enumerate(parts):
                rhyme_hits[i] += main_part in tables.ci_parts(t[-1])
                for j, ch in enumerate(t):
                    tones = tables.tones(ch)
                    if len(tones) == 1:
                        tone_votes[i][j][next(iter(tones))] += 1
        lines = []
        for i, (n, mark) in enumerate(best):
            tones = ""
            for votes in tone_votes[i]:
                total = sum(votes.values())
                top, k = votes.most_common(1)[0] if votes else ("中", 0)
                tones += top if total and k / total >= 0.85 else "中"
            lines.append({"chars": n, "mark": mark, "rhyme": rhyme_hits[i] / len(same) >= 0.6, "tones": tones})
        out[tune] = {"ci": len(items), "follow": follow, "rhyme_tone": rhyme_tone.most_common(1)[0][0],
                     "lines": lines}
        print(f"{tune}: {follow} of {len(items)} ci follow the pattern; {len(lines)} clauses, "
              f"{sum(x['rhyme'] for x in lines)} rhymed ({out[tune]['rhyme_tone']})")
    meta = {"source": "npm chinese-poetry@2.0.1 dist/songci (21,050 Song ci; MIT, Copyright (c) 2016 JackeyGao); "
                      "scripts/build_ci_tunes.py", "tunes": out}
    OUT.write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT}: {len(out)} tunes")


if __name__ == "__main__":
    main()
