"""Hook capture: every attention map of one forward pass, recorded without editing the model.

`capture(model, prepared)` runs ONE forward pass with forward hooks on every `nn.MultiheadAttention`
of the transformer (the official DETR's and `DETRdemo`'s `nn.Transformer` alike) and on each
decoder layer, and returns an `Analysis`. Storing every [HW x HW] matrix per head would not fit
in memory (6 layers x 8 heads x 1050^2 floats = 212 MB at 800x1333), so the analysis keeps what
computes any row or column exactly: each layer's projected, scaled queries and keys per head and
the log-sum-exp of every row. Row i of a head's map is exp(q_i . K^T - lse_i); column j is
exp(Q . k_j - lse); both equal softmax(QK^T / sqrt(d_head)) to float rounding.

Cost: the project's own transformer (detr_core.models.transformer.MultiheadAttention) hands its
projected queries and keys and the fused kernel's row log-sum-exp to a probe submodule, so the
hooks only keep references: nothing is computed twice. Any other `nn.MultiheadAttention` (the
`nn.Transformer` of `DETRdemo`) is hooked as a whole; its hook projects queries and keys again and
gets the log-sum-exp from the same fused kernel.

Thread safety: one model is shared by every user of the dashboard; the hooks record only for the
capture that is active in the current thread, and are removed however the pass ends
(`recording.recording`). Maps are read from the analysis by `attention` and `rollout`, which
rebuild them with `kernel`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import DETRError
from ..io.image import Geometry, PreparedImage
from ..io.postprocess import COCO_CLASSES, Detection, postprocess
from ..models.transformer import AttentionProbe, in_projection
from .kernel import row_logsumexp
from .recording import attention_inputs, is_active, recording

__all__ = ["Analysis", "CaptureError", "attention_modules", "capture"]


class CaptureError(DETRError):
    """The model has no attention module the capture layer recognises, or the input is unsupported."""


@dataclass
class Analysis:
    """Everything one forward pass reveals about one image. Shapes use L layers, nh heads,
    HW image tokens (feature cells, row by row), Q queries, d = C / nh.

    Attention of layer l, head n: A[l, n] = softmax(q[l, n] @ k[l, n].T), with q already divided
    by sqrt(d); lse[l, n, i] = logsumexp of row i, so A[l, n, i, j] = exp(q_i . k_j - lse_i).
    """

    geometry: Geometry
    feature_shape: tuple[int, ...]  # backbone output, e.g. (1, 2048, 25, 34)
    nheads: int
    enc_q: Tensor  # [L_enc, nh, HW, d]
    enc_k: Tensor  # [L_enc, nh, HW, d]
    enc_lse: Tensor  # [L_enc, nh, HW]
    dec_self: Tensor  # [L_dec, nh, Q, Q]  decoder self-attention, stored whole (small)
    cross_q: Tensor  # [L_dec, nh, Q, d]
    cross_k: Tensor  # [L_dec, nh, HW, d]
    cross_lse: Tensor  # [L_dec, nh, Q]
    pred_logits: Tensor  # [L_dec, Q, K+1]  predictions after every decoder layer
    pred_boxes: Tensor  # [L_dec, Q, 4]  normalized cxcywh
    class_names: tuple[str, ...] = COCO_CLASSES
    model_name: str = ""
    forward_ms: float = 0.0  # wall time of the captured forward pass
    device: str = "cpu"

    @property
    def enc_layers(self) -> int:
        return self.enc_q.shape[0]

    @property
    def dec_layers(self) -> int:
        return self.cross_q.shape[0]

    @property
    def num_queries(self) -> int:
        return self.cross_q.shape[2]

    @property
    def feat_hw(self) -> tuple[int, int]:
        return self.geometry.feat_h, self.geometry.feat_w

    def detections(self, threshold: float = 0.9, layer: int = -1) -> list[Detection]:
        """Detections of decoder layer `layer` (the last one by default) above `threshold`."""
        return postprocess(self.pred_logits[layer], self.pred_boxes[layer], self.geometry, self.class_names, threshold)

    def nbytes(self) -> int:
        """Memory held by the analysis' tensors."""
        tensors = [v for v in vars(self).values() if isinstance(v, Tensor)]
        return sum(t.numel() * t.element_size() for t in tensors)


