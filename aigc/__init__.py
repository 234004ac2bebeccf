"""aigc: train generative models on your own data, generate, measure, serve.

The Python API starts with :func:`load`: ``aigc.load(path).generate(prompt)`` for a
text model, ``aigc.load(path).generate(n=64, label="Sneaker", seed=0)`` for an image model.
The package's top: it re-exports the API and imports nothing that imports it back.
"""

from aigc.api import load
from aigc.errors import AigcError
from aigc.generate.images import ImageModel
from aigc.generate.text import TextModel
from aigc.version import __version__

__all__ = ["load", "TextModel", "ImageModel", "AigcError", "__version__"]
