"""The model zoo: every model the project knows, how to build it, and where its weights live.

`build_model(name)` returns the named architecture with random weights (no download);
`load_model(name)` returns it with its verified checkpoint loaded, in eval mode, on the best device.
Adding a variant of a known family is one `register(ModelSpec(...))` entry here; a new family is
one model module whose class fulfils `contract.DetectionTransformer` (checked by `register`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, DETRError
from ..io.postprocess import COCO_CLASSES
from .config import DETRConfig, DETRDemoConfig, SmallBackboneConfig
from .contract import ContractError, check_architecture, check_model
from .detr import DETR, build_detr
from .detr_demo import DETRdemo
from .weights import CheckpointInfo, check_state_dict, checkpoint_status, read_state_dict, resolve_checkpoint

__all__ = [
    "MODELS", "ModelSpec", "SHAPES_CLASSES", "SHAPES_MODEL", "build_model", "default_device", "get_spec",
    "load_model", "model_status", "register", "resolve_device",
]  # fmt: skip

_BASE_URL = "https://dl.fbaipublicfiles.com/detr/"
SHAPES_MODEL = "detr_shapes"  # the project's own bundled model: the offline default everywhere
SHAPES_CLASSES = ("ellipse", "rectangle", "triangle", "ring")  # its classes, in label order


@dataclass(frozen=True)
class ModelSpec:
    name: str
    title: str
    config: DETRConfig | DETRDemoConfig
    checkpoint: CheckpointInfo
    box_ap: float | None  # COCO val5k box AP of the checkpoint (the official numbers)
    class_names: tuple[str, ...] = COCO_CLASSES
    min_size: int = 800  # preprocessing: shorter side
    max_size: int = 1333  # preprocessing: longer side at most
    bundled: bool = False  # shipped inside the package (no download)
    default_threshold: float = 0.9  # the score a detection must pass by default (the official notebook's 0.9)
    notes: str = ""
    builder: Callable[..., nn.Module] = field(default=build_detr, repr=False)  # config -> model, random weights
    architecture: type[nn.Module] = field(default=DETR, repr=False)  # the class `builder` returns
    foldable: bool = True  # has batch norm after its convolutions: models.fast.optimize_for_inference applies


def _official(name, title, cfg, filename, size_mb, ap) -> ModelSpec:
    return ModelSpec(name, title, cfg, CheckpointInfo(filename, _BASE_URL + filename, size_mb), ap)


MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add `spec` to `MODELS` after checking its architecture against the model contract.

    Raises:
        ContractError: the architecture lacks what the capture layer and the dashboard need.
        ValueError: the name is taken, or the spec's settings are not usable.
    """
    check_architecture(spec.architecture)
    if spec.name in MODELS:
        raise ValueError(f"a model named {spec.name!r} is already registered")
    if not 0 < spec.default_threshold < 1 or spec.min_size <= 0 or spec.max_size < spec.min_size:
        raise ValueError(f"{spec.name}: threshold must be in (0, 1) and 0 < min_size <= max_size")
    MODELS[spec.name] = spec
    return spec


for _spec in (
    _official("detr_resnet50", "DETR R50", DETRConfig(), "detr-r50-e632da11.pth", 159, 42.0),
    _official("detr_resnet50_dc5", "DETR R50-DC5", DETRConfig(dilation=True), "detr-r50-dc5-f0fb7ef5.pth", 159, 43.3),
    _official("detr_resnet101", "DETR R101", DETRConfig(backbone="resnet101"), "detr-r101-2c7b67e5.pth", 232, 43.5),
    _official(
        "detr_resnet101_dc5",
        "DETR R101-DC5",
        DETRConfig(backbone="resnet101", dilation=True),
        "detr-r101-dc5-a2e86def.pth",
        232,
        44.9,
    ),
    ModelSpec(
        "detr_demo",
        "DETRdemo (paper appendix)",
        DETRDemoConfig(),
        CheckpointInfo(
            "detr_demo-da2a99e9.pth", _BASE_URL + "detr_demo-da2a99e9.pth", 79, state_dict_key=None, half=True
        ),
        None,
        builder=DETRdemo,
        architecture=DETRdemo,
        notes="The paper's minimal listing; learned positions limit it to 50x50 feature cells.",
    ),
    ModelSpec(
        SHAPES_MODEL,
        "DETR shapes (bundled, trained by this project)",
        DETRConfig(
            backbone="small",
            small_backbone=SmallBackboneConfig(),
            hidden_dim=128,
            nheads=8,
            enc_layers=3,
            dec_layers=3,
            dim_feedforward=512,
            dropout=0.0,
            num_queries=20,
            num_classes=len(SHAPES_CLASSES),
        ),
        CheckpointInfo("detr_shapes-7870b3a2.pth", None, 4.3, state_dict_key=None, half=True),
        None,
        class_names=SHAPES_CLASSES,
        min_size=128,
        max_size=1333,
        bundled=True,
        default_threshold=0.8,
        notes="Trained on synthetic scenes of shapes; see detr_core/weights/MODEL_CARD.md.",
    ),
):
    register(_spec)


def get_spec(name: str) -> ModelSpec:
    """The registry entry of `name`, or a CheckpointError that lists the known names."""
    try:
        return MODELS[name]
    except KeyError:
        raise CheckpointError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None


def build_model(name: str) -> nn.Module:
    """The named model with random weights (no download), in train mode like any fresh nn.Module."""
    spec = get_spec(name)
    model = spec.builder(spec.config)
    if not isinstance(model, spec.architecture):
        raise ContractError(f"{name}: its builder made a {type(model).__name__}, not a {spec.architecture.__name__}")
    check_model(model)
    return model


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`device` (None: `default_device()`) if a model can run on it here; `DETRError` saying why not.

    Accepted: "cpu", "cuda" and "cuda:N" when that GPU exists, "mps" when available. Refused with a
    message: names torch does not know ("banana"), CUDA without a GPU or with an index past the
    last GPU, and devices that hold no data or cannot run the model ("meta", ...).
    """
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DETRError(f"{str(device)!r} is not a device: use 'cpu' or 'cuda' ('cuda:N' for the N-th GPU)") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DETRError(f"{str(device)!r}: no CUDA GPU is available on this machine; use 'cpu'")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DETRError(f"{str(device)!r}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
        return dev
    if dev.type == "mps" and torch.backends.mps.is_available():
        return dev
    raise DETRError(f"{str(device)!r} cannot run the analysis here: use 'cpu' or 'cuda'")


def load_model(
    name: str,
    checkpoint: str | Path | None = None,
    device: str | torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> nn.Module:
    """The named model with its checkpoint loaded (strict), in eval mode, frozen, on `device`.

    The checkpoint is found by `weights.resolve_checkpoint` (an explicit file, $DETR_WEIGHTS_DIR,
    the torch hub cache, the bundled folder, then a verified download reporting to `progress`).
    """
    spec = get_spec(name)
    device = resolve_device(device)
    path = resolve_checkpoint(spec.checkpoint, path=checkpoint, progress=progress)
    state_dict = read_state_dict(path, spec.checkpoint)
    model = build_model(name)
    check_state_dict(model, state_dict, source=f"{path.name} (checkpoint for {name})")
    model.load_state_dict(state_dict, strict=True)
    model.requires_grad_(False)
    return model.eval().to(device)


def model_status(model: ModelSpec | str) -> str:
    """Whether a model's checkpoint is "available" here, "downloadable" or "missing" (nothing is hashed)."""
    spec = get_spec(model) if isinstance(model, str) else model
    return checkpoint_status(spec.checkpoint)
