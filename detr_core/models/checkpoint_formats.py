"""Checkpoints of the official training (facebookresearch/detr `main.py`), read safely, and the
DETR architecture they hold, taken from their `args` or inferred from their tensors' shapes.

`main.py` saves ``{"model": state_dict, "optimizer": ..., "lr_scheduler": ..., "epoch": int,
"args": argparse.Namespace}``; fine-tuning scripts often save the bare state dict. Both are read
with ``torch.load(weights_only=True)`` with exactly one class allowed besides tensors and
containers: `argparse.Namespace` (the `args`). A pickle that asks for anything else is refused
before it can run code.

What the tensors cannot tell (`infer_config`): the number of attention heads (the packed
``in_proj_weight`` is [3C, C] for any head count) and `dilation` (R50 and R50-DC5 have identical
tensors). Without `args` they must be given (`dilation=`, `nheads=`; CLI and dashboard: flags).
"""

from __future__ import annotations

import argparse
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError
from .config import DETRConfig
from .weights import check_torch_file, tensor_dict

__all__ = [
    "OfficialCheckpoint",
    "config_from_state_dict",
    "detection_state_dict",
    "read_official_checkpoint",
    "safe_torch_load",
]

_BLOCKS_TO_BACKBONE = {6: "resnet50", 23: "resnet101"}  # blocks in layer3 -> torchvision ResNet
_ARG_FIELDS = ("hidden_dim", "nheads", "enc_layers", "dec_layers", "dim_feedforward", "num_queries")


@dataclass
class OfficialCheckpoint:
    """What a `main.py` checkpoint (or a bare state dict) holds that the explorer uses."""

    state_dict: dict[str, Tensor]  # official parameter names
    args: dict[str, Any] | None  # vars(args) of the training run, when saved
    epoch: int | None = None
    notes: list[str] = field(default_factory=list)


def _refused_global(error: Exception) -> str:
    match = re.search(r"GLOBAL (\S+)", str(error))
    return f" (it asks for {match.group(1)})" if match else ""


def safe_torch_load(path: Path, allow_namespace: bool = True) -> Any:
    """`torch.load(weights_only=True)` on the CPU, allowing `argparse.Namespace` and nothing else.

    Raises:
        CheckpointError: damaged or truncated file, or a pickle that asks for other objects.
    """
    allowed = [argparse.Namespace] if allow_namespace else []
    check_torch_file(path)
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" not in str(e):  # "Unsupported operand", "invalid load key": not a pickle at all
            raise CheckpointError(
                f"cannot read {path.name}: it is damaged, truncated or not a PyTorch checkpoint ({e})"
            ) from None
        raise CheckpointError(
            f"{path.name} was refused: it holds Python objects other than tensors, containers and the training "
            f"arguments{_refused_global(e)}, and loading them could run code. Save the state dict alone, or "
            "the checkpoint main.py writes."
        ) from None
    except Exception as e:  # RuntimeError, EOFError, zipfile errors, ... on damaged or truncated files
        raise CheckpointError(
            f"cannot read {path.name}: it is damaged, truncated or not a PyTorch checkpoint ({type(e).__name__}: {e})"
        ) from None


def _looks_like(keys: set[str]) -> str | None:
    """A guess at the architecture of a checkpoint that is not a DETR, for the error message."""

    def has(*parts: str) -> bool:
        return any(any(p in k for p in parts) for k in keys)

    if has("level_embed", "sampling_offsets"):
        return "a Deformable DETR"
    if has("rpn.head", "roi_heads."):
        return "a Faster / Mask R-CNN"
    if has("cls_token", "patch_embed", "conv_proj", "encoder_layer_0"):
        return "a Vision Transformer (ViT)"
    if has("fc.weight") and has("layer4."):
        return "an image classifier (ResNet)"
    return None


def detection_state_dict(obj: Any, source: str) -> tuple[dict[str, Tensor], list[str]]:
    """The DETR detection weights (official names) of a loaded checkpoint object, and notes.

    Unwraps ``{"model": ...}``, strips DistributedDataParallel's ``module.`` and DETR-segm's
    ``detr.`` prefixes (a segm checkpoint's mask head is dropped, and said so).
    """
    notes: list[str] = []
    state = {key.removeprefix("module."): value for key, value in tensor_dict(obj, source, "model").items()}
    if any(k.startswith("detr.") for k in state):
        mask_keys = [k for k in state if not k.startswith("detr.")]
        state = {k.removeprefix("detr."): v for k, v in state.items() if k.startswith("detr.")}
        notes.append(
            f"a DETR-segm checkpoint: its detection part is loaded; the mask head ({len(mask_keys)} tensors) is not "
            "used by the explorer"
        )
    for key, value in state.items():
        if not value.is_floating_point():
            raise CheckpointError(f"{source}: tensor {key} is {value.dtype}, not floating point")
    return {k: v.float() for k, v in state.items()}, notes


def read_official_checkpoint(path: str | Path) -> OfficialCheckpoint:
    """A `main.py` checkpoint or a bare state dict (``.pth``), read without running code."""
    path = Path(path)
    obj = safe_torch_load(path)
    args: dict[str, Any] | None = None
    epoch = None
    if isinstance(obj, Mapping) and "model" in obj:
        raw_args = obj.get("args")
        if isinstance(raw_args, argparse.Namespace):
            args = vars(raw_args)
        elif isinstance(raw_args, Mapping):
            args = dict(raw_args)
        if isinstance(obj.get("epoch"), int):
            epoch = obj["epoch"]
    state, notes = detection_state_dict(obj, path.name)
    return OfficialCheckpoint(state, args, epoch, notes)


