"""The model contract: what a detector must offer the capture layer, relevance and the dashboard.

Every model family of the zoo (the official `DETR`, the paper's `DETRdemo`) fulfils it; a new family
is checked against it when it is registered (`check_architecture`, on the class) and when it is built
(`check_model`, on the instance), so a model that does not fit fails there with a message naming what
is missing, not deep inside a capture or a page.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from ..errors import DETRError

__all__ = ["ContractError", "DetectionTransformer", "check_architecture", "check_model"]


class ContractError(DETRError, TypeError):
    """A model family does not offer what the capture layer and the dashboard need."""


@runtime_checkable
class DetectionTransformer(Protocol):
    """A DETR-like detector, as the rest of detr_core uses it.

    - `stride`: input pixels per feature cell (32, or 16 for the dilated C5 of the DC5 models).
    - `input_projection`: the module whose output [1, C, h, w] is the transformer's input; the capture
      hooks it for the feature shape, relevance for the start of the gradient's path.
    - `transformer.encoder.layers` and `transformer.decoder.layers` (with `transformer.decoder.norm`):
      `nn.MultiheadAttention` modules named `...encoder...self_attn`, `...decoder...self_attn` and
      `...decoder...multihead_attn` (the official names), hooked by the capture.
    - `heads(hs)`: decoder outputs [..., Q, C] -> class logits [..., Q, K+1] (the last is "no
      object") and boxes [..., Q, 4] (normalized cxcywh): predictions after every decoder layer.
    - `forward(images [B, 3, H, W])` -> {"pred_logits": [B, Q, K+1], "pred_boxes": [B, Q, 4]}.
    """

    transformer: nn.Module

    @property
    def stride(self) -> int: ...

    @property
    def input_projection(self) -> nn.Module: ...

    def heads(self, hs: Tensor) -> tuple[Tensor, Tensor]: ...

    def forward(self, images: Tensor) -> dict[str, Tensor]: ...


_CLASS_MEMBERS = ("stride", "input_projection", "heads", "forward")


def check_architecture(cls: type) -> None:
    """Raise `ContractError` unless `cls` is an nn.Module class with the contract's class-level members."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ContractError(f"a model architecture must be an nn.Module class, not {cls!r}")
    missing = [name for name in _CLASS_MEMBERS if not hasattr(cls, name)]
    if missing:
        raise ContractError(
            f"{cls.__name__} does not fulfil detr_core.models.contract.DetectionTransformer: "
            f"it has no {', '.join(missing)}"
        )


def check_model(model: nn.Module) -> None:
    """Raise `ContractError` unless a built model has the contract's instance-level parts too."""
    check_architecture(type(model))
    transformer = getattr(model, "transformer", None)
    parts = {
        "transformer.encoder.layers": getattr(getattr(transformer, "encoder", None), "layers", None),
        "transformer.decoder.layers": getattr(getattr(transformer, "decoder", None), "layers", None),
        "transformer.decoder.norm": getattr(getattr(transformer, "decoder", None), "norm", None),
    }
    missing = [name for name, part in parts.items() if part is None]
    if missing:
        raise ContractError(f"{type(model).__name__} has no {', '.join(missing)}: the capture layer reads them")
    if not isinstance(model.input_projection, nn.Module):
        raise ContractError(f"{type(model).__name__}.input_projection is not a module the capture can hook")
    attentions = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    if not any(".encoder." in f".{n}." and n.endswith("self_attn") for n in attentions) or not any(
        ".decoder." in f".{n}." and n.endswith("multihead_attn") for n in attentions
    ):
        raise ContractError(
            f"{type(model).__name__} has no nn.MultiheadAttention named '...encoder...self_attn' and "
            f"'...decoder...multihead_attn' (found: {attentions or 'none'})"
        )
