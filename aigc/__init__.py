"""aigc: train generative models on your own data, generate, measure, serve.

The Python API starts with :func:`load`: ``aigc.load(path).generate(prompt)`` for a
text model, ``aigc.load(path).generate(n=64, label="Sneaker", seed=0)`` for an image model.
"""

__version__ = "0.1.0"

from aigc.api import ImageModel, TextModel, load  # noqa: E402
from aigc.errors import AigcError  # noqa: E402

__all__ = ["load", "TextModel", "ImageModel", "AigcError", "__version__"]
