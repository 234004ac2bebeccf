"""Model families and their registry.

Models layer: one file per family (an ``nn.Module`` built from its config dataclass alone,
shapes in comments) plus LoRA; knows torch and the base layer, never reads or writes a
folder (that is :mod:`aigc.formats`), a config file or a tokenizer.

To add a family: its file here, its line in :data:`REGISTRY`, and its name in
:data:`TEXT_FAMILIES` or :data:`IMAGE_FAMILIES` (docs/ARCHITECTURE.md lists the rest).
"""

from __future__ import annotations

import torch

from aigc.errors import AigcError
from aigc.models.ddpm import DDPM, DDPMConfig
from aigc.models.gan import DCGAN, DCGANConfig
from aigc.models.lstm import LSTMConfig, LSTMLM
from aigc.models.transformer import GPT, GPTConfig
from aigc.models.vae import VAE, VAEConfig

REGISTRY = {
    "gpt": (GPTConfig, GPT),
    "lstm": (LSTMConfig, LSTMLM),
    "dcgan": (DCGANConfig, DCGAN),
    "vae": (VAEConfig, VAE),
    "ddpm": (DDPMConfig, DDPM),
}
TEXT_FAMILIES = ("gpt", "lstm")
IMAGE_FAMILIES = ("dcgan", "vae", "ddpm")


def config_class(family: str):
    """The config dataclass of a family name.

    Raises:
        AigcError: unknown family, listing the known ones.
    """
    if not isinstance(family, str) or family not in REGISTRY:
        raise AigcError(f"unknown model family {family!r} (known: {', '.join(REGISTRY)})")
    return REGISTRY[family][0]


def family_of(config) -> str:
    """The family name of a config dataclass instance."""
    for name, (cls, _) in REGISTRY.items():
        if isinstance(config, cls):
            return name
    raise AigcError(f"{type(config).__name__} is not the config of a known model family")


def build_model(config) -> torch.nn.Module:
    """A freshly initialised model of the family that ``config`` belongs to."""
    return REGISTRY[family_of(config)][1](config)
