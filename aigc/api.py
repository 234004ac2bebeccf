"""The Python API: ``aigc.load(path)`` -> a model you can ``.generate(...)`` with.

API layer: only :func:`load`, which joins the layers below (folders, formats, generate);
nothing else is defined here, and training code never imports it.

>>> import aigc
>>> model = aigc.load("runs/tang-poems-gpt")          # a run folder or a model folder
>>> model.generate("明月", n=2, max_new_tokens=64, seed=0)
['明月...', '明月...']
>>> for piece in model.stream("春风", seed=1):        # text as it is produced
...     print(piece, end="", flush=True)

>>> gan = aigc.load("runs/fashion-dcgan")              # an image model -> ImageModel
>>> images = gan.generate(16, label="Sneaker", seed=0)  # (16, 1, 28, 28) float32 in [-1, 1]
"""

from __future__ import annotations

from pathlib import Path

from aigc.errors import AigcError
from aigc.folders import resolve_model_folder
from aigc.config import ImageSampleConfig
from aigc.formats.model_folder import load_model_folder, read_sample_defaults
from aigc.data.tokenizer import Tokenizer
from aigc.generate.images import ImageModel
from aigc.generate.text import TextModel
from aigc.models import TEXT_FAMILIES
from aigc.models.quant import set_inference_dtype
from aigc.runtime import pick_device, require_compiler


def load(path: str | Path, device: str = "auto", dtype: str = "float32",
         compile: bool = False) -> TextModel | ImageModel:
    """Load a model from a model folder, a run folder (its latest checkpoint), a Hugging Face
    folder, a LoRA adapter folder, or a shipped model's name (``tang-base``).

    ``dtype``: the weights for inference, ``float32``, ``bfloat16``, ``float16`` (CUDA) or
    ``int8`` (weight-only, per output channel; the gpt family), see :mod:`aigc.models.quant`.
    ``compile``: decode through a compiled fixed-shape step (the gpt family; the first
    generation pays the compile), see :mod:`aigc.generate.compiled`.

    Returns a :class:`~aigc.generate.text.TextModel` for ``gpt``/``lstm`` and an
    :class:`~aigc.generate.images.ImageModel` for ``dcgan``/``vae``.

    Raises:
        AigcError: not a model or run folder, an unknown family, missing/corrupt files, a
            ``dtype`` this family or device has no path for, or ``compile`` for a family other
            than gpt or without a C compiler.
    """
    folder = resolve_model_folder(path)
    model = set_inference_dtype(load_model_folder(folder, pick_device(device)), dtype)
    if compile:
        if model.family != "gpt":
            raise AigcError(f"compile: {folder} is a {model.family!r} model; the compiled decode step is for the "
                            "gpt family")
        require_compiler("compile")
    if model.family in TEXT_FAMILIES:
        return TextModel.from_folder(model, folder, compiled=compile)
    if model.family == "ddpm":
        tokenizer = Tokenizer.load(folder) if getattr(model.config, "conditioning", "") == "text" else None
        return ImageModel(model, folder, read_sample_defaults(folder, ImageSampleConfig), tokenizer)
    return ImageModel(model, folder)