def attention_modules(model: nn.Module) -> dict[str, list[nn.MultiheadAttention]]:
    """The model's attention modules by role, in layer order: encoder self-attention, decoder
    self-attention and decoder cross-attention (`multihead_attn`, the official name)."""
    roles: dict[str, list[nn.MultiheadAttention]] = {"encoder": [], "decoder_self": [], "cross": []}
    for name, module in model.named_modules():
        if not isinstance(module, nn.MultiheadAttention):
            continue
        if ".encoder." in f".{name}." and name.endswith("self_attn"):
            roles["encoder"].append(module)
        elif ".decoder." in f".{name}." and name.endswith("self_attn"):
            roles["decoder_self"].append(module)
        elif ".decoder." in f".{name}." and name.endswith("multihead_attn"):
            roles["cross"].append(module)
    if not roles["encoder"] or not roles["cross"]:
        found = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
        raise CaptureError(
            f"{type(model).__name__} has no encoder self-attention and decoder cross-attention that the capture "
            "layer recognises (nn.MultiheadAttention named '...encoder...self_attn' and "
            f"'...decoder...multihead_attn'); "
            f"found: {found or 'no nn.MultiheadAttention at all'}"
        )
    return roles


def project_qk(mha: nn.MultiheadAttention, query: Tensor, key: Tensor) -> tuple[Tensor, Tensor]:
    """The module's own query/key projections, split into heads: [B, nh, T, d] each (not scaled)."""
    if not mha._qkv_same_embed_dim:
        raise CaptureError("nn.MultiheadAttention with separate q/k/v projection weights is not supported")
    if mha.batch_first:
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    return in_projection(mha, query, key)


def hooked_module(attention: nn.MultiheadAttention) -> nn.Module:
    """What the capture hooks for one attention: its AttentionProbe if it has one, else itself."""
    probe = getattr(attention, "probe", None)
    return probe if isinstance(probe, AttentionProbe) else attention


