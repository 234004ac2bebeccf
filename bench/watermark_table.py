"""Markdown rows of bench/RESULTS.md's watermark tables from bench/watermark.py's JSON files.

    python bench/watermark_table.py bench/results/watermark-code.json [more.json ...]
"""

from __future__ import annotations

import json
import sys

LENGTHS = (25, 50, 100, 200)


def row(name: str, r: dict, plain: float) -> str:
    tpr = " | ".join(f"{r[f'tpr_{n}']:.3f} ({r[f'median_z_{n}']:.1f})" for n in LENGTHS)
    cost = 100 * (r["perplexity"] / plain - 1)
    edits = " / ".join(f"{r[f'tpr_edit_{k}']:.2f}" for k in (10, 20, 30))
    return f"| {name} | {tpr} | {r['perplexity']:.2f} ({cost:+.0f}%) | {edits} |"


def human(h: dict) -> str:
    return "; ".join(f"{v['false_positives']} of {v['texts']} (max z {v['max_z']:.2f})" for v in h.values())


def main() -> None:
    for path in sys.argv[1:]:
        d = json.load(open(path, encoding="utf-8"))
        print(f"{path}: {d['model']}, {d['scheme']}, {d['samples']} samples, plain perplexity {d['plain_perplexity']:.2f}")
        for r in d["rows"]:
            print(row(f"{d['scheme']}, delta {r['delta']:g}", r, d["plain_perplexity"]))
        if "synthid" in d:
            print(row("SynthID-text", d["synthid"], d["plain_perplexity"]))
        print("false positives (human text, L = 25/50/100/200):", human(d["human"]))
        if "synthid" in d:
            print("SynthID false positives:", human(d["synthid"]["human"]))
        print()


if __name__ == "__main__":
    main()
