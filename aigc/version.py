"""The package version (base layer: knows nothing of the rest of aigc)."""

__version__ = "0.1.0"