class _Recorder:
    """Collects what the hooks see during one forward pass in one thread."""

    def __init__(self, roles: dict[str, list[nn.MultiheadAttention]]):
        # id of each hooked module (the attention, or its probe) -> (role, layer index)
        self.index = {id(hooked_module(m)): (role, i) for role, mods in roles.items() for i, m in enumerate(mods)}
        self.enc: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
        self.dec_self: dict[int, Tensor] = {}
        self.cross: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
        self.dec_out: list[Tensor] = []
        self.feature_shape: tuple[int, ...] | None = None

    def attention_hook(self, module: nn.MultiheadAttention, args: tuple, *kwargs_and_output) -> None:
        """Forward hook on a plain nn.MultiheadAttention: project q and k again from its inputs."""
        # Another thread's capture (or none) is not ours to record: checked before reading the arguments.
        if not is_active(self):
            return
        call = attention_inputs(args, kwargs_and_output)
        if call.attn_mask is not None:
            raise CaptureError("attention masks (attn_mask) are not supported by the capture layer")
        q, k = project_qk(module, call.query, call.key)
        self.record(id(module), q, k, None, call.key_padding_mask)

    def probe_hook(self, probe: nn.Module, args: tuple, output: None) -> None:
        """Forward hook on a detr_core.models.transformer.AttentionProbe: the attention's own q, k and lse."""
        if is_active(self):
            self.record(id(probe), *args)

    def record(self, module_id: int, q: Tensor, k: Tensor, lse: Tensor | None, mask: Tensor | None) -> None:
        """q, k [B, nh, T, d] as projected (not scaled); lse [B, nh, T_q] of the scaled logits, or None."""
        if q.shape[0] != 1:
            raise CaptureError(f"capture analyses one image at a time; got a batch of {q.shape[0]}")
        q = q[0].float() / math.sqrt(q.shape[-1])  # [nh, T_q, d]
        k = k[0].float()  # [nh, T_k, d]
        role, i = self.index[module_id]
        if role == "decoder_self":
            logits = q @ k.transpose(1, 2)  # [nh, Q, Q]: small, kept whole
            if mask is not None:
                logits = logits.masked_fill(mask[0].view(1, 1, -1).bool(), float("-inf"))
            self.dec_self[i] = logits.softmax(-1)
            return
        lse = row_logsumexp(q, k, mask) if lse is None else lse[0].float()  # [nh, T_q]
        (self.enc if role == "encoder" else self.cross)[i] = (q, k, lse)

    def decoder_layer_hook(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        if is_active(self):
            self.dec_out.append(output)  # [Q, B, C] (or [B, Q, C] when batch_first)

    def projection_pre_hook(self, module: nn.Module, args: tuple) -> None:
        if is_active(self):
            self.feature_shape = tuple(args[0].shape)  # [1, C_backbone, h, w]


def _decoder(model: nn.Module) -> nn.Module:
    decoder = getattr(getattr(model, "transformer", None), "decoder", None)
    if decoder is None or not hasattr(decoder, "layers"):
        raise CaptureError(f"{type(model).__name__} has no transformer.decoder.layers to read predictions from")
    return decoder


def capture(
    model: nn.Module,
    prepared: PreparedImage,
    class_names: tuple[str, ...] = COCO_CLASSES,
    model_name: str = "",
    autocast_dtype: torch.dtype | None = None,
) -> Analysis:
    """One forward pass of `model` on `prepared` ([1, 3, H, W]) with every attention map recorded.

    `model` must have `transformer.encoder/decoder` built of `nn.MultiheadAttention` layers, an
    `input_projection` module and a `heads(hs)` method (every model of the zoo has). With
    `autocast_dtype` (e.g. torch.bfloat16) the pass runs under autocast; the analysis stays float32.
    """
    roles = attention_modules(model)
    decoder = _decoder(model)
    rec = _Recorder(roles)
    device = next(model.parameters()).device
    with recording(rec) as handles:
        for m in (m for mods in roles.values() for m in mods):
            if hooked_module(m) is not m:
                handles.append(m.probe.register_forward_hook(rec.probe_hook))
            else:
                handles.append(m.register_forward_hook(rec.attention_hook, with_kwargs=True))
        handles += [layer.register_forward_hook(rec.decoder_layer_hook) for layer in decoder.layers]
        handles.append(model.input_projection.register_forward_pre_hook(rec.projection_pre_hook))
        x = prepared.tensor.to(device)
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None),
        ):
            t0 = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            forward_ms = (time.perf_counter() - t0) * 1000
            hs = torch.stack([decoder.norm(o) for o in rec.dec_out])  # [L, Q, 1, C]
            hs = hs[:, :, 0] if not roles["cross"][0].batch_first else hs[:, 0]  # [L, Q, C]
            logits, boxes = model.heads(hs)  # [L, Q, K+1], [L, Q, 4]

    n_enc, n_dec = len(roles["encoder"]), len(roles["cross"])
    if len(rec.enc) != n_enc or len(rec.cross) != n_dec or len(rec.dec_self) != len(roles["decoder_self"]):
        raise CaptureError("the forward pass did not call every attention module once")
    if rec.feature_shape is None:
        raise CaptureError("the forward pass did not call the model's input projection")

    def stack(d: dict, j: int) -> Tensor:
        return torch.stack([d[i][j] for i in range(len(d))]).cpu()

    g = prepared.geometry
    if tuple(rec.feature_shape[-2:]) != (g.feat_h, g.feat_w):
        raise CaptureError(f"feature map {rec.feature_shape[-2:]} does not match the geometry {(g.feat_h, g.feat_w)}")
    return Analysis(
        geometry=g,
        feature_shape=rec.feature_shape,
        nheads=roles["encoder"][0].num_heads,
        enc_q=stack(rec.enc, 0),
        enc_k=stack(rec.enc, 1),
        enc_lse=stack(rec.enc, 2),
        dec_self=torch.stack([rec.dec_self[i] for i in range(len(rec.dec_self))]).cpu()
        if rec.dec_self
        else torch.zeros(0),
        cross_q=stack(rec.cross, 0),
        cross_k=stack(rec.cross, 1),
        cross_lse=stack(rec.cross, 2),
        pred_logits=logits.float().cpu(),
        pred_boxes=boxes.float().cpu(),
        class_names=tuple(class_names),
        model_name=model_name,
        forward_ms=forward_ms,
        device=str(device),
    )
