"""The code rows of bench/RESULTS.md from the eval JSON files of the bench runs.

    .venv/bin/python bench/code_table.py runs/bench-code-30cpumin runs/bench-code-120cpumin
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    print("| model | val loss (nats/token) | val bits/char | task | syntax valid | empty | pass@1 | pass@10 | solved |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run in map(Path, sys.argv[1:]):
        state = json.loads((run / "eval.json").read_text()) if (run / "eval.json").is_file() else {}
        for task in ("functions", "humaneval"):
            path = run / f"eval-{task}.json"
            if not path.is_file():
                continue
            r = json.loads(path.read_text())
            loss = f"{state['val_loss']:.3f}" if state else "-"
            bpb = f"{state['val_bpc']:.3f}" if state else "-"
            comps = [c for cs in r["completions"] for c in cs]
            empty = r.get("empty_share", sum(not c.strip() for c in comps) / len(comps))
            print(f"| {run.name} | {loss} | {bpb} | {task} ({r['problems']} problems x {r['samples_per_problem']}) "
                  f"| {r['syntax_valid']:.3f} | {empty:.3f} | {r['pass@1']:.3f} | {r.get('pass@10', float('nan')):.3f} "
                  f"| {r['solved']} |")


if __name__ == "__main__":
    main()
