"""A DETR the user brings: a fine-tuned checkpoint in the official or the Hugging Face format.

    own = load_own_model("checkpoint.pth", classes="classes.txt")  # or an HF save_pretrained folder
    analysis = analyze(own.model, "photo.jpg", own.spec)           # every page and statistic as for the zoo

`read_own_checkpoint` finds the format (`detect_format`), reads it without running code, infers
the architecture, and `load_own_model` builds the model, loads the weights strictly (every key,
shape and dtype checked) and wraps the result in a `ModelSpec` (`spec.class_names` has one name per
class, `spec.config` the architecture) so the analysis, CLI and dashboard treat it as any model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from ..io.class_names import class_names_for
from .checkpoint_formats import config_from_state_dict, detection_state_dict, read_official_checkpoint
from .config import DETRConfig
from .detr import build_detr
from .hf_convert import is_hf_folder, read_hf_checkpoint
from .weights import CheckpointInfo, check_checkpoint_path, check_state_dict
from .zoo import ModelSpec, resolve_device

__all__ = ["OwnCheckpoint", "OwnModel", "detect_format", "load_own_model", "read_own_checkpoint"]

Format = Literal["official", "huggingface", "safetensors"]


@dataclass
class OwnCheckpoint:
    """A user's checkpoint, read: architecture, official-layout weights, class names, provenance."""

    path: Path
    format: Format
    config: DETRConfig
    state_dict: dict[str, Tensor]
    class_names: tuple[str, ...]
    class_source: str  # "id2label", "file <name>", "given" or "numbered"
    min_size: int = 800  # the official training's preprocessing (or the HF preprocessor config's)
    max_size: int = 1333
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class OwnModel:
    model: nn.Module  # eval mode, frozen
    spec: ModelSpec
    notes: tuple[str, ...] = ()


def detect_format(path: Path) -> Format:
    check_checkpoint_path(path, folder_ok=True)  # not found / a device / a FIFO / ...: said as it is
    if is_hf_folder(path):
        return "huggingface"
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder without a config.json (a Hugging Face save_pretrained folder has one)"
        )
    if path.suffix == ".safetensors":
        return "safetensors"  # official parameter names, no config next to it
    return "official"


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot read {path.name}: it is damaged, truncated or not safetensors ({e})") from None


def read_own_checkpoint(
    checkpoint: str | Path,
    classes: str | Path | list[str] | tuple[str, ...] | None = None,
    *,
    dilation: bool | None = None,
    nheads: int | None = None,
) -> OwnCheckpoint:
    """Read a user's checkpoint (nothing is built). `classes`: a class-name file or the names.

    Raises:
        CheckpointError: every way the file or its class names can be wrong, with a message.
    """
    path = Path(checkpoint).expanduser()
    fmt = detect_format(path)
    file = given = None
    if isinstance(classes, (list, tuple)):
        given = classes
    elif classes is not None:
        file = classes
    if fmt == "huggingface":
        hf = read_hf_checkpoint(path)
        if dilation is not None and dilation != hf.config.dilation:
            raise CheckpointError(f"{path.name}: its config.json says dilation={hf.config.dilation}")
        names, source = class_names_for(hf.config.num_classes, file, hf.id2label, given)
        return OwnCheckpoint(
            path, fmt, hf.config, hf.state_dict, names, source, hf.min_size or 800, hf.max_size or 1333, hf.notes
        )
    if fmt == "safetensors":
        state, notes = detection_state_dict(_read_safetensors(path), path.name)
        args = None
    else:
        official = read_official_checkpoint(path)
        state, notes, args = official.state_dict, official.notes, official.args
        if official.epoch is not None:
            notes.insert(0, f"trained for {official.epoch + 1} epochs")
    config, more = config_from_state_dict(state, args, dilation=dilation, nheads=nheads, source=path.name)
    names, source = class_names_for(config.num_classes, file, None, given)
    return OwnCheckpoint(path, fmt, config, state, names, source, notes=notes + more)


def _title(own: OwnCheckpoint, name: str) -> str:
    c = own.config
    arch = f"{'R101' if c.backbone == 'resnet101' else 'R50'}{'-DC5' if c.dilation else ''}"
    return f"{name} (your model: {arch}, {c.num_classes} classes, {c.num_queries} queries)"


def load_own_model(
    checkpoint: str | Path,
    classes: str | Path | list[str] | tuple[str, ...] | None = None,
    *,
    name: str | None = None,
    dilation: bool | None = None,
    nheads: int | None = None,
    device: str | torch.device | None = None,
) -> OwnModel:
    """A user's DETR, loaded strictly, in eval mode, frozen, on `device`, with its `ModelSpec`."""
    device = resolve_device(device)
    own = read_own_checkpoint(checkpoint, classes, dilation=dilation, nheads=nheads)
    model = build_detr(own.config)
    check_state_dict(model, own.state_dict, source=f"{own.path.name} ({own.format} format)")
    model.load_state_dict(own.state_dict, strict=True)
    model.requires_grad_(False)
    model = model.eval().to(device)
    name = name or own.path.stem
    size_mb = sum(v.numel() * 4 for v in own.state_dict.values()) / 2**20
    notes = [f"{own.format} checkpoint {own.path.name}", f"class names: {own.class_source}", *own.notes]
    spec = ModelSpec(
        name=name,
        title=_title(own, name),
        config=own.config,
        checkpoint=CheckpointInfo(own.path.name, None, round(size_mb, 1)),
        box_ap=None,
        class_names=own.class_names,
        min_size=own.min_size,
        max_size=own.max_size,
        default_threshold=0.7,
        notes="; ".join(notes) + ".",
    )
    return OwnModel(model, spec, tuple(notes))
