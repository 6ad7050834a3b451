"""detr_core: a faithful DETR, its checkpoints, and everything needed to look inside it. No UI.

Example::

    >>> model = load_model("detr_shapes")  # models/: the zoo and its checkpoints
    >>> analysis = analyze(model, "photo.jpg", "detr_shapes")  # analysis/: one pass, every attention map
    >>> detections = analysis.detections(threshold=0.8)  # io/: Detection, original-image pixels
    >>> encoder_map(analysis, x=120, y=80).map  # [h, w]: where this pixel looks
    >>> decoder_map(analysis, detections[0].query)  # [h, w]: that query's cross-attention
    >>> own = load_own_model("checkpoint.pth", classes="classes.txt")  # your own DETR (official or HF format)
    >>> analyze(own.model, "photo.jpg", own.spec)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Where each public name lives. They are imported when first used (PEP 562), not by `import
# detr_core`: a submodule that needs no torch (detr_core.io.image, which the decode workers of
# io/decode_budget.py import) is then imported without torch, in milliseconds.
_WHERE = {
    ".analysis.attention": ("LOOKED_AT", "LOOKS", "EncoderMap", "decoder_map", "encoder_map"),
    ".analysis.capture": ("Analysis", "capture"),
    ".analysis.pipeline": ("analyze", "prepare"),
    ".analysis.relevance": ("relevance",),
    ".analysis.rollout": ("rollout_vector",),
    ".errors": ("CheckpointError", "DETRError", "ImageError", "InputSizeError"),
    ".io.image": ("Geometry", "PreparedImage", "load_image", "preprocess"),
    ".io.postprocess": ("COCO_CLASSES", "Detection", "postprocess"),
    ".models.own": ("OwnModel", "load_own_model"),
    ".models.zoo": ("MODELS", "ModelSpec", "build_model", "default_device", "get_spec", "load_model"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

if TYPE_CHECKING:
    from .analysis.attention import LOOKED_AT, LOOKS, EncoderMap, decoder_map, encoder_map
    from .analysis.capture import Analysis, capture
    from .analysis.pipeline import analyze, prepare
    from .analysis.relevance import relevance
    from .analysis.rollout import rollout_vector
    from .errors import CheckpointError, DETRError, ImageError, InputSizeError
    from .io.image import Geometry, PreparedImage, load_image, preprocess
    from .io.postprocess import COCO_CLASSES, Detection, postprocess
    from .models.own import OwnModel, load_own_model
    from .models.zoo import MODELS, ModelSpec, build_model, default_device, get_spec, load_model


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    # models
    "MODELS", "ModelSpec", "build_model", "default_device", "get_spec", "load_model", "load_own_model", "OwnModel",
    # in and out
    "load_image", "preprocess", "PreparedImage", "Geometry", "postprocess", "Detection", "COCO_CLASSES",
    # the analysis of one pass
    "analyze", "prepare", "capture", "Analysis", "encoder_map", "decoder_map", "EncoderMap", "LOOKS", "LOOKED_AT",
    "rollout_vector", "relevance",
    # errors
    "DETRError", "ImageError", "CheckpointError", "InputSizeError",
]  # fmt: skip
