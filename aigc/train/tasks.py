"""What the training loop needs to know about a kind of data: its dataset, updates, evaluation and samples.

The loop (:mod:`aigc.train.loop`) is the same for every family. A task gives it:

- ``updates(model)``: a list of :class:`Update` (an optimizer's parameters and an
  objective ``(model, batch, gen) -> (loss, logs)``). Text models and the VAE have one;
  a GAN has two (discriminator, then generator), each with its own AdamW;
- ``batch(gen)``: a training micro-batch, drawn from a seeded generator;
- ``evaluate(model)``: a metrics row and a one-line message;
- ``write_sample(model, run_dir, step)``: text or an image grid in ``samples/``;
- ``after_step(model)``: e.g. the GAN's EMA update.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from aigc.atomic import write_text
from aigc.data.chat import CHAT_TRAINED
from aigc.data.captions import (COLORS, GARMENTS, base_caption_tokenizer, caption, encode_prompts,
                                normalise_prompt)
from aigc.data.images import class_aliases
from aigc.data.prepared import ensure_prepared
from aigc.data.shards import bits_per_char
from aigc.data.sources import data_terms
from aigc.errors import AigcError
from aigc.evaluate.classifier import FEATURE_SPACE, classify
from aigc.evaluate.images import frechet_distance_features
from aigc.generate.images import sample_diffusion, save_grid
from aigc.generate.text import TextModel
from aigc.models import family_of
from aigc.train import objectives
from aigc.train.distributed import Ranks, total


@dataclass
class Update:
    """One optimizer step per training step: ``objective`` on the parameters ``params`` of optimizer ``name``."""

    name: str  # "model" for single-optimizer families; "discriminator" / "generator" for GANs
    module: torch.nn.Module  # whose parameters this optimizer owns
    objective: Callable  # (model, batch, gen) -> (loss, logs)
    loss_key: str = "train_loss"  # the metrics key of its loss


def make_task(cfg, device, progress: bool = True, ranks: Ranks = Ranks()):
    """The task of ``cfg``: :class:`TextTask` or :class:`ImageTask` (under torchrun: this rank's share)."""
    data = ensure_prepared(cfg, progress)
    return (ImageTask if cfg.is_image else TextTask)(cfg, data, device, ranks)


def _my_slice(ranks: Ranks, x):
    """This rank's rows of a global batch (every rank drew the same one)."""
    if x is None or not ranks.active:
        return x
    n = len(x) // ranks.world
    return x[ranks.rank * n:(ranks.rank + 1) * n]


class TextTask:
    """Next-token prediction on token shards (``gpt``, ``lstm``)."""

    unit = "tokens"

    def __init__(self, cfg, data, device, ranks: Ranks = Ranks()):
        self.cfg, self.data, self.device, self.ranks = cfg, data, device, ranks
        self.tokenizer = data.tokenizer
        if data.masks is not None:  # chat data: the checkpoints say their template was trained
            self.tokenizer = copy.copy(data.tokenizer)
            self.tokenizer.config = {**data.tokenizer.config, CHAT_TRAINED: True}
        self.generation_config = dataclasses.asdict(cfg.sample)
        self.notice = data_terms(cfg.data)  # NOTICE.txt in every checkpoint (music21's corpus terms)
        self.tpc = data.tokens_per_char("val")

    def configure_model(self, model_cfg, from_base: bool, base_tokenizer=None) -> None:
        """Fit the model config to the data: its vocabulary is the tokenizer's."""
        if model_cfg.vocab_size != self.tokenizer.vocab_size and not from_base:
            model_cfg.vocab_size = self.tokenizer.vocab_size

    def check_model(self, model_cfg) -> None:
        if self.cfg.train.seq_len > model_cfg.block_size:
            raise AigcError(f"train.seq_len = {self.cfg.train.seq_len} is longer than the model's context "
                            f"({model_cfg.block_size} tokens)")
        self.data.check_block_size(self.seq_len)

    def mismatch_message(self, saved) -> str:
        return (f"the checkpoint's vocabulary ({saved.vocab_size}) differs from the tokenizer of the data "
                f"({self.tokenizer.vocab_size}); resume with the run's own data")

    @property
    def seq_len(self) -> int:
        """Tokens per training sequence: train.seq_len, else the model's context up to 2048."""
        return self.cfg.train.seq_len or min(self.cfg.model.block_size, 2048)

    def items_per_step(self) -> int:
        t = self.cfg.train
        return t.batch_size * t.grad_accum * self.seq_len * self.ranks.world

    def describe(self) -> str:
        return f"{self.data.meta['splits']['train']['tokens']:,} train tokens"

    def updates(self, model) -> list[Update]:
        return [Update("model", model, lambda m, b, g: objectives.lm_loss(m, b))]

    def batch(self, gen: torch.Generator, split: str = "train"):
        """A micro-batch ``(x, y)``: the global batch drawn from ``gen``, this rank's slice of it for
        training, all of it for evaluation (the ranks share out whole batches)."""
        x, y = self.data.batch(split, self.cfg.train.batch_size * self.ranks.world, self.seq_len, gen)
        if split == "train":
            x, y = _my_slice(self.ranks, x), _my_slice(self.ranks, y)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def after_step(self, model) -> None:
        pass

    @torch.no_grad()
    def evaluate(self, model, autocast) -> tuple[dict, str]:
        model.eval()
        gen = torch.Generator().manual_seed(self.cfg.train.seed + 1)
        losses, counts = [], []
        n, world = self.cfg.train.eval_batches, self.ranks.world
        # under FSDP each forward is a collective: every rank runs one per round, the last round
        # padded with a repeat whose loss is dropped, so an uneven split still scores each batch once
        rounds = -(-n // world) * world if self.ranks.sharded else n
        for i in range(rounds):
            if i < n:
                batch = self.batch(gen, "val")  # every rank draws every batch; batch i is scored by rank i % ranks
            if i % world != self.ranks.rank:
                continue
            with autocast():
                loss, _ = objectives.lm_loss(model, batch)
            if i < n:
                losses.append(loss.item())
                counts.append(int((batch[1] != objectives.IGNORE_INDEX).sum()))
        model.train()
        loss_sum, batches, weighted, targets = total(
            [sum(losses), len(losses), sum(l * n for l, n in zip(losses, counts)), sum(counts)], self.ranks)
        masked = getattr(self.data, "masks", None) is not None  # chat data: assistant tokens only
        if not masked:
            val = loss_sum / batches
        else:  # chat: batches hold different numbers of assistant tokens; weigh each by its count
            val = weighted / max(targets, 1)
        row = {"val_loss": val, "val_ppl": math.exp(min(val, 50)), "val_bpc": bits_per_char(val, self.tpc)}
        message = f"val loss {val:.4f}, perplexity {row['val_ppl']:.2f}, bits/char {row['val_bpc']:.4f}"
        if masked:
            message += " (assistant tokens only)"
        return row, message

    def write_sample(self, model, run_dir: Path, step: int) -> None:
        model.eval()
        cfg = self.cfg
        tm = TextModel(model, self.tokenizer, dataclasses.replace(cfg.sample), run_dir)
        lines = []
        for p in cfg.sample.prompts or [""]:
            try:
                text = tm.generate(p, n=1, seed=cfg.train.seed, max_new_tokens=min(cfg.sample.max_new_tokens, 128))[0]
            except AigcError as e:
                text = f"({e})"
            lines.append(f"--- prompt: {p!r}\n{text}\n")
        write_text(run_dir / "samples" / f"step-{step:06d}.txt", "\n".join(lines))
        model.train()


class ImageTask:
    """Image generation on a prepared image dataset (``dcgan``, ``vae``)."""

    unit = "images"

    def __init__(self, cfg, data, device, ranks: Ranks = Ranks()):
        self.cfg, self.data, self.device, self.ranks = cfg, data, device, ranks
        self.tokenizer = None
        # a diffusion model keeps its [sample] (sampler, steps, guidance) as its generation_config.json
        self.generation_config = dataclasses.asdict(cfg.sample) if family_of(cfg.model) == "ddpm" else None
        self._val_features = None  # classifier features of the val images the GAN's FD is measured against

    def configure_model(self, model_cfg, from_base: bool, base_tokenizer=None) -> None:
        """Fit the model config to the data: its image shape, (when conditional) its classes, and (when
        text-conditional) its caption tokenizer: the data's own, or ``base_tokenizer`` when fine-tuning."""
        c, h, w = self.data.shape
        if (model_cfg.channels, model_cfg.image_size) != (c, h):
            if from_base:
                raise AigcError(f"the base model makes {model_cfg.channels}x{model_cfg.image_size} images, the data "
                                f"holds {c}x{h}; set data.channels and data.image_size to match")
            model_cfg.channels, model_cfg.image_size = c, h
        if model_cfg.conditional:
            if not self.data.classes or any(self.data.labels[s] is None for s in ("train", "val")):
                raise AigcError(f"model.conditional = true but {self.data.folder} has no labels for both splits "
                                "(use a labelled source: IDX with label files, an image folder with one sub-folder "
                                "per class, or an .npz with 'labels')")
            if from_base and list(model_cfg.classes) != list(self.data.classes):
                raise AigcError(f"the base model's classes {model_cfg.classes} differ from the data's "
                                f"{self.data.classes}; a conditional model is fine-tuned on the same classes")
            model_cfg.n_classes, model_cfg.classes = len(self.data.classes), list(self.data.classes)
            if hasattr(model_cfg, "class_aliases") and not from_base:
                model_cfg.class_aliases = class_aliases(self.data.classes)
        elif not from_base:
            model_cfg.n_classes, model_cfg.classes = 0, []
        if getattr(model_cfg, "conditioning", "") == "text":
            if self.data.tokenizer is None:
                raise AigcError(f"model.conditioning = 'text' but {self.data.folder} has no captions (use a captioned "
                                "dataset: data.dataset = 'color-fashion')")
            if from_base:  # the base's character ids, which its embeddings know, read the new captions
                if base_tokenizer is None:
                    raise AigcError(f"the base model {self.cfg.train.init_from} has no tokenizer.json to read captions")
                self.data.tokenizer = base_caption_tokenizer(base_tokenizer, self.data.captions, self.data.folder)
            model_cfg.vocab_size = self.data.tokenizer.vocab_size
            longest = max((normalise_prompt(c) for s in ("train", "val") for c in self.data.captions[s]), key=len)
            if len(longest) > model_cfg.text_len:
                raise AigcError(f"a caption of {len(longest)} characters ({longest[:40]!r}...) is longer than "
                                f"model.text_len = {model_cfg.text_len}; raise model.text_len")
            self.tokenizer = self.data.tokenizer  # saved beside the weights: prompts are read with it

    def check_model(self, model_cfg) -> None:
        pass

    def mismatch_message(self, saved) -> str:
        return (f"the checkpoint's images ({saved.channels}x{saved.image_size}, classes {saved.classes}) differ from "
                "the data's; resume with the run's own data")

    def items_per_step(self) -> int:
        return self.cfg.train.batch_size * self.cfg.train.grad_accum * self.ranks.world

    def describe(self) -> str:
        c, h, w = self.data.shape
        n = len(self.data.images["train"])
        labels = f", {len(self.data.classes)} classes" if self.data.classes else ""
        return f"{n:,} train images of {c}x{h}x{w}{labels}"

    def updates(self, model) -> list[Update]:
        if model.family == "dcgan":
            return [Update("discriminator", model.discriminator, objectives.gan_d_loss, "d_loss"),
                    Update("generator", model.generator, objectives.gan_g_loss, "g_loss")]
        if model.family == "ddpm":
            return [Update("model", model, objectives.diffusion_loss)]
        return [Update("model", model, objectives.vae_loss)]

    def _labels(self, y):
        return y.to(self.device) if (y is not None and self.cfg.model.conditional) else None

    @property
    def text(self) -> bool:
        return getattr(self.cfg.model, "conditioning", "") == "text"

    def batch(self, gen: torch.Generator, split: str = "train"):
        """Images ``(B, C, S, S)`` on the device and their condition: labels ``(B,)``, caption tokens
        ``(B, text_len)`` (text-conditional models) or None."""
        idx = self.data.draw(split, self.cfg.train.batch_size * (self.ranks.world if split == "train" else 1), gen)
        x, y = self.data.tensors(split, idx)
        if self.text:
            y = self.data.caption_tokens(split, idx, self.cfg.model.text_len)
        if split == "train":
            x, y = _my_slice(self.ranks, x), _my_slice(self.ranks, y)
        x = x.to(self.device, non_blocking=True)
        return x, (y.to(self.device) if self.text else self._labels(y))

    def after_step(self, model) -> None:
        if model.family in ("dcgan", "ddpm"):
            model.update_ema()

    @torch.no_grad()
    def evaluate(self, model, autocast) -> tuple[dict, str]:
        model.eval()
        gen = torch.Generator().manual_seed(self.cfg.train.seed + 1)
        if model.family == "vae":
            sums = {"recon": 0.0, "kl": 0.0, "loss": 0.0}
            for _ in range(self.cfg.train.eval_batches):
                with autocast():
                    loss, logs = objectives.vae_loss(model, self.batch(gen, "val"), gen)
                sums["loss"] += loss.item()
                sums["recon"] += logs["recon"]
                sums["kl"] += logs["kl"]
            n = self.cfg.train.eval_batches
            row = {"val_loss": sums["loss"] / n, "val_elbo": -(sums["recon"] + sums["kl"]) / n,
                   "val_recon": sums["recon"] / n, "val_kl": sums["kl"] / n}
            model.train()
            return row, (f"val ELBO {row['val_elbo']:.2f} nats/image (reconstruction {row['val_recon']:.2f}, "
                         f"KL {row['val_kl']:.2f})")
        if model.family == "ddpm":
            return self._evaluate_diffusion(model, autocast, gen)
        row, message = {}, "no validation metric for this image shape"
        if self.data.shape == (1, 28, 28):
            n = min(1000, len(self.data.images["val"]))
            idx = torch.randperm(len(self.data.images["val"]), generator=gen)[:n].numpy()  # the same at every eval
            if self._val_features is None:  # computed once per run
                self._val_features = classify(self.data.tensors("val", idx)[0])[0]
            fake = model.generate(n, self._sample_labels(n), gen).float().cpu()
            fd = frechet_distance_features(self._val_features, classify(fake)[0])
            row = {"val_fd": fd}
            message = f"FD ({FEATURE_SPACE}, {n} samples vs val) {fd:.3f}"
        model.train()
        return row, message

    def _evaluate_diffusion(self, model, autocast, gen) -> tuple[dict, str]:
        """The denoising loss on val images at timesteps, noise and condition dropout drawn from a fixed
        seed (the same at every evaluation), with the trained weights and with the EMA."""
        losses = {"net": 0.0, "ema": 0.0}
        n = self.cfg.train.eval_batches
        for _ in range(n):
            batch = self.batch(gen, "val")
            state = gen.get_state()
            for which in losses:
                gen.set_state(state)  # both weights see the same t and noise
                net = model if which == "net" or model.ema is None else _EMA(model)
                with autocast():
                    loss, _ = objectives.diffusion_loss(net, batch, gen)
                losses[which] += loss.item() / n
        model.train()
        row = {"val_loss": losses["net"], "val_loss_ema": losses["ema"]}
        return row, f"val denoising loss {losses['net']:.5f} (EMA weights {losses['ema']:.5f})"

    def _sample_labels(self, n: int):
        if not self.cfg.model.conditional:
            return None
        return (torch.arange(n) % self.cfg.model.n_classes).to(self.device)

    def write_sample(self, model, run_dir: Path, step: int) -> None:
        model.eval()
        k = self.cfg.model.n_classes if self.cfg.model.conditional else (
            len(GARMENTS) if self.text and self.data.colors is not None else 0)
        n, nrow = self.cfg.sample.n, (k or self.cfg.sample.nrow)
        gen = torch.Generator().manual_seed(self.cfg.train.seed)  # the same noise at every step
        if model.family == "ddpm":
            tokens = None
            if self.text and self.data.colors is not None:  # color-fashion: column i = garment i, row j = colour j
                prompts = [caption(i // k % len(COLORS), i % k, 0, False) for i in range(n)]
            elif self.text:  # another captioned folder: its first val captions
                prompts = [self.data.captions["val"][i % len(self.data.captions["val"])] for i in range(n)]
            if self.text:
                tokens = encode_prompts(self.tokenizer, prompts, self.cfg.model.text_len)
            images = sample_diffusion(model, self.cfg.sample, [self.cfg.train.seed + i for i in range(n)],
                                      self._sample_labels(n), tokens)
        else:
            images = model.generate(n, self._sample_labels(n), gen).cpu()
        save_grid(images, run_dir / "samples" / f"step-{step:06d}.png", nrow,
                  {"model": str(run_dir), "family": model.family, "step": step, "seed": self.cfg.train.seed,
                   "parameters": {"n": n, "classes": ("column i = garment i, row j = colour j" if self.text and k else
                                                       "the val captions" if self.text else
                                                       "column i = class i" if k else "unconditional")}})
        model.train()


class _EMA(torch.nn.Module):
    """A diffusion model's EMA weights behind the model's interface (config, forward)."""

    def __init__(self, model):
        super().__init__()
        self.config, self.ema = model.config, model.ema

    def forward(self, x, t, labels=None, tokens=None):
        return self.ema(x, t, labels, tokens)
