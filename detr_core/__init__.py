"""detr_core: a faithful DETR, its checkpoints, and everything needed to look inside it. No UI."""

from .errors import CheckpointError, DETRError, ImageError, InputSizeError
from .image import Geometry, load_image, preprocess
from .postprocess import COCO_CLASSES, Detection, postprocess
from .zoo import MODELS, build_model, default_device, load_model

__all__ = [
    "MODELS", "build_model", "load_model", "default_device",
    "load_image", "preprocess", "Geometry", "postprocess", "Detection", "COCO_CLASSES",
    "DETRError", "ImageError", "CheckpointError", "InputSizeError",
]  # fmt: skip
