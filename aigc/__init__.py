"""aigc: train generative models on your own data, generate, measure, serve.

The Python API starts with :func:`load`: ``aigc.load(path).generate(prompt)``.
"""

__version__ = "0.1.0"

from aigc.api import TextModel, load  # noqa: E402
from aigc.errors import AigcError  # noqa: E402

__all__ = ["load", "TextModel", "AigcError", "__version__"]
