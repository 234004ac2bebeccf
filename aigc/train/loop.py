"""The training loop: `aigc train CONFIG.toml`.

One loop for every family: AdamW (Loshchilov & Hutter 2019) with decay only on
matrices, linear warmup then cosine decay, gradient accumulation, global-norm
clipping, autocast mixed precision, periodic evaluation, atomic checkpoints.

Determinism: the batches and dropout of step ``s`` come from generators seeded by
``(seed, s)`` alone, so a run resumed from the checkpoint of step s continues
exactly as if it had never stopped (same seed, same device -> same weights). With
``max_minutes`` the schedule also follows the clock, which trades that away.

Run folder::

    config.toml      the resolved config, every default written out
    run.json         seed, versions, git commit, command line, start times
    metrics.jsonl    one JSON object per log or evaluation line
    loss.png         train and val loss curves
    checkpoints/     step-NNNNNN/ (model folder + optimizer + state.json), latest
    samples/         text sampled at each checkpoint
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from aigc.api import pick_device, set_threads
from aigc.atomic import write_json, write_text
from aigc.config import RunConfig, config_from_dict, read_toml
from aigc.data.shards import TokenData, bits_per_char, data_key, default_prepared_dir, prepare
from aigc.errors import AigcError
from aigc.models import build_model, family_of, load_model_folder, read_model_config
from aigc.train.checkpoint import latest_checkpoint, load_training_state, save_checkpoint
from aigc.train.objectives import lm_loss
from aigc.train.plot import plot_losses


def lr_at(progress: float, step: int, cfg) -> float:
    """Learning rate at ``step``: linear warmup over ``warmup_steps``, then cosine from ``lr``
    to ``min_lr`` as ``progress`` goes from the end of warmup (0) to the end of training (1)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(max(progress, 0.0), 1.0)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices (dim >= 2) except embeddings; none on biases and norms."""
    decay, no_decay = [], []
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    seen = set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def environment() -> dict:
    """Versions and git commit recorded in run.json."""
    import numpy
    import tokenizers

    import aigc

    commit = "unknown"
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(aigc.__file__).parent,
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            commit = out.stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                   cwd=Path(aigc.__file__).parent, capture_output=True, text=True, timeout=10)
            if dirty.stdout.strip():
                commit += "-dirty"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {"aigc": aigc.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "tokenizers": tokenizers.__version__,
            "platform": platform.platform(), "git_commit": commit}


class _StopFlag:
    """Ctrl-C / SIGTERM: finish the current step, write a checkpoint, exit. A second Ctrl-C aborts."""

    def __init__(self):
        self.set = False
        self._old = {}

    def _handler(self, signum, frame):
        if self.set:
            raise KeyboardInterrupt
        self.set = True
        tqdm.write("interrupted: finishing this step and writing a checkpoint (Ctrl-C again to abort)")

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def ensure_prepared(cfg: RunConfig, progress: bool = True) -> TokenData:
    """The prepared shards for ``cfg.data``, preparing them first when missing or stale."""
    folder = default_prepared_dir(cfg.data)
    meta = folder / "meta.json"
    if meta.is_file():
        try:
            saved = json.loads(meta.read_text(encoding="utf-8")).get("data") or {}
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            saved = {}
        diff = [k for k, v in data_key(cfg.data).items() if saved.get(k) != v]
        if diff:
            raise AigcError(f"{folder}: holds data prepared with other settings (differs in data."
                            f"{', data.'.join(diff)}); set data.prepared_dir to another folder, or delete this one")
        return TokenData(folder)
    print(f"preparing {folder} ...", file=sys.stderr)
    prepare(cfg.data, folder, progress=progress)
    return TokenData(folder)


def _autocast(device: torch.device, dtype: str):
    if dtype == "float32":
        return contextlib.nullcontext()
    if dtype == "float16" and device.type != "cuda":
        raise AigcError("train.dtype = 'float16' needs a CUDA device; use bfloat16 on CPU")
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


@torch.no_grad()
def estimate_loss(model, data: TokenData, cfg: RunConfig, device, split: str) -> float:
    """Mean loss over ``eval_batches`` batches of ``split``, the same batches at every evaluation."""
    model.eval()
    gen = torch.Generator().manual_seed(cfg.train.seed + 1)
    losses = []
    for _ in range(cfg.train.eval_batches):
        x, y = data.batch(split, cfg.train.batch_size, cfg.model.block_size, gen)
        with _autocast(device, cfg.train.dtype):
            loss, _ = lm_loss(model, (x.to(device), y.to(device)))
        losses.append(loss.item())
    model.train()
    return sum(losses) / len(losses)


def _open_run(cfg: RunConfig, resume: bool):
    """Check the run folder: a new run needs an empty one; a resumed run needs a matching one.

    Returns the run folder, its latest checkpoint (or None) and that checkpoint's model config (or None).
    """
    run_dir = Path(cfg.train.out_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise AigcError(f"{run_dir}: train.out_dir is a file, expected a folder for the run")
    holds_run = (run_dir / "config.toml").exists() or (run_dir / "checkpoints").exists()
    if not resume:
        if holds_run:
            raise AigcError(f"{run_dir}: already holds a run; pass --resume to continue it, "
                            "or set --train.out_dir to a new folder")
        return run_dir, None, None
    if not holds_run:
        raise AigcError(f"{run_dir}: no run to resume (no config.toml or checkpoints/)")
    ckpt = latest_checkpoint(run_dir)
    saved = read_model_config(ckpt) if ckpt is not None else None
    if saved is not None:
        if family_of(saved) != family_of(cfg.model):
            raise AigcError(f"{run_dir}: holds a {family_of(saved)!r} run; the config asks for "
                            f"{family_of(cfg.model)!r}")
        diff = [k for k, v in dataclasses.asdict(cfg.model).items()
                if dataclasses.asdict(saved)[k] != v and k != "vocab_size"]  # vocab: checked against the data
        if diff:
            raise AigcError(f"{run_dir}: the checkpoint's model differs from the config in: {', '.join(diff)}")
    return run_dir, ckpt, saved


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after ``step`` (by a run that died before its next checkpoint)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except (json.JSONDecodeError, AttributeError):
            pass  # a line cut short by a kill
    write_text(path, "".join(line + "\n" for line in keep))


def resolve_resume_config(run_dir: str | Path, overrides: list[str]) -> RunConfig:
    """The config of an existing run folder, with overrides (e.g. a longer max_steps)."""
    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        raise AigcError(f"{run_dir}: not a run folder (no config.toml)")
    cfg = config_from_dict(read_toml(path), str(path), overrides)
    if Path(cfg.train.out_dir).resolve() != Path(run_dir).resolve():
        cfg.train.out_dir = str(run_dir)
    return cfg


def train(cfg: RunConfig, resume: bool = False, progress: bool = True, argv: list[str] | None = None) -> Path:
    """Train ``cfg.model`` on ``cfg.data``; return the run folder.

    Raises:
        AigcError: an existing run without ``resume``, a mismatched run with it, or bad data.
    """
    run_dir, ckpt, saved = _open_run(cfg, resume)
    device = pick_device(cfg.train.device)
    _autocast(device, cfg.train.dtype)  # an impossible dtype fails before anything is written
    data = ensure_prepared(cfg, progress)
    tokenizer = data.tokenizer
    set_threads(cfg.train.threads, "train.threads")
    if cfg.train.init_from:
        base = load_model_folder(cfg.train.init_from, families=(family_of(cfg.model),))
        cfg.model = base.config
    if cfg.model.vocab_size != tokenizer.vocab_size and not cfg.train.init_from:
        cfg.model.vocab_size = tokenizer.vocab_size  # the model's vocabulary is the tokenizer's
    cfg.validate()
    data.check_block_size(cfg.model.block_size)
    if saved is not None and dataclasses.asdict(saved) != dataclasses.asdict(cfg.model):
        raise AigcError(f"{run_dir}: the checkpoint's vocabulary ({saved.vocab_size}) differs "
                        f"from the tokenizer of the data ({tokenizer.vocab_size}); resume with the run's own data")

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    if cfg.train.init_from:
        model.load_state_dict(base.state_dict())
    model.to(device).train()
    optimizer = torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), lr=cfg.train.lr,
                                  betas=(cfg.train.beta1, cfg.train.beta2),
                                  fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(enabled=cfg.train.dtype == "float16")
    metrics_path = run_dir / "metrics.jsonl"
    state = {"step": 0, "tokens": 0, "elapsed_s": 0.0, "best_val_loss": None}
    if ckpt is not None:
        resumed = load_model_folder(ckpt, device)
        model.load_state_dict(resumed.state_dict())
        state.update(load_training_state(ckpt, optimizer))
        _truncate_metrics(metrics_path, state["step"])
        print(f"resuming {run_dir} from {ckpt.name}", file=sys.stderr)
    elif resume:
        _truncate_metrics(metrics_path, 0)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.toml", cfg.to_toml())
    run_info = {"seed": cfg.train.seed, "command": argv or sys.argv, "device": str(device),
                "prepared_data": str(data.folder), "data_meta": data.meta, **environment()}
    try:
        old_info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old_info = {}
    old_info = old_info if isinstance(old_info, dict) else {}
    run_info["started"] = old_info.get("started", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    run_info["resumed"] = old_info.get("resumed", []) + ([time.strftime("%Y-%m-%dT%H:%M:%S%z")] if ckpt else [])
    write_json(run_dir / "run.json", run_info)

    t = cfg.train
    tokens_per_step = t.batch_size * t.grad_accum * cfg.model.block_size
    tpc = data.tokens_per_char("val")
    gen_config = dataclasses.asdict(cfg.sample)
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    print(f"{family_of(cfg.model)}: {n_params / 1e6:.2f}M parameters, {data.meta['splits']['train']['tokens']:,} "
          f"train tokens, {tokens_per_step:,} tokens/step, device {device}", file=sys.stderr)

    def log(row: dict) -> None:
        with open(metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def evaluate(step: int) -> None:
        val = estimate_loss(model, data, cfg, device, "val")
        row = {"step": step, "val_loss": val, "val_ppl": math.exp(min(val, 50)),
               "val_bpc": bits_per_char(val, tpc), "tokens": state["tokens"], "elapsed_s": state["elapsed_s"]}
        log(row)
        if state["best_val_loss"] is None or val < state["best_val_loss"]:
            state["best_val_loss"] = val
        plot_losses(metrics_path, run_dir / "loss.png", f"{run_dir.name}: {family_of(cfg.model)}")
        bar.write(f"step {step}: val loss {val:.4f}, perplexity {row['val_ppl']:.2f}, "
                  f"bits/char {row['val_bpc']:.4f}")

    def checkpoint(step: int) -> None:
        model.eval()
        save_checkpoint(run_dir, model, optimizer, tokenizer, gen_config, dict(state), t.keep_checkpoints)
        model.train()

    def write_sample(step: int) -> None:
        from aigc.api import TextModel

        model.eval()
        tm = TextModel(model, tokenizer, dataclasses.replace(cfg.sample), run_dir)
        prompts = cfg.sample.prompts or [""]
        lines = []
        for p in prompts:
            try:
                text = tm.generate(p, n=1, seed=t.seed, max_new_tokens=min(cfg.sample.max_new_tokens, 128))[0]
            except AigcError as e:
                text = f"({e})"
            lines.append(f"--- prompt: {p!r}\n{text}\n")
        write_text(run_dir / "samples" / f"step-{step:06d}.txt", "\n".join(lines))
        model.train()

    step = state["step"]
    if ckpt is not None and step >= t.max_steps:
        print(f"{run_dir}: already at step {step} of train.max_steps = {t.max_steps}; nothing to do "
              f"(raise it to continue, e.g. --train.max_steps={2 * t.max_steps})", file=sys.stderr)
        return run_dir
    start_time = time.time() - state["elapsed_s"]
    limit_s = t.max_minutes * 60
    bar = tqdm(total=t.max_steps, initial=step, desc="train", unit="step", disable=not progress,
               dynamic_ncols=True, file=sys.stderr)
    window_tokens, window_start = 0, time.time()
    with _StopFlag() as stop:
        while step < t.max_steps:
            elapsed = time.time() - start_time
            if limit_s and elapsed >= limit_s:
                bar.write(f"time limit of {t.max_minutes} minutes reached at step {step}")
                break
            progress_frac = (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)
            if limit_s:
                progress_frac = max(progress_frac, elapsed / limit_s)
            lr = lr_at(progress_frac, step, t)
            for group in optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed(t.seed * 1_000_003 + step)  # dropout of this step
            batch_gen = torch.Generator().manual_seed(t.seed * 1_000_003 + step)
            loss_sum = 0.0
            for _ in range(t.grad_accum):
                x, y = data.batch("train", t.batch_size, cfg.model.block_size, batch_gen)
                with _autocast(device, t.dtype):
                    loss, _ = lm_loss(model, (x.to(device, non_blocking=True), y.to(device, non_blocking=True)))
                scaler.scale(loss / t.grad_accum).backward()
                loss_sum += loss.item()
            if t.grad_clip:
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip).item()
            else:
                grad_norm = None
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            state["step"] = step
            state["tokens"] += tokens_per_step
            state["elapsed_s"] = time.time() - start_time
            window_tokens += tokens_per_step
            train_loss = loss_sum / t.grad_accum
            if not math.isfinite(train_loss):
                bar.close()
                raise AigcError(f"the training loss became {train_loss} at step {step}; no checkpoint written "
                                f"(a lower train.lr than {t.lr} usually helps); the last good checkpoint is kept")
            bar.update(1)
            if step % t.log_interval == 0 or step == t.max_steps:
                now = time.time()
                tok_s = window_tokens / max(now - window_start, 1e-9)
                window_tokens, window_start = 0, now
                log({"step": step, "train_loss": train_loss, "lr": lr, "grad_norm": grad_norm,
                     "tokens": state["tokens"], "tokens_per_s": tok_s, "elapsed_s": state["elapsed_s"]})
                bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tok_s:,.0f}", lr=f"{lr:.1e}")
            if step % t.eval_interval == 0:
                evaluate(step)
            if step % t.checkpoint_interval == 0:
                checkpoint(step)
                write_sample(step)
            if stop.set:
                break
        final = state["step"]
        if final % t.eval_interval != 0:
            evaluate(final)
        if final % t.checkpoint_interval != 0:
            checkpoint(final)
            write_sample(final)
    bar.close()
    if stop.set:
        print(f"stopped at step {final}; checkpoint written; continue with: aigc train {run_dir} --resume",
              file=sys.stderr)
        raise KeyboardInterrupt
    return run_dir


