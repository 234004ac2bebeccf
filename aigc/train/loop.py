"""The training loop: `aigc train CONFIG.toml`.

Train layer: knows configs, prepared data, model folders and checkpoints, and families only
through a task (:mod:`aigc.train.tasks`); never imports the public API or the CLI.

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
    tensorboard/     the same numbers and the sample grids as TensorBoard events (train.log = ["tensorboard"])
    loss.png         train and val loss curves
    checkpoints/     step-NNNNNN/ (model folder + optimizer + state.json), latest
    samples/         text or an image grid sampled at each checkpoint
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from aigc.atomic import write_text
from aigc.config import RunConfig
from aigc.data.prepared import use_base_tokenizer
from aigc.data.tokenizer import Tokenizer
from aigc.train.tensorboard import TensorBoardLog
from aigc.errors import AigcError
from aigc.folders import resolve_model_folder
from aigc.formats.adapter import load_adapter, read_adapter_config, weights_fingerprint
from aigc.formats.checkpoint import load_training_state, read_training_state, save_checkpoint
from aigc.formats.model_folder import load_model_folder
from aigc.models import build_model, family_of
from aigc.models.lora import add_lora, effective_targets
from aigc.runtime import autocast, pick_device, set_threads
from aigc.train import fsdp
from aigc.train.distributed import Ranks, accumulating, agree, barrier, from_environment, one_update, per_rank_batch, wrap
from aigc.train.distributed import start as start_ranks
from aigc.train.distributed import stop as stop_ranks
from aigc.train.lock import RunLock
from aigc.train.plot import plot_losses
from aigc.train.run_folder import StopFlag, environment, open_run, truncate_metrics, write_run_info
from aigc.train.speed import compile_objective, dtype_note, make_optimizer, maybe_compile
from aigc.train.tasks import make_task


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
    embeddings = {id(m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight)
                  for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    seen = set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _model_for(cfg: RunConfig, task, run_dir: Path, ckpt: Path | None, saved, base_folder: Path | None):
    """The model to train: the base model (fine-tuning) or fresh weights, fitted to the data and
    checked against the run's checkpoint; with LoRA adapters added (its base frozen).

    Returns ``(model, LoRAConfig or None)``.

    Raises:
        AigcError: a tokenizer other than the base's, a model that does not fit the data, or a
            checkpoint made with other model or LoRA settings.
    """
    base = base_tokenizer = None
    if cfg.train.init_from:
        base = load_model_folder(base_folder, families=(family_of(cfg.model),))
        cfg.model = base.config
        if (Path(base_folder) / "tokenizer.json").is_file():  # an image base without captions has none
            base_tokenizer = Tokenizer.load(base_folder)
        if task.tokenizer is not None and (base_tokenizer is None or
                                           task.tokenizer.fingerprint() != base_tokenizer.fingerprint()):
            raise AigcError(f"data.tokenizer = {cfg.data.tokenizer!r} is not the tokenizer of the base model "
                            f"{cfg.train.init_from}; its token ids would not match the base's embeddings "
                            "(leave data.tokenizer unset to use the base's)")
    task.configure_model(cfg.model, from_base=base is not None, base_tokenizer=base_tokenizer)
    cfg.validate()
    task.check_model(cfg.model)
    if saved is not None and dataclasses.asdict(saved) != dataclasses.asdict(cfg.model):
        raise AigcError(f"{run_dir}: {task.mismatch_message(saved)}")
    torch.manual_seed(cfg.train.seed)
    model = base if base is not None else build_model(cfg.model)
    lora = cfg.train.lora()
    if ckpt is not None and (lora is None) != (not (ckpt / "adapter_config.json").is_file()):
        raise AigcError(f"{run_dir}: the run {'trains LoRA adapters' if lora is None else 'fine-tunes every weight'}"
                        f"; resume it with its own train.lora_rank")
    if lora is not None:  # freeze the base, train adapters; checkpoints hold the adapter alone
        if ckpt is not None:
            saved_lora = read_adapter_config(ckpt)
            for key in ("rank", "alpha", "dropout", "targets"):
                ours, theirs = getattr(lora, key), getattr(saved_lora, key)
                if key == "targets":
                    ours, theirs = effective_targets(model, lora), sorted(theirs)
                if ours != theirs:
                    raise AigcError(f"{run_dir}: the run's adapters have lora_{key} = {theirs}, the config asks "
                                    f"for {ours}; resume with the run's own LoRA settings")
        add_lora(model, lora)
        model.lora_base = resolve_model_folder(cfg.train.init_from)  # recorded relative to each checkpoint
        model.lora_fingerprint = weights_fingerprint(model.lora_base)  # a changed base is refused on load
    return model, lora


def expected_last_step(step: int, max_steps: int, limit_s: float, elapsed_s: float, steps_per_s: float) -> int:
    """The step the run will end at, for the progress bar's total and ETA: ``max_steps``, or where the
    time limit (``limit_s`` seconds, 0 = none; ``elapsed_s`` spent) stops it at the current speed
    if that comes first."""
    if not limit_s or steps_per_s <= 0:
        return max_steps
    return max(step, min(max_steps, int(step + (limit_s - elapsed_s) * steps_per_s)))


class _Run:
    """One training run in progress: the model, its task, optimizers, loop state and outputs."""

    def __init__(self, cfg: RunConfig, task, model, device: torch.device, run_dir: Path, ranks: Ranks):
        t = self.t = cfg.train
        self.cfg, self.task, self.model, self.device, self.run_dir = cfg, task, model, device, run_dir
        self.ranks = ranks
        model.to(device).train()
        self.updates = task.updates(model)
        self.plain = model  # what rank 0 checkpoints and samples: the model, or under FSDP a full copy on its CPU
        if ranks.sharded:
            one_update(model, self.updates)
            self.plain = fsdp.cpu_copy(model) if ranks.main else None
            self.wrapped = fsdp.shard(model)  # in place: the optimizers below hold the shards
        else:  # what the objectives call: the model, or DDP's wrapper under torchrun (compiled with train.compile)
            self.wrapped = wrap(model, self.updates, ranks, device)
            self.wrapped = maybe_compile(self.wrapped, t) if ranks.active else self.wrapped
        # train.compile on one process: each objective compiled, the model and its loss as one graph
        self.objectives = {u.name: u.objective if ranks.active else compile_objective(u.objective, t)
                           for u in self.updates}
        self.optimizers = {u.name: make_optimizer(param_groups(u.module, t.weight_decay), t, device)
                           for u in self.updates}
        own = {u.name: {id(p) for p in u.module.parameters()} for u in self.updates}
        # during one update the other optimizers' parameters are frozen (a GAN's D step leaves G alone)
        self.frozen = {u.name: [p for v in self.updates if v is not u for p in v.module.parameters()
                                if p.requires_grad and id(p) not in own[u.name]] for u in self.updates}
        self.scaler = torch.amp.GradScaler(enabled=t.dtype == "float16")
        self.metrics_path = run_dir / "metrics.jsonl"
        self.state = {"step": 0, task.unit: 0, "elapsed_s": 0.0, "cpu_s": 0.0, "best_val_loss": None}
        self.title = f"{run_dir.name}: {family_of(cfg.model)}"
        self.bar = None
        self.tb = None  # a TensorBoardLog when train.log names tensorboard (rank 0)

    def restore(self, ckpt: Path | None, lora, resume: bool) -> None:
        """Weights (or adapter weights), optimizers and loop state from ``ckpt``; metric lines
        logged after it are dropped."""
        if ckpt is not None:
            if self.ranks.sharded:  # every rank reads the full checkpoint and keeps its shards
                state, opt_states = read_training_state(ckpt, list(self.optimizers))
                fsdp.load(self.model, self.optimizers, load_model_folder(ckpt).state_dict(), opt_states)
                self.state.update(state)
            else:
                if lora is not None:
                    load_adapter(self.model, ckpt, wrap=False)
                else:
                    self.model.load_state_dict(load_model_folder(ckpt, self.device).state_dict())
                self.state.update(load_training_state(ckpt, self.optimizers))
            if self.ranks.main:
                truncate_metrics(self.metrics_path, self.state["step"])
                print(f"resuming {self.run_dir} from {ckpt.name}", file=sys.stderr)
        elif resume and self.ranks.main:
            truncate_metrics(self.metrics_path, 0)

    def log(self, row: dict) -> None:
        if not self.ranks.main:
            return
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            self.tb.scalars(row)

    def evaluate(self, step: int) -> None:
        row, message = self.task.evaluate(self.model, lambda: autocast(self.device, self.t.dtype))  # every rank
        if not self.ranks.main:
            return
        self.log({"step": step, **row, self.task.unit: self.state[self.task.unit],
                  "elapsed_s": self.state["elapsed_s"]})
        val = row.get("val_loss")
        if val is not None and (self.state["best_val_loss"] is None or val < self.state["best_val_loss"]):
            self.state["best_val_loss"] = val
        plot_losses(self.metrics_path, self.run_dir / "loss.png", self.title)
        self.bar.write(f"step {step}: {message}")

    def checkpoint(self, step: int) -> None:
        """Rank 0 writes a checkpoint and a sample. Under DDP the replicas are identical and no
        collective is needed; under FSDP every rank first takes part in gathering the full state."""
        opt_states = None
        if self.ranks.sharded:
            weights, opt_states = fsdp.gather(self.model, self.optimizers, self.ranks)
            if self.ranks.main:
                self.plain.load_state_dict(weights)
        if not self.ranks.main:
            return
        model = self.plain
        model.eval()
        save_checkpoint(self.run_dir, model, self.optimizers, self.task.tokenizer, self.task.generation_config,
                        dict(self.state), self.t.keep_checkpoints, opt_states, getattr(self.task, "notice", None))
        model.train()
        self.task.write_sample(model, self.run_dir, step)
        grid = self.run_dir / "samples" / f"step-{step:06d}.png"
        if self.tb is not None and grid.is_file():  # an image model's grid
            self.tb.image(grid, step)

    def optimizer_step(self, step: int, lr: float) -> dict:
        """One training step: every update (one for most families, discriminator then generator
        for a GAN) over ``grad_accum`` micro-batches. Returns the metrics row.

        """
        t = self.t
        torch.manual_seed(t.seed * 1_000_003 + step + 7919 * self.ranks.rank)  # dropout of this step, per rank
        batch_gen = torch.Generator().manual_seed(t.seed * 1_000_003 + step)
        row = {"step": step + 1}
        for u in self.updates:
            optimizer = self.optimizers[u.name]
            for group in optimizer.param_groups:
                group["lr"] = lr
            for p in self.frozen[u.name]:  # no gradients for the other optimizer's parameters in this update
                p.requires_grad_(False)
            loss_sum, logs_sum = 0.0, {}
            for micro in range(t.grad_accum):
                batch = self.task.batch(batch_gen)
                with accumulating(self.wrapped, self.ranks, last=micro == t.grad_accum - 1):  # one sync per step
                    with autocast(self.device, t.dtype):
                        loss, logs = self.objectives[u.name](self.wrapped if len(self.updates) == 1 else self.model,
                                                             batch, batch_gen)
                    self.scaler.scale(loss / t.grad_accum).backward()
                loss_sum += loss.item()
                for k, v in logs.items():
                    logs_sum[k] = logs_sum.get(k, 0.0) + v / t.grad_accum
            for p in self.frozen[u.name]:
                p.requires_grad_(True)
            if t.grad_clip:
                self.scaler.unscale_(optimizer)
                norm = float(fsdp.local(torch.nn.utils.clip_grad_norm_(u.module.parameters(), t.grad_clip)))
                row["grad_norm" if len(self.updates) == 1 else f"{u.name}_grad_norm"] = norm
            self.scaler.step(optimizer)
            optimizer.zero_grad(set_to_none=True)
            row[u.loss_key] = loss_sum / t.grad_accum
            row.update(logs_sum)
        self.scaler.update()
        self.task.after_step(self.model)
        return row

    def check_finite(self, row: dict, step: int) -> None:
        """Raises AigcError when a loss (agreed by every rank) is not finite: nothing of this step is
        checkpointed, and the last good checkpoint stays ``latest``."""
        for u in self.updates:
            if not math.isfinite(row[u.loss_key]):
                self.bar.close()
                what = {"d_loss": "discriminator loss", "g_loss": "generator loss"}.get(u.loss_key, "training loss")
                raise AigcError(f"the {what} became {row[u.loss_key]} at step {step}; no checkpoint written (a "
                                f"lower train.lr than {self.t.lr} usually helps); the last good checkpoint is kept")

    def run(self, progress: bool) -> bool:
        """Train from the restored step to ``max_steps`` (or the time limit, or Ctrl-C); evaluate,
        checkpoint and sample on their intervals and at the end. Returns True when stopped by a signal.

        The steps: 1) the time limit; 2) the learning rate (warmup, then cosine over steps or
        time, whichever is further along); 3) one optimizer step; 4) log, evaluate, checkpoint.
        """
        t, state, unit = self.t, self.state, self.task.unit
        step, items_per_step = state["step"], self.task.items_per_step()
        first_step = step
        start_time = time.time() - state["elapsed_s"]
        start_cpu = time.process_time() - state.get("cpu_s", 0.0)
        limit_s = t.max_minutes * 60
        self.bar = bar = tqdm(total=t.max_steps, initial=step, desc="train", unit="step",
                              disable=not progress or not self.ranks.main, dynamic_ncols=True, file=sys.stderr)
        window_items, window_start = 0, time.time()

        def used() -> float:  # the time the limit counts, the same on every rank (limit and learning rate)
            own = time.time() - start_time if t.time_limit == "wall" else time.process_time() - start_cpu
            return agree([own], [], self.ranks)[0][0]

        elapsed = used()
        with StopFlag() as stop:
            while step < t.max_steps:
                if limit_s and elapsed >= limit_s:  # 1)
                    if self.ranks.main:
                        again = (f"; the limit counts the whole run, resumes included: to go on, resume with "
                                 f"--train.max_minutes={2 * t.max_minutes:g} (say)") if step == first_step else ""
                        bar.write(f"time limit of {t.max_minutes} minutes ({t.time_limit}) reached at step {step}{again}")
                    break
                progress_frac = (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)  # 2)
                if limit_s:
                    progress_frac = max(progress_frac, elapsed / limit_s)
                lr = lr_at(progress_frac, step, t)
                row = self.optimizer_step(step, lr)  # 3)
                keys = [u.loss_key for u in self.updates]
                losses, (stopped,) = agree([row[k] for k in keys], [stop.set], self.ranks)  # the ranks' mean
                row.update(zip(keys, losses))
                stop.set = stopped
                step += 1
                self.check_finite(row, step)
                state["step"], state[unit] = step, state[unit] + items_per_step
                state["elapsed_s"], state["cpu_s"] = time.time() - start_time, time.process_time() - start_cpu
                elapsed = used()  # what the checkpoints of this step record: a run stopped by the limit resumes over it
                state["elapsed_s" if t.time_limit == "wall" else "cpu_s"] = elapsed
                window_items += items_per_step
                bar.update(1)
                if step % t.log_interval == 0 or step == t.max_steps:  # 4)
                    now = time.time()
                    rate = window_items / max(now - window_start, 1e-9)
                    window_items, window_start = 0, now
                    row.update({"lr": lr, unit: state[unit], f"{unit}_per_s": rate,
                                "elapsed_s": state["elapsed_s"], "cpu_s": state["cpu_s"]})
                    self.log(row)
                    shown = {k.replace("train_", ""): f"{row[k]:.3f}" for k in (u.loss_key for u in self.updates)}
                    bar.set_postfix(**shown, **{f"{unit[:3]}_s": f"{rate:,.0f}"}, lr=f"{lr:.1e}")
                    bar.total = expected_last_step(step, t.max_steps, limit_s, elapsed, rate / items_per_step)
                if step % t.eval_interval == 0:
                    self.evaluate(step)
                if step % t.checkpoint_interval == 0:
                    self.checkpoint(step)
                if stop.set:
                    break
            if state["step"] % t.eval_interval != 0:
                self.evaluate(state["step"])
            if state["step"] % t.checkpoint_interval != 0:
                self.checkpoint(state["step"])
        bar.close()
        return stop.set


def train(cfg: RunConfig, resume: bool = False, progress: bool = True, argv: list[str] | None = None) -> Path:
    """Train ``cfg.model`` on ``cfg.data``; return the run folder.

    Raises:
        AigcError: an existing run without ``resume``, a mismatched run with it, or bad data.
        KeyboardInterrupt: stopped by Ctrl-C or SIGTERM, after writing a checkpoint.
    """
    run_dir = Path(cfg.train.out_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise AigcError(f"{run_dir}: train.out_dir is a file, expected a folder for the run")
    ranks = from_environment()  # torchrun: this process's rank; otherwise one process
    lock = RunLock(run_dir) if ranks.main else contextlib.nullcontext()
    try:
        with lock:  # one writer per run folder (rank 0 under torchrun), taken before anything is written
            return _train(cfg, resume, progress, argv, ranks)
    finally:
        stop_ranks(ranks)


def _train(cfg: RunConfig, resume: bool, progress: bool, argv: list[str] | None, ranks: Ranks) -> Path:
    """:func:`train` with the run folder locked."""
    # 1. the run folder, its latest checkpoint, the device (an impossible dtype fails before anything is written)
    run_dir, ckpt, saved = open_run(cfg, resume)
    device = start_ranks(ranks, pick_device(cfg.train.device))
    autocast(device, cfg.train.dtype)
    cfg.train.batch_size = per_rank_batch(cfg.train, ranks)
    if cfg.train.fsdp:
        fsdp.check(cfg.train, ranks)
        ranks.sharded = True
    # 2. the data (prepared on demand, by rank 0 first) and the model: a base to fine-tune, LoRA, or fresh weights
    base_folder = use_base_tokenizer(cfg)
    if not ranks.main:
        barrier(ranks)  # rank 0 prepares the data; the others then read it
    task = make_task(cfg, device, progress and ranks.main, ranks)
    if ranks.main:
        barrier(ranks)
    set_threads(cfg.train.threads, "train.threads")
    model, lora = _model_for(cfg, task, run_dir, ckpt, saved, base_folder)
    # 3. optimizers and loop state, restored from the checkpoint when resuming
    run = _Run(cfg, task, model, device, run_dir, ranks)
    run.restore(ckpt, lora, resume)
    if not ranks.main:
        return run_dir if ckpt is not None and run.state["step"] >= cfg.train.max_steps else _follow(run, progress)
    # 4. the run folder's config and run.json (rank 0)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.toml", cfg.to_toml())
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    n_train = sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())
    write_run_info(run_dir, {"seed": cfg.train.seed, "command": argv or sys.argv, "device": str(device),
                              "prepared_data": str(task.data.folder), "data_meta": task.data.meta, **environment(),
                              "parameters": n_params, "trainable_parameters": n_train, "ranks": ranks.world},
                    resumed=ckpt is not None)
    trainable = f" ({n_train:,} trainable: LoRA rank {lora.rank})" if lora is not None else \
        (f" ({n_train / 1e6:.2f}M trained, the rest an EMA copy)" if n_train < n_params else "")
    ranks_note = f" on each of {ranks.world} ranks (global batch {cfg.train.batch_size * ranks.world * cfg.train.grad_accum}" \
        f"{', FSDP: parameters, gradients and optimizer state sharded' if ranks.sharded else ''})" if ranks.active else ""
    print(f"{family_of(cfg.model)}: {n_params / 1e6:.2f}M parameters{trainable}, {task.describe()}, "
          f"{task.items_per_step():,} {task.unit}/step, device {device}{ranks_note}", file=sys.stderr)
    if (note := dtype_note(device, cfg.train.dtype)) is not None:
        print(note, file=sys.stderr)
    # 5. the loop
    step, t = run.state["step"], cfg.train
    if ckpt is not None and step >= t.max_steps:
        print(f"{run_dir}: already at step {step} of train.max_steps = {t.max_steps}; nothing to do "
              f"(raise it to continue, e.g. --train.max_steps={2 * t.max_steps})", file=sys.stderr)
        return run_dir
    if "tensorboard" in t.log:  # RUN/tensorboard/: what metrics.jsonl and samples/ hold, for TensorBoard
        run.tb = TensorBoardLog(run_dir, step)
    try:
        stopped = run.run(progress)
    finally:
        if run.tb is not None:
            run.tb.close()
    if stopped:
        print(f"stopped at step {run.state['step']}; checkpoint written; continue with: aigc train {run_dir} --resume",
              file=sys.stderr)
        raise KeyboardInterrupt
    return run_dir


def _follow(run: _Run, progress: bool) -> Path:
    """A rank other than 0: train in step with rank 0, writing nothing."""
    if run.run(progress):
        raise KeyboardInterrupt
    return run.run_dir
