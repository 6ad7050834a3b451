"""Hugging Face DETR (`save_pretrained` folders) -> the official layout and a `DETRConfig`.

A folder holds ``config.json`` (``model_type: "detr"``, or ``"table-transformer"``: DETR with
pre-norm and a final encoder norm) and ``model.safetensors`` or ``pytorch_model.bin``. The weights
are renamed to the official parameter names (`hf_to_official`); the separate q/k/v projections of
HF's attention are packed into ``in_proj_weight`` [3C, C] as `nn.MultiheadAttention` keeps them.
Both backbones HF uses are mapped to torchvision's ResNet names: timm's ResNet (same names) and
transformers' own `ResNetBackbone` (``embedder`` / ``encoder.stages.<i>.layers.<j>.layer.<k>``).
Safetensors files are read with the `safetensors` package (no pickle at all); a ``.bin`` with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError
from .checkpoint_formats import detection_state_dict, safe_torch_load
from .config import DETRConfig

__all__ = ["HFCheckpoint", "SUPPORTED_MODEL_TYPES", "hf_to_official", "is_hf_folder", "read_hf_checkpoint"]

SUPPORTED_MODEL_TYPES = ("detr", "table-transformer")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_HF_RESNETS = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101"}  # transformers' ResNetConfig.depths

_ENC_LAYER = {"self_attn_layer_norm": "norm1", "fc1": "linear1", "fc2": "linear2", "final_layer_norm": "norm2"}
_DEC_LAYER = {
    "self_attn_layer_norm": "norm1",
    "encoder_attn_layer_norm": "norm2",
    "final_layer_norm": "norm3",
    "fc1": "linear1",
    "fc2": "linear2",
}
_TOP = {
    "model.input_projection.": "input_proj.",
    "model.query_position_embeddings.": "query_embed.",
    "model.backbone.position_embedding.row_embeddings.": "backbone.1.row_embed.",
    "model.backbone.position_embedding.column_embeddings.": "backbone.1.col_embed.",
    "model.decoder.layernorm.": "transformer.decoder.norm.",
    "model.encoder.layernorm.": "transformer.encoder.norm.",
    "class_labels_classifier.": "class_embed.",
    "bbox_predictor.": "bbox_embed.",
}


@dataclass
class HFCheckpoint:
    config: DETRConfig
    state_dict: dict[str, Tensor]  # official names
    id2label: dict[str, str] | None
    min_size: int | None = None  # from preprocessor_config.json, when there is one
    max_size: int | None = None
    notes: list[str] = field(default_factory=list)


def is_hf_folder(path: Path) -> bool:
    """A folder (or a file inside one) with a config.json."""
    folder = path if path.is_dir() else path.parent
    return (folder / "config.json").is_file() and (path.is_dir() or path.name in (*WEIGHT_FILES, "config.json"))


def _backbone_key(rest: str) -> str:
    """A backbone parameter name (after ``conv_encoder.model.``) -> torchvision ResNet's."""
    if rest.startswith("embedder.embedder."):  # transformers' ResNet stem
        return rest.replace("embedder.embedder.convolution", "conv1").replace("embedder.embedder.normalization", "bn1")
    m = re.match(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.(.*)", rest)
    if m:
        stage, block, tail = int(m.group(1)), m.group(2), m.group(3)
        tail = tail.replace("shortcut.convolution", "downsample.0").replace("shortcut.normalization", "downsample.1")
        tail = re.sub(r"layer\.(\d)\.convolution", lambda t: f"conv{int(t.group(1)) + 1}", tail)
        tail = re.sub(r"layer\.(\d)\.normalization", lambda t: f"bn{int(t.group(1)) + 1}", tail)
        return f"layer{stage + 1}.{block}.{tail}"
    return rest  # timm's ResNet: torchvision's names already


def hf_to_official(hf: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """HF `DetrForObjectDetection` weights -> the official DETR's parameter names and packing."""
    out: dict[str, Tensor] = {}
    qkv: dict[str, dict[str, Tensor]] = {}  # official attention prefix -> {"q.weight": .., ...}
    for key, value in hf.items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.startswith("model.backbone.conv_encoder.model."):
            out["backbone.0.body." + _backbone_key(key.removeprefix("model.backbone.conv_encoder.model."))] = value
            continue
        m = re.match(r"model\.(encoder|decoder)\.layers\.(\d+)\.(\w+)\.(.+)", key)
        if m:
            part, i, module, tail = m.groups()
            prefix = f"transformer.{part}.layers.{i}."
            if module in ("self_attn", "encoder_attn"):
                attn = prefix + ("self_attn" if module == "self_attn" else "multihead_attn")
                proj, kind = tail.split(".", 1)  # "q_proj", "weight"
                if proj == "out_proj":
                    out[f"{attn}.out_proj.{kind}"] = value
                else:
                    qkv.setdefault(attn, {})[f"{proj[0]}.{kind}"] = value
                continue
            names = _ENC_LAYER if part == "encoder" else _DEC_LAYER
            out[prefix + names.get(module, module) + "." + tail] = value
            continue
        for hf_prefix, official in _TOP.items():
            if key.startswith(hf_prefix):
                out[official + key.removeprefix(hf_prefix)] = value
                break
        else:
            out["unexpected." + key] = value  # reported by the strict check as an unexpected key
    for attn, parts in qkv.items():
        for kind in ("weight", "bias"):
            pieces = [parts.get(f"{p}.{kind}") for p in "qkv"]
            if any(p is None for p in pieces):
                out[f"{attn}.incomplete_qkv_{kind}"] = next(p for p in pieces if p is not None)
                continue
            out[f"{attn}.in_proj_{kind}"] = torch.cat(pieces, dim=0)  # [3C, C] / [3C]
    return out


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read the {what} {path.name}: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"the {what} {path.name} is not a JSON object")
    return data


def _timm_name(name: str) -> str:
    return name.removeprefix("timm/").split(".")[0]  # "timm/resnet50.a1_in1k" -> "resnet50"


def _backbone(cfg: Mapping[str, Any], source: str) -> str:
    if cfg.get("use_timm_backbone", True):
        name = _timm_name(str(cfg.get("backbone") or ""))
        if name not in ("resnet50", "resnet101"):
            raise CheckpointError(
                f"{source}: its backbone {cfg.get('backbone')!r} is not supported (resnet50, resnet101)"
            )
        kwargs = cfg.get("backbone_kwargs") or {}
        if kwargs.get("output_stride") not in (None, 16 if cfg.get("dilation") else 32):
            raise CheckpointError(f"{source}: backbone_kwargs output_stride {kwargs['output_stride']} is not supported")
        return name
    bb = cfg.get("backbone_config") or {}
    depths = tuple(bb.get("depths", ()))
    fits = (
        bb.get("model_type") == "resnet"
        and bb.get("layer_type", "bottleneck") == "bottleneck"
        and list(bb.get("hidden_sizes", [256, 512, 1024, 2048])) == [256, 512, 1024, 2048]
        and bb.get("embedding_size", 64) == 64
        and not bb.get("downsample_in_bottleneck", False)
        and depths in _HF_RESNETS
    )
    if not fits:
        raise CheckpointError(
            f"{source}: its backbone ({bb.get('model_type')!r}, depths {list(depths)}) is not supported: "
            "a ResNet-50 or ResNet-101 (bottleneck, torchvision layout)"
        )
    if cfg.get("dilation"):
        raise CheckpointError(f"{source}: dilation with transformers' own ResNet backbone is not supported")
    return _HF_RESNETS[depths]


def config_from_hf(cfg: Mapping[str, Any], num_classes: int, source: str) -> DETRConfig:
    """The `DETRConfig` of an HF DETR config.json (`num_classes` from the class head's shape)."""
    if cfg.get("encoder_attention_heads") != cfg.get("decoder_attention_heads"):
        raise CheckpointError(f"{source}: different head counts in encoder and decoder are not supported")
    if cfg.get("encoder_ffn_dim") != cfg.get("decoder_ffn_dim"):
        raise CheckpointError(f"{source}: different feed-forward sizes in encoder and decoder are not supported")
    if cfg.get("activation_function", "relu") != "relu":
        raise CheckpointError(f"{source}: activation {cfg.get('activation_function')!r} is not supported (relu)")
    if cfg.get("num_channels", 3) != 3:
        raise CheckpointError(f"{source}: {cfg.get('num_channels')} input channels are not supported (RGB)")
    position = cfg.get("position_embedding_type", "sine")
    if position not in ("sine", "learned"):
        raise CheckpointError(f"{source}: position embedding {position!r} is not supported (sine, learned)")
    try:
        return DETRConfig(
            backbone=_backbone(cfg, source),
            dilation=bool(cfg.get("dilation", False)),
            hidden_dim=int(cfg["d_model"]),
            nheads=int(cfg["encoder_attention_heads"]),
            enc_layers=int(cfg["encoder_layers"]),
            dec_layers=int(cfg["decoder_layers"]),
            dim_feedforward=int(cfg["encoder_ffn_dim"]),
            dropout=0.0,
            num_queries=int(cfg["num_queries"]),
            num_classes=num_classes,
            position_embedding=position,
            pre_norm=cfg.get("model_type") == "table-transformer",
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: config.json lacks or garbles a DETR setting ({e})") from None


def _read_weights(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(
                f"cannot read {path.name}: it is damaged, truncated or not safetensors ({e})"
            ) from None
    state, _ = detection_state_dict(safe_torch_load(path, allow_namespace=False), path.name)
    return state


def _sizes(folder: Path) -> tuple[int | None, int | None]:
    pre = folder / "preprocessor_config.json"
    if not pre.is_file():
        return None, None
    size = _read_json(pre, "preprocessor config").get("size") or {}
    if not isinstance(size, dict):
        return None, None
    short, long = size.get("shortest_edge"), size.get("longest_edge")
    ok = [v if isinstance(v, int) and 0 < v <= 4096 else None for v in (short, long)]
    return ok[0], ok[1]


def read_hf_checkpoint(path: str | Path) -> HFCheckpoint:
    """An HF `save_pretrained` folder (or its config.json / weight file) -> official weights and config.

    Raises:
        CheckpointError: unsupported model type (named), missing or unreadable files, settings the
            official DETR does not have.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    source = f"{folder.name}/config.json"
    cfg = _read_json(folder / "config.json", "Hugging Face config")
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"not supported: {model_type} (from {source}). The explorer shows DETR itself "
            f"(model_type {' or '.join(repr(t) for t in SUPPORTED_MODEL_TYPES)}); other detectors such as "
            "deformable_detr, conditional_detr or rt_detr attend differently."
        )
    weight_file = path if path.is_file() and path.name in WEIGHT_FILES else None
    weight_file = weight_file or next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
    if weight_file is None:
        raise CheckpointError(f"{folder.name} has a config.json but no {' or '.join(WEIGHT_FILES)}")
    hf = _read_weights(weight_file)
    notes = []
    if any(k.startswith("detr.") for k in hf):  # DetrForSegmentation
        mask = [k for k in hf if not k.startswith("detr.")]
        hf = {k.removeprefix("detr."): v for k, v in hf.items() if k.startswith("detr.")}
        notes.append(
            f"a DETR segmentation model: its detection part is loaded; the mask head ({len(mask)} tensors) is not"
        )
    for key, value in hf.items():
        if not value.is_floating_point():
            raise CheckpointError(f"{weight_file.name}: tensor {key} is {value.dtype}, not floating point")
    if "class_labels_classifier.weight" not in hf:
        raise CheckpointError(
            f"{weight_file.name} has no class head (class_labels_classifier): save a DetrForObjectDetection, "
            "not a DetrModel"
        )
    num_classes = hf["class_labels_classifier.weight"].shape[0] - 1  # [K + 1, C]
    config = config_from_hf(cfg, num_classes, source)
    id2label = cfg.get("id2label") if isinstance(cfg.get("id2label"), dict) else None
    min_size, max_size = _sizes(folder)
    state = {k: v.float() for k, v in hf_to_official(hf).items()}
    return HFCheckpoint(config, state, id2label, min_size, max_size, notes)
