"""Score the image bench runs and print the bench/RESULTS.md rows (see bench/images.sh).

For each of runs/bench-{dcgan,vae}-MINcpumin: the checkpoint with the most CPU time not
above SNAPSHOT minutes and the final one are scored with `aigc eval` (10,000 samples),
a 10x10 grid (seed 0) of each is written to bench/results/, and one markdown row is
printed per model, plus the floor and ceiling rows and the pythae reference.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AIGC = str(ROOT / ".venv" / "bin" / "aigc")


def checkpoints(run: Path) -> list[tuple[float, Path]]:
    out = []
    for ck in sorted((run / "checkpoints").glob("step-*")):
        state = json.loads((ck / "state.json").read_text())
        out.append((state["cpu_s"] / 60, ck))
    return out


def score(ck: Path, name: str) -> dict:
    res_path = ROOT / "bench" / "results" / f"{name}.json"
    subprocess.run([AIGC, "eval", str(ck), "--images", "10000", "--threads", "2", "--quiet", "--out", str(res_path)],
                   check=True, cwd=ROOT)
    subprocess.run([AIGC, "sample", str(ck), "--n", "100", "--nrow", "10", "--seed", "0", "--out",
                    str(ROOT / "bench" / "results" / f"{name}.png")], check=True, cwd=ROOT)
    return json.loads(res_path.read_text())


def row(label: str, r: dict, extra: str = "") -> str:
    return (f"| {label} | {r['fd']:.2f} | {r['kid']:.4f} ± {r['kid_std']:.4f} | {r['precision']:.3f} | "
            f"{r['recall']:.3f} | {extra} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--snapshot", type=float, default=15)
    args = ap.parse_args()
    lines, refs = [], None
    for fam in ("dcgan", "vae"):
        run = ROOT / "runs" / f"bench-{fam}-{args.minutes:g}cpumin"
        cks = checkpoints(run)
        early = max((c for c in cks if c[0] <= args.snapshot + 1e-6), key=lambda c: c[0])
        for (minutes, ck), tag in ((early, f"{args.snapshot:g}"), (cks[-1], f"{args.minutes:g}")):
            res = score(ck, f"{fam}-{tag}cpumin")
            refs = res["rows"]
            step = json.loads((ck / "state.json").read_text())["step"]
            extra = f"step {step}, {minutes:.1f} CPU min"
            if "class_accuracy_mean" in res:
                extra += f"; class accuracy {res['class_accuracy_mean']:.3f}"
            lines.append(row(f"{fam} @ {tag} CPU min", res["rows"]["model"], extra))
    for tag in (f"{args.snapshot:g}", f"{args.minutes:g}"):
        p = ROOT / "bench" / "results" / f"pythae-vae-{tag}cpumin.json"
        if p.is_file():
            res = json.loads(p.read_text())
            lines.append(row(f"pythae VAE @ {tag} CPU min", res["rows"]["model"],
                             f"{res['epochs']} epochs, {res['cpu_minutes']} CPU min"))
    lines.append(row("real train vs real test (floor)", refs["real train vs real test (floor)"]))
    lines.append(row("uniform noise (ceiling)", refs["uniform noise (ceiling)"]))
    print("| model | FD (fmnist-classifier features) | KID | precision | recall | notes |")
    print("|---|---|---|---|---|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
