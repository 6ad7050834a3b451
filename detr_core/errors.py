"""The core's one exception type. Anything a user can get wrong raises a `DETRError` subclass with
a message a person understands; the UI and the CLI catch `DETRError` and show its message."""

from __future__ import annotations

__all__ = ["DETRError", "ImageError", "CheckpointError", "InputSizeError"]


class DETRError(Exception):
    """Base class of every error the core raises on purpose."""


class ImageError(DETRError):
    """The bytes are not an image we can analyze (empty, not an image, corrupt, too large, ...)."""


class CheckpointError(DETRError):
    """A checkpoint cannot be found, downloaded, verified or loaded."""


class InputSizeError(DETRError, ValueError):
    """The input does not fit the model (e.g. DETRdemo's 50x50 learned position grid)."""
