#!/usr/bin/env python3
"""Build ``tang-base``, the base model aigc ships, from nothing but the npm registry.

Stages (run all with no argument, or name one):

``corpus``
    Reads the npm package ``chinese-poetry@2.0.1`` (``npm pack``; or ``--tgz``): the
    57,607 Tang poems (``quantangshi/poet.tang.*.json``), the 254,248 Song poems
    (``poet.song.*.json``) and the 21,053 Song ci (``songci/ci.song.*.json``);
    converts everything to simplified characters with OpenCC ``t2s``; one document
    per poem, ``title + "\\n" + lines`` (a ci's title is its tune name, 词牌). Empty
    bodies and exact duplicates are dropped.

    The 629 ci of 辛弃疾 (Xin Qiji) are taken **out** of the pretraining corpus and
    written to ``aigc/data/builtin/xin-qiji-ci.jsonl`` (the dataset ``xin-qiji-ci``,
    the style set of ``make demo``), so the base model has never seen the style set
    and its val loss there is honest.

    The tokenizer: one token per character (aigc's ``char`` tokenizer), the
    ``VOCAB_CHARS`` most frequent characters of the corpus plus ``<|endoftext|>``,
    the chat markers ``<|im_start|>`` / ``<|im_end|>`` and the role names'
    characters. Documents with a character outside that vocabulary are dropped
    (counted in the report); the style set is checked against it too.

    Writes ``prepared/classical-poetry/{corpus.jsonl, tokenizer.json, report.json}``.

``train``
    ``aigc train configs/tang-base.toml`` (the recipe; see that file).

``package``
    Copies the run's final model into ``aigc/models/builtin/tang-base/`` with its
    weights in float16 (``model.safetensors``), its tokenizer, a ChatML chat
    template in ``tokenizer_config.json`` and ``metrics.json`` (the recipe, the
    run's last val estimate, every run behind it with its steps and time, and with
    ``--val-eval`` the score on the whole val split). The tang-base shipped since
    2026-12-04 is ``configs/tang-base.toml``'s run continued by
    ``configs/tang-base-long.toml`` and fine-tuned by ``configs/tang-theme.toml``
    (on ``scripts/build_theme_pairs.py``'s pairs)::

        python scripts/build_tang_base.py package --run runs/tang-theme \
            --recipe configs/tang-theme.toml --val-eval bench/results/tang-val-shipped-theme.json

Rebuild the first tang-base: ``python scripts/build_tang_base.py`` (about 90 minutes on 2 CPU cores,
the training being 80 of them). Needs ``npm`` and the ``opencc`` package.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PACKAGE = "chinese-poetry@2.0.1"
WORK = REPO / "prepared" / "classical-poetry"
STYLE_OUT = REPO / "aigc" / "data" / "builtin" / "xin-qiji-ci.jsonl"
STYLE_AUTHOR = "辛弃疾"
MODEL_OUT = REPO / "aigc" / "models" / "builtin" / "tang-base"
RUN = REPO / "runs" / "tang-base"
VOCAB_CHARS = 6000
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ROLE_TEXT = "system\nuser\nassistant\n"  # the ChatML template writes these between the markers
TANG = re.compile(r"^package/dist/quantangshi/poet\.(tang|song)\.(\d+)\.json$")
CI = re.compile(r"^package/dist/songci/ci\.song\.(\d+)\.json$")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def npm_pack(dest: Path) -> Path:
    proc = subprocess.run(["npm", "pack", PACKAGE, "--pack-destination", str(dest)],
                          capture_output=True, text=True, check=False)
    tgzs = sorted(dest.glob("*.tgz"))
    if proc.returncode != 0 or len(tgzs) != 1:
        sys.exit(f"error: `npm pack {PACKAGE}` failed: {proc.stderr.strip().splitlines()[-1:]}")
    return tgzs[0]


def read_poems(tgz: Path):
    """Yield (kind, order, author, title, lines) for every Tang/Song poem and Song ci, in a fixed order."""
    members = []
    with tarfile.open(tgz) as tar:
        for m in tar.getmembers():
            if (match := TANG.match(m.name)):
                members.append(((0 if match[1] == "tang" else 1, int(match[2])), m))
            elif (match := CI.match(m.name)):
                members.append(((2, int(match[1])), m))
        members.sort(key=lambda x: x[0])
        for (kind, _), m in members:
            for poem in json.load(tar.extractfile(m)):
                title = poem.get("rhythmic") if kind == 2 else poem.get("title")
                yield kind, poem.get("author") or "", title or "", poem.get("paragraphs") or []


def build_corpus(tgz: Path) -> None:
    import opencc

    t2s = opencc.OpenCC("t2s").convert
    docs, style, seen = [], [], set()
    counts = collections.Counter()
    for kind, author, title, lines in read_poems(tgz):
        lines = [t2s(x.strip()) for x in lines if isinstance(x, str) and x.strip()]
        if not lines:
            continue
        author, title = t2s(author.strip()), t2s(title.strip())
        text = "\n".join(([title] if title else []) + lines)
        key = (author, text)
        if key in seen:
            continue
        seen.add(key)
        if kind == 2 and author == STYLE_AUTHOR:
            style.append({"author": author, "title": title, "text": text})
            continue
        docs.append({"kind": ("tang", "song", "ci")[kind], "text": text})
        counts.update(text)
    vocab_chars = [c for c, _ in counts.most_common() if c != "\n"][:VOCAB_CHARS - len(SPECIALS) - 1]
    vocab_set = set(vocab_chars) | set(ROLE_TEXT) | {"\n"}
    kept = [d for d in docs if set(d["text"]) <= vocab_set]
    style_missing = collections.Counter(c for d in style for c in d["text"] if c not in vocab_set)

    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    from aigc.data.tokenizer import Tokenizer

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in sorted(vocab_set):
        vocab[ch] = len(vocab)
    tk = HFTokenizer(models.WordLevel(vocab, unk_token=SPECIALS[0]))
    tk.pre_tokenizer = pre_tokenizers.FixedLength(length=1)
    tk.decoder = decoders.Fuse()
    tk.add_special_tokens(SPECIALS)
    WORK.mkdir(parents=True, exist_ok=True)
    Tokenizer(tk).save(WORK / "tokenizer.json")
    with open(WORK / "corpus.jsonl", "w", encoding="utf-8") as f:
        for d in kept:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    STYLE_OUT.write_text("".join(json.dumps(d, ensure_ascii=False, sort_keys=True) + "\n" for d in style),
                         encoding="utf-8")
    total = sum(counts.values())
    covered = sum(counts[c] for c in vocab_set)
    report = {
        "source": PACKAGE, "documents": len(docs), "kept": len(kept),
        "by_kind": dict(collections.Counter(d["kind"] for d in kept)),
        "characters": sum(len(d["text"]) for d in kept), "distinct_characters": len(counts),
        "vocab_size": len(vocab), "occurrences_covered": covered / total,
        "style_set": {"author": STYLE_AUTHOR, "ci": len(style), "missing_characters": dict(style_missing)},
    }
    (WORK / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    print(json.dumps(report, ensure_ascii=False, indent=2))


def train() -> None:
    cmd = [sys.executable, "-m", "aigc", "train", str(REPO / "configs" / "tang-base.toml")]
    print(" ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, cwd=REPO)


def lineage(run: Path) -> list[dict]:
    """Every training run behind ``run``'s model, first first: each run's folder, the step the model was
    taken at and its wall and CPU seconds to there (the run's metrics rows), followed back through
    ``train.init_from`` (a checkpoint or run folder, or the shipped ``tang-base``, whose own lineage is read
    from its metrics.json)."""
    import tomllib

    from aigc.folders import checkpoint_step, latest_checkpoint

    chain: list[dict] = []
    upto = None  # the step a later run started from (a checkpoint's), None: the run's last
    while True:
        if upto is None:  # the model is the run's latest checkpoint: its own state says where it stopped
            last = json.loads((latest_checkpoint(run) / "state.json").read_text(encoding="utf-8"))
        else:  # a later run started from checkpoint step `upto`, maybe pruned since: its last metrics row
            rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
            last = ([r for r in rows if "train_loss" in r and r["step"] <= upto] or [{}])[-1]
        chain.append({"run": str(run.resolve().relative_to(REPO)), "steps": last.get("step"),
                      "wall_s": last.get("elapsed_s"), "cpu_s": last.get("cpu_s")})
        base = tomllib.loads((run / "config.toml").read_text(encoding="utf-8"))["train"].get("init_from", "")
        if base == "tang-base":
            shipped = json.loads((MODEL_OUT / "metrics.json").read_text(encoding="utf-8"))
            final = shipped.get("final_eval") or {}
            earlier = shipped.get("lineage") or [{"run": shipped["run"], "steps": final.get("step"),
                                                  "wall_s": final.get("elapsed_s"), "cpu_s": None}]
            ours = {c["run"] for c in chain}  # packaging again: the shipped lineage already holds these runs
            return [r for r in earlier if r["run"] not in ours] + chain[::-1]
        if not base:
            return chain[::-1]
        path = Path(base) if Path(base).is_absolute() else REPO / base
        upto = checkpoint_step(path)
        run = path.parent.parent if upto is not None else path


def package(run: Path = RUN, recipe: str = "configs/tang-base.toml", val_eval: Path | None = None) -> None:
    """The shipped folder (fp16 weights, tokenizer, chat template, metrics) from ``run``'s latest checkpoint:
    configs/tang-base.toml's run, or a later one continued from it (``--run runs/tang-theme --recipe
    configs/tang-theme.toml``). ``val_eval``: an ``aigc eval --out`` JSON of this model on the pretraining
    corpus's whole val split, recorded beside the run's own last val estimate."""
    import torch
    from safetensors.torch import save_file

    from aigc.atomic import atomic_dir, write_json
    from aigc.formats.model_folder import load_model_folder
    from aigc.folders import latest_checkpoint

    ckpt = latest_checkpoint(run)
    if ckpt is None:
        sys.exit(f"error: {run} has no checkpoint; run the train stage first")
    model = load_model_folder(ckpt)
    state = {k: v.to(torch.float16).contiguous() for k, v in model.state_dict().items()
             if k != "lm_head.weight" or not model.config.tie_embeddings}
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    evals = [r for r in rows if "val_loss" in r]
    run_info = json.loads((run / "run.json").read_text(encoding="utf-8"))
    val_split = json.loads(val_eval.read_text(encoding="utf-8")) if val_eval else None
    with atomic_dir(MODEL_OUT) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt", "family": "gpt"})
        for name in ("config.json", "tokenizer.json", "generation_config.json"):
            shutil.copy(ckpt / name, tmp / name)
        write_json(tmp / "tokenizer_config.json", {
            "chat_template": CHAT_TEMPLATE, "eos_token": "<|im_end|>", "bos_token": None,
            "pad_token": "<|endoftext|>", "tokenizer_class": "PreTrainedTokenizerFast"})
        write_json(tmp / "metrics.json", {
            "run": str(run.resolve().relative_to(REPO)), "checkpoint": ckpt.name, "final_eval": evals[-1] if evals else None,
            "git_commit": run_info.get("git_commit"), "recipe": recipe, "lineage": lineage(run),
            "val_split_eval": val_split and {
                "model": str(Path(val_split["model"]).resolve().relative_to(REPO)), "dtype": val_split.get("dtype"),
                **{k: val_split.get(k) for k in ("data", "val_loss", "val_bpc", "val_tokens_scored")}},
            "corpus": json.loads((WORK / "report.json").read_text(encoding="utf-8")),
        })
    print(f"wrote {MODEL_OUT} ({(MODEL_OUT / 'model.safetensors').stat().st_size / 1e6:.1f} MB weights)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", nargs="?", choices=["corpus", "train", "package"], help="one stage (default: all)")
    ap.add_argument("--tgz", type=Path, help="an already downloaded chinese-poetry-2.0.1.tgz")
    ap.add_argument("--run", type=Path, default=RUN, help="package: the run to ship (default: the train stage's)")
    ap.add_argument("--recipe", default="configs/tang-base.toml", help="package: the run's recipe, recorded")
    ap.add_argument("--val-eval", type=Path, help="package: `aigc eval --out` JSON on the whole val split, recorded")
    args = ap.parse_args()
    if args.stage in (None, "corpus"):
        if args.tgz:
            build_corpus(args.tgz)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                build_corpus(npm_pack(Path(tmp)))
    if args.stage in (None, "train"):
        train()
    if args.stage in (None, "package"):
        package(args.run, args.recipe, args.val_eval)


if __name__ == "__main__":
    main()
