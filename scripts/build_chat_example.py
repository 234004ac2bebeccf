#!/usr/bin/env python3
"""Build ``examples/chat-poems.jsonl``: 40 short conversations in which a user asks for a
poem on a theme and the assistant answers with a real Tang poem (title and lines).

The poems come from the shipped ``tang-poems`` dataset (``aigc/data/builtin/tang-poems.jsonl.xz``,
chinese-poetry, MIT). For each of the 20 themes below, the candidates are quatrains (four
lines of five or seven characters) whose title or body holds the theme's keyword and whose
characters are all among the ``COMMON`` most frequent characters of the whole dataset; they
are ranked by their rarest character, then by their place in the dataset, and each poem (by
its first line: the dataset repeats some under other titles) is used once. Every theme gets two conversations: a one-turn request, and either another
one-turn request or (every other theme) a two-turn conversation with a system prompt in
which the user asks for one more. The output is the same on every run.

Usage: ``python scripts/build_chat_example.py [--out examples/chat-poems.jsonl]``
"""

from __future__ import annotations

import argparse
import json
import lzma
import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "aigc" / "data" / "builtin" / "tang-poems.jsonl.xz"
COMMON = 1500  # a poem may only use this many of the most frequent characters of the dataset

# (what the user asks about, the keyword the poem must hold)
THEMES = [("秋天", "秋"), ("春天", "春"), ("月亮", "月"), ("思乡", "乡"), ("离别", "别"),
          ("春雨", "雨"), ("雪", "雪"), ("江南", "江南"), ("边塞", "塞"), ("老朋友", "故人"),
          ("梅花", "梅"), ("杨柳", "柳"), ("夜晚", "夜"), ("饮酒", "酒"), ("山中", "山中"),
          ("落花", "落花"), ("春风", "春风"), ("黄河", "黄河"), ("长安", "长安"), ("白云", "白云")]
NOT_COMMON = "□鴈"  # frequent in the dataset but not common text: the lost-character mark, a variant of 雁
ASK = ["写一首关于{}的诗", "请写一首{}的诗", "来一首写{}的诗", "以{}为题，写一首诗"]
MORE = "再写一首"
SYSTEM = "你是一位唐代诗人，用古诗回答。"
LINE = re.compile(r"^[^，。]{5}，[^，。]{5}。$|^[^，。]{7}，[^，。]{7}。$")


def read_poems() -> list[tuple[str, list[str]]]:
    """(title, body lines) of every poem in the dataset, in its order."""
    raw = lzma.decompress(SOURCE.read_bytes()).decode("utf-8")
    poems = []
    for line in raw.splitlines():
        if line.strip():
            title, *body = json.loads(line)["text"].split("\n")
            poems.append((title.strip(), [b.strip() for b in body]))
    return poems


def candidates(poems, rank: dict[str, int]) -> list[tuple[int, int, str, list[str]]]:
    """Quatrains (two body lines of two 5- or 7-character halves) with a short title (one poem, not
    one of a series), all in common
    characters, as (rarest character's rank, index, title, lines)."""
    out = []
    for i, (title, body) in enumerate(poems):
        if not 2 <= len(title) <= 8 or " " in title or len(body) != 2 or not all(LINE.match(b) for b in body):
            continue
        chars = set(title + "".join(body)) - set("，。")
        if not chars <= rank.keys():
            continue
        out.append((max(rank[c] for c in chars), i, title, body))
    return sorted(out)


def poem_text(title: str, body: list[str]) -> str:
    return f"《{title}》\n" + "\n".join(body)


def build() -> list[dict]:
    poems = read_poems()
    counts = Counter(ch for title, body in poems for ch in title + "".join(body))
    rank = {ch: r for r, (ch, _) in enumerate(counts.most_common(COMMON)) if ch not in "，。" + NOT_COMMON}
    pool = candidates(poems, rank)
    used, rows = set(), []  # first lines of the poems taken (the dataset holds near-duplicates under other titles)
    for t, (theme, keyword) in enumerate(THEMES):
        chosen = []
        for _, i, title, body in pool:
            if body[0] not in used and (keyword in title or keyword in "".join(body)):
                chosen.append(poem_text(title, body))
                used.add(body[0])
                if len(chosen) == 3:
                    break
        if len(chosen) < 3:
            raise SystemExit(f"theme {theme!r}: only {len(chosen)} poems with {keyword!r} in common characters")
        ask = ASK[t % len(ASK)].format(theme)
        rows.append({"messages": [{"role": "user", "content": ask},
                                  {"role": "assistant", "content": chosen[0]}]})
        if t % 2 == 0:
            rows.append({"messages": [{"role": "system", "content": SYSTEM},
                                      {"role": "user", "content": ASK[(t + 1) % len(ASK)].format(theme)},
                                      {"role": "assistant", "content": chosen[1]},
                                      {"role": "user", "content": MORE},
                                      {"role": "assistant", "content": chosen[2]}]})
        else:
            rows.append({"messages": [{"role": "user", "content": ASK[(t + 2) % len(ASK)].format(theme)},
                                      {"role": "assistant", "content": chosen[1]}]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "examples" / "chat-poems.jsonl"), help="the JSONL to write")
    args = parser.parse_args()
    rows = build()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {out}: {len(rows)} conversations")


if __name__ == "__main__":
    main()
