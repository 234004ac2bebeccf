"""aigc: train generative models on your own data, generate, measure, serve.

The Python API starts with :func:`load`: ``aigc.load(path).generate(prompt)`` for a
text model, ``aigc.load(path).generate(n=64, label="Sneaker", seed=0)`` for an image model.
The package's top: it re-exports the API, imported on first use (``import aigc.errors`` or the
sandbox's modules need neither torch nor the models), and nothing imports it back.
"""

from aigc.errors import AigcError
from aigc.version import __version__

__all__ = ["load", "TextModel", "ImageModel", "AigcError", "__version__"]


def __getattr__(name: str):
    """``aigc.load``, ``aigc.TextModel``, ``aigc.ImageModel``, imported when first asked for (PEP 562)."""
    if name == "load":
        from aigc.api import load
        return load
    if name == "TextModel":
        from aigc.generate.text import TextModel
        return TextModel
    if name == "ImageModel":
        from aigc.generate.images import ImageModel
        return ImageModel
    raise AttributeError(f"module 'aigc' has no attribute {name!r}")
