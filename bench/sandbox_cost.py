"""The code sandbox's cost per program: this tree against an older checkout, side by side.

Scores the 164 canonical HumanEval solutions with one worker (``workers=1``, so the figure is the
latency of one program, not throughput), alternating the two trees, and prints the median and
range of seconds per program for each. Usage:

    git worktree add /tmp/aigc-old be89093     # the sandbox before the kernel layers and the judge
    python bench/sandbox_cost.py --old /tmp/aigc-old --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

SNIPPET = r"""
import inspect, json, time
from aigc.evaluate.code import load_problems, reference_completions, score
from aigc.evaluate.sandbox import check_sandbox
problems = load_problems("humaneval")
params = inspect.signature(score).parameters
unsafe = {"unsafe_no_sandbox": False} if "unsafe_no_sandbox" in params else {"allow_network": False}
layers = check_sandbox(**({"unsafe_no_sandbox": False} if "unsafe_no_sandbox" in params else {})).describe()
start = time.perf_counter()
report = score(problems, reference_completions(problems, "canonical"), [1], workers=1, progress=False, **unsafe)
seconds = time.perf_counter() - start
print(json.dumps({"per_program_s": seconds / len(problems), "solved": report["solved"], "layers": layers}))
"""


def one_round(tree: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True, cwd=tree,
                         env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"{tree}: {out.stderr.strip().splitlines()[-1]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, help="a checkout of the older tree")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    trees = {"old": Path(args.old).resolve(), "new": Path(__file__).resolve().parent.parent}
    times: dict[str, list[float]] = {name: [] for name in trees}
    last = {}
    for _ in range(args.rounds):
        for name, tree in trees.items():  # alternate, so drift in the machine's load hits both
            last[name] = one_round(tree)
            times[name].append(last[name]["per_program_s"])
    for name in trees:
        t = times[name]
        print(f"{name}: {1000 * statistics.median(t):.1f} ms/program (range {1000 * min(t):.1f}-{1000 * max(t):.1f}, "
              f"{len(t)} rounds), solved {last[name]['solved']}/164; layers: {last[name]['layers']}")


if __name__ == "__main__":
    main()
