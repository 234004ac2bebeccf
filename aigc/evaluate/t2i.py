"""Text-to-image evaluation on ``color-fashion``: does the image show the garment and the colour the
prompt asked for, for pairs seen in training and for pairs never seen, in English and in Chinese,
at several classifier-free guidance scales; and how close are the images to the real ones.

- **class accuracy**: the shipped Fashion-MNIST classifier's prediction on the garment's intensity
  (the brightest channel of the centre 28x28, :func:`aigc.data.captions.garment_gray`) equals the
  prompt's garment;
- **colour accuracy**: the hue of the garment's mean colour is nearest the prompt's colour among
  the eight (:func:`aigc.data.captions.garment_colours`);
- **FD, KID, precision/recall** of the garments' intensities in the classifier's features against
  the real val garments (:mod:`aigc.evaluate.images`), for prompts drawn from the val captions.

The same checks on the real val images are the ceiling (they validate the checkers).
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from aigc.data.captions import COLORS, GARMENTS, HELD_OUT, caption, garment_colours, garment_gray
from aigc.evaluate.classifier import FEATURE_SPACE, classify
from aigc.evaluate.images import all_metrics
from aigc.generate.images import sample_diffusion

GUIDANCE = (0.0, 1.0, 3.0, 7.0)
# seen pairs: one per garment, four colours away from its held-out one (never held out)
SEEN = [((c + 4) % len(COLORS), k) for c, k in HELD_OUT]


def prompt_sets() -> dict[str, list[tuple[int, int, str]]]:
    """``{"seen en": [(colour, garment, prompt), ...], "held-out zh": ...}``: 10 pairs each, template 0."""
    out = {}
    for name, pairs in (("seen", SEEN), ("held-out", HELD_OUT)):
        for lang in ("en", "zh"):
            out[f"{name} {lang}"] = [(c, k, caption(c, k, 0, lang == "zh")) for c, k in pairs]
    return out


def sample_prompts(model, settings, prompts: list[str], seed: int, chunk: int = 200, bar=None) -> torch.Tensor:
    """One image per prompt from a text-to-image :class:`~aigc.generate.images.ImageModel`: image k has
    seed ``seed + k`` (so it does not depend on ``chunk``, the images sampled at once).

    Returns:
        ``(len(prompts), C, S, S)`` float32 in [-1, 1].
    Raises:
        AigcError: a prompt the model cannot read, bad settings, a sample that is not finite.
    """
    images = []
    for i in range(0, len(prompts), chunk):
        part = prompts[i:i + chunk]
        seeds = [seed + i + j for j in range(len(part))]
        images.append(sample_diffusion(model.model, settings, seeds, None, model.prompt_tokens(part)))
        if bar is not None:
            bar.update(len(part))
    return torch.cat(images)


def score(images: torch.Tensor, colours: torch.Tensor, garments: torch.Tensor) -> dict:
    """Class and colour accuracy of images ``(N, 3, 32, 32)`` against the asked ``colours`` and ``garments`` (N,)."""
    _, pred = classify(garment_gray(images))
    return {"class_accuracy": (pred == garments).double().mean().item(),
            "colour_accuracy": (garment_colours(images) == colours).double().mean().item(), "images": len(images)}


def evaluate_text_to_image(model, data, per_prompt: int = 10, fd_images: int = 1000, seed: int = 0,
                           guidance: tuple[float, ...] = GUIDANCE, progress: bool = True) -> dict:
    """Score a text-to-image :class:`~aigc.generate.images.ImageModel` on a prepared ``color-fashion``.

    Args:
        per_prompt: images per prompt in each cell (10 prompts a cell; 4 cells a guidance scale).
        fd_images: images for the FD row, prompts from the val captions at the model's own guidance.
    Returns:
        ``{"cells": {guidance: {"seen en": {...}, ...}}, "fd": {...}, "real": {...}, ...}``.
    """
    sets = prompt_sets()
    total = len(guidance) * sum(len(v) for v in sets.values()) * per_prompt + fd_images
    bar = tqdm(total=total, desc="t2i eval", unit="image", disable=not progress)
    cells = {}
    for g in guidance:
        settings = model.settings(guidance_scale=g)
        cells[f"{g:g}"] = {}
        for name, rows in sets.items():
            prompts = [p for _, _, p in rows for _ in range(per_prompt)]
            images = sample_prompts(model, settings, prompts, seed, bar=bar)
            colours = torch.tensor([c for c, _, _ in rows for _ in range(per_prompt)])
            garments = torch.tensor([k for _, k, _ in rows for _ in range(per_prompt)])
            cells[f"{g:g}"][name] = score(images, colours, garments)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.images["val"]), generator=gen)[:fd_images].numpy()
    real, labels = data.tensors("val", idx)
    prompts = [data.captions["val"][i] for i in idx]
    fake = sample_prompts(model, model.settings(), prompts, seed + 10**6, bar=bar)
    bar.close()
    real_f, _ = classify(garment_gray(real))
    fake_f, _ = classify(garment_gray(fake))
    colours = torch.from_numpy(data.colors["val"][idx])
    fd_row = {**all_metrics(real_f, fake_f, seed=seed), **score(fake, colours, labels)}
    return {"feature_space": FEATURE_SPACE + " of the garment's intensity (brightest channel, centre 28x28)",
            "per_prompt": per_prompt, "guidance": [f"{g:g}" for g in guidance], "seed": seed,
            "settings": {k: v for k, v in vars(model.settings()).items() if k not in ("n", "nrow")},
            "cells": cells, "fd": fd_row, "real": score(real, colours, labels), "fd_images": len(idx),
            "held_out_pairs": [f"{COLORS[c][0]} {GARMENTS[k][0]}" for c, k in HELD_OUT]}
