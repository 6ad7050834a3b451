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
