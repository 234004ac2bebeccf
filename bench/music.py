"""The music models after the same CPU time: for each run and budget, the checkpoint nearest that many
CPU minutes of training (the run's metrics.jsonl says the CPU time of each logged step), its val bits per
character on the whole val split, and `aigc eval --task music` beside held-out tunes and the Markov floor.

    python bench/music.py --runs runs/folk-abc-gpt runs/folk-abc-lstm --cpu-minutes 30 120 --samples 100

Writes bench/results/music.json; a run that has not reached a budget yet is reported as such.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aigc.atomic import write_json  # noqa: E402


def checkpoint_at(run: Path, cpu_minutes: float) -> tuple[Path, dict] | None:
    """The checkpoint nearest ``cpu_minutes`` of training CPU time (either side; checkpoints come every
    few hundred steps), with its step and CPU minutes; None when the run has not trained that long yet.
    A checkpoint's CPU time is its state.json's (the final one, written when the run's CPU budget ran
    out, has no metrics row of its own), else the metrics.jsonl row of its step."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    logged = {r["step"]: r["cpu_s"] for r in rows if "cpu_s" in r}
    found = []
    for folder in sorted((run / "checkpoints").glob("step-*")):
        step = int(folder.name.split("-")[1])
        state = folder / "state.json"
        cpu = json.loads(state.read_text()).get("cpu_s") if state.is_file() else None
        cpu = logged.get(step) if cpu is None else cpu
        if cpu is not None:
            found.append((abs(cpu - cpu_minutes * 60), folder, {"step": step, "cpu_minutes": cpu / 60}))
    if not found or max(f[2]["cpu_minutes"] for f in found) < cpu_minutes:
        return None
    return min(found, key=lambda f: f[0])[1:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", type=Path, required=True)
    p.add_argument("--cpu-minutes", nargs="+", type=float, default=[30, 120])
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default="bench/results/music.json")
    args = p.parse_args()
    result = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {"rows": {}}
    for run in args.runs:
        for minutes in args.cpu_minutes:
            key = f"{run.name} @ {minutes:g} CPU min"
            found = checkpoint_at(run, minutes)
            if found is None:
                result["rows"][key] = {"status": "no checkpoint within this budget yet"}
                print(key, "no checkpoint within this budget yet", flush=True)
                continue
            folder, where = found
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "music.json"
                subprocess.run([sys.executable, "-m", "aigc", "eval", str(folder), "--task", "music", "--samples",
                                str(args.samples), "--seed", "0", "--threads", str(args.threads), "--quiet",
                                "--out", str(out)], check=True, cwd=ROOT)
                music = json.loads(out.read_text())
                text = Path(tmp) / "text.json"
                subprocess.run([sys.executable, "-m", "aigc", "eval", str(folder), "--samples", "1", "--threads",
                                str(args.threads), "--quiet", "--out", str(text)], check=True, cwd=ROOT,
                               stdout=subprocess.DEVNULL)
                val = json.loads(text.read_text())
            result["rows"][key] = {**where, "checkpoint": str(folder.relative_to(ROOT) if folder.is_relative_to(ROOT)
                                                              else folder),
                                   "val_bpc": val["val_bpc"], "val_loss": val["val_loss"], **music}
            print(key, json.dumps({k: v for k, v in music["rows"]["model"].items()}), flush=True)
            write_json(args.json, result)
    write_json(args.json, result)


if __name__ == "__main__":
    main()
