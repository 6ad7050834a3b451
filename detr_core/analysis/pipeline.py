"""The whole path from a photo to an `Analysis`: load, preprocess with the model's settings, capture.

This is what the dashboard and the CLI call; each step is also public on its own.
"""

from __future__ import annotations

import os

import torch
from PIL import Image
from torch import nn

from ..io.image import PreparedImage, load_image, preprocess
from ..models.zoo import MODELS, ModelSpec
from .capture import Analysis, capture

__all__ = ["analyze", "prepare"]


def prepare(
    model: nn.Module,
    image: Image.Image,
    spec: ModelSpec | str,
    min_size: int | None = None,
    max_size: int | None = None,
) -> PreparedImage:
    """Resize and normalize `image` with the model's preprocessing settings (or the ones given)."""
    spec = MODELS[spec] if isinstance(spec, str) else spec
    return preprocess(image, model.stride, min_size or spec.min_size, max_size or spec.max_size)


def analyze(
    model: nn.Module,
    source: bytes | str | os.PathLike | Image.Image,
    spec: ModelSpec | str,
    min_size: int | None = None,
    max_size: int | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> Analysis:
    """Image bytes/path/PIL image -> the analysis of one forward pass (every attention map).

    Raises `ImageError` for anything that is not a usable image.
    """
    spec = MODELS[spec] if isinstance(spec, str) else spec
    prepared = prepare(model, load_image(source), spec, min_size, max_size)
    return capture(model, prepared, spec.class_names, spec.name, autocast_dtype)
