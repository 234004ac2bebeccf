#!/usr/bin/env python3
"""Build theme -> poem pairs for tang-base's theme fine-tuning (issue 16): each poem of tang-base's own
pretraining corpus once under its title and once under keywords read from its title and body, so a
prompt steers what the poem is about whether it is a title (秋天的落叶) or keywords (秋 落叶).

    python scripts/build_theme_pairs.py          # after `python scripts/build_tang_base.py corpus`
    aigc train configs/tang-theme.toml           # fine-tunes the longer-pretrained tang-base on them

Keywords: the words of a poem that say the most about it, by TF-IDF (term frequency in the poem times
inverse document frequency over the corpus, Spärck Jones 1972): single characters and in-line
bigrams of the body, and the title's characters, among those found in at least 50 poems and in at
most a quarter of them (rare names and the commonest function characters say little; 秋, 月 or 春
stay in); one to three of the best four, in the order they first appear, joined by spaces.
Deterministic (seeded by each poem's position; the pairs are written in one seeded shuffled order).
The poems of the pretraining's val split
(configs/tang-base-long.toml's data section, split as `aigc train` splits it) are left out, so the
fine-tuned model's val bits per character on that split still measure held-out poems.

Writes ``prepared/theme-pairs/corpus.jsonl`` (``{"text": "KEYWORDS\\nBODY"}`` and ``{"text":
"TITLE\\nBODY"}`` lines) and ``report.json`` beside it.
"""

from __future__ import annotations

import collections
import json
import math
import os
import random
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SOURCE = REPO / "prepared" / "classical-poetry" / "corpus.jsonl"
OUT = REPO / "prepared" / "theme-pairs"
MIN_DF, MAX_SHARE = 50, 0.25
MARKS = re.compile(r"[，。？！；、：\n]")


def words_of(title: str, body: str) -> collections.Counter:
    """Candidate keywords with their counts, in order of appearance: the title's characters, then the
    body's characters and in-line bigrams."""
    lines = MARKS.split(body)
    return collections.Counter([c for c in title if "\u4e00" <= c <= "\u9fff"]
                               + [w for line in lines for n in (1, 2) for w in (line[i:i + n] for i in range(len(line) - n + 1))])


def main() -> None:
    if not SOURCE.is_file():
        sys.exit(f"error: {SOURCE}: missing; run `python scripts/build_tang_base.py corpus` first")
    from aigc.config import load_config
    from aigc.data.shards import split_corpus

    os.chdir(REPO)  # the config's paths are relative to the repository
    data = load_config(REPO / "configs" / "tang-base-long.toml").data
    held_out = set(split_corpus(data)[1])
    poems = []
    for line in SOURCE.read_text(encoding="utf-8").splitlines():
        text = json.loads(line)["text"]
        title, _, body = text.partition("\n")
        if body and text not in held_out:
            poems.append((title, body))
    df = collections.Counter(w for title, body in poems for w in words_of(title, body).keys())
    n = len(poems)
    idf = {w: math.log(n / c) for w, c in df.items() if MIN_DF <= c <= MAX_SHARE * n}
    OUT.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i, (title, body) in enumerate(poems):
        pairs.append(f"{title}\n{body}")
        tf = words_of(title, body)
        found = [w for w in tf if w in idf]
        best = sorted(found, key=lambda w: -tf[w] * idf[w])[:4]
        if best:
            rng = random.Random(i)
            chosen = set(rng.sample(best, rng.randint(1, min(3, len(best)))))
            pairs.append(" ".join(w for w in found if w in chosen) + f"\n{body}")
    kept = len(pairs) - len(poems)
    # Shuffled: training reads windows of the concatenated documents, and a poem's two pairs side by side
    # put its body twice in one 128-character window, which teaches copying, not poems (the first run
    # of configs/tang-theme.toml on unshuffled pairs lost 0.17 bits/char on the val split that way).
    random.Random(0).shuffle(pairs)
    with open(OUT / "corpus.jsonl.tmp", "w", encoding="utf-8") as f:
        for text in pairs:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    (OUT / "corpus.jsonl.tmp").replace(OUT / "corpus.jsonl")
    report = {"poems": n, "val_poems_left_out": len(held_out), "with_keywords": kept, "keyword_vocabulary": len(idf), "min_df": MIN_DF,
              "max_share": MAX_SHARE, "source": str(SOURCE.relative_to(REPO))}
    (OUT / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(report, ensure_ascii=False))


if __name__ == "__main__":
    main()