def _count(state: Mapping[str, Tensor], prefix: str) -> int:
    """How many numbered children `prefix.<i>.` the state dict has."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def _position_embedding(arg: Any) -> str | None:
    if arg is None:
        return None
    return {"sine": "sine", "v2": "sine", "learned": "learned", "v3": "learned"}.get(str(arg), str(arg))


def config_from_state_dict(
    state: Mapping[str, Tensor],
    args: Mapping[str, Any] | None = None,
    *,
    dilation: bool | None = None,
    nheads: int | None = None,
    source: str = "the checkpoint",
) -> tuple[DETRConfig, list[str]]:
    """The `DETRConfig` of an official-layout state dict: from `args` where given, checked against
    the tensors' shapes; what neither tells (dilation, heads) from the keyword arguments.

    Raises:
        CheckpointError: not a DETR (names what it looks like), an unsupported backbone, `args`
            that contradict the tensors, or dilation / heads unknown.
    """
    notes: list[str] = []
    required = ("class_embed.weight", "query_embed.weight", "input_proj.weight", "transformer.decoder.norm.weight")
    missing = [k for k in required if k not in state]
    if missing:
        guess = _looks_like(set(state))
        what = f"it looks like {guess}" if guess else f"it has no {', '.join(missing)}"
        raise CheckpointError(f"{source} is not a DETR checkpoint: {what}. Only DETR (and DETR-segm) is supported.")
    num_queries, hidden_dim = state["query_embed.weight"].shape  # [Q, C]
    num_classes = state["class_embed.weight"].shape[0] - 1  # [K + 1, C]
    enc_layers = _count(state, "transformer.encoder.layers")
    dec_layers = _count(state, "transformer.decoder.layers")
    ffn_key = (
        "transformer.encoder.layers.0.linear1.weight" if enc_layers else "transformer.decoder.layers.0.linear1.weight"
    )
    if ffn_key not in state:
        raise CheckpointError(f"{source} is not a DETR checkpoint: it has no {ffn_key}")
    dim_feedforward = state[ffn_key].shape[0]  # [F, C]
    pre_norm = "transformer.encoder.norm.weight" in state
    position_embedding = "learned" if "backbone.1.row_embed.weight" in state else "sine"
    blocks = _count(state, "backbone.0.body.layer3")
    backbone = _BLOCKS_TO_BACKBONE.get(blocks)
    if backbone is None or "backbone.0.body.layer1.0.conv3.weight" not in state:
        raise CheckpointError(
            f"{source}: its backbone is not a ResNet-50 or ResNet-101 (the backbones of DETR's main.py): "
            f"layer3 has {blocks} blocks"
        )
    found = {
        "hidden_dim": hidden_dim,
        "enc_layers": enc_layers,
        "dec_layers": dec_layers,
        "dim_feedforward": dim_feedforward,
        "num_queries": num_queries,
    }
    if args is not None:
        conflicts = [f"{k}={args[k]!r} (tensors: {v})" for k, v in found.items() if k in args and args[k] != v]
        if "backbone" in args and args["backbone"] != backbone:
            conflicts.append(f"backbone={args['backbone']!r} (tensors: {backbone})")
        if "pre_norm" in args and bool(args["pre_norm"]) != pre_norm:
            conflicts.append(f"pre_norm={args['pre_norm']!r} (tensors: {pre_norm})")
        arg_pos = _position_embedding(args.get("position_embedding"))
        if arg_pos is not None and arg_pos != position_embedding:
            conflicts.append(f"position_embedding={args['position_embedding']!r} (tensors: {position_embedding})")
        if conflicts:
            raise CheckpointError(f"{source}: its training arguments contradict its tensors: {'; '.join(conflicts)}")
        if args.get("masks"):
            notes.append("trained with masks=True (DETR-segm): the detection part is shown")
    if nheads is None and args is not None and "nheads" in args:
        nheads = int(args["nheads"])
    if dilation is None and args is not None and "dilation" in args:
        dilation = bool(args["dilation"])
    unknown = []
    if dilation is None:
        unknown.append(
            "whether its backbone is dilated (DC5): R50 and R50-DC5 have identical tensors; "
            "pass dilation=True or False (command line: --dilation or --no-dilation)"
        )
    if nheads is None:
        unknown.append(
            "its number of attention heads (the official default is 8): pass nheads=N (command line: --nheads N)"
        )
    if unknown:
        raise CheckpointError(
            f"{source} has no training arguments ('args'), and its tensors cannot tell " + "; nor ".join(unknown)
        )
    if hidden_dim % nheads:
        raise CheckpointError(f"{source}: {nheads} heads do not divide the hidden size {hidden_dim}")
    cfg = DETRConfig(
        backbone=backbone,
        dilation=bool(dilation),
        hidden_dim=hidden_dim,
        nheads=nheads,
        enc_layers=enc_layers,
        dec_layers=dec_layers,
        dim_feedforward=dim_feedforward,
        dropout=0.0,
        num_queries=num_queries,
        num_classes=num_classes,
        position_embedding=position_embedding,
        pre_norm=pre_norm,
    )
    return cfg, notes
