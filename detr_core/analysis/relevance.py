"""Relevance maps per query (Chefer, Gur & Wolf, "Generic Attention-model Explainability for
Interpreting Bi-Modal and Encoder-Decoder Transformers", ICCV 2021).

Raw attention shows where one layer looked; relevance follows the gradient of a query's class
score through every attention layer. For each layer, the head-mean of (grad * attention) clipped
at zero, Ā, updates relevance matrices that start as identities (image-image R_ii, query-query
R_qq) and zeros (query-image R_qi):
    encoder self-attention:  R_ii += Ā R_ii
    decoder self-attention:  R_qq += Ā R_qq,  R_qi += Ā R_qi
    decoder cross-attention: R_qi += norm(R_qq)^T Ā norm(R_ii)
where norm(R) removes the identity, scales each row to sum 1 and adds the identity back. The
relevance of query q over the image is row q of R_qi.

Only that one row is needed, so R_ii (HW x HW, a product of one HW x HW matrix per encoder layer:
HW^3 work each, minutes for R50-DC5's 3,350 tokens) is never formed. Every cross-attention term
right-multiplies by the same norm(R_ii), so R_qi = U norm(R_ii) with U accumulated like R_qi
without that factor, and row q of it is u^T norm(R_ii) = (u / s)^T (R_ii - I) + u^T, where s holds
the row sums of R_ii - I. Both s = R_ii 1 - 1 and (u / s)^T R_ii are chains of matrix-vector
products through the encoder layers: HW^2 work per layer, the same numbers to float64 rounding.

This needs gradients, so it runs its own forward pass (hooks replace each attention's output with
an explicitly computed, equal one whose weights keep their gradient); the model is not edited and
nothing is written to its parameters' .grad. Call it on demand for one query, then cache it.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor, nn

from ..errors import DETRError
from ..io.image import PreparedImage
from ..models.transformer import in_projection
from .capture import CaptureError, attention_modules
from .recording import attention_inputs, is_active, recording

__all__ = ["relevance"]


class _ExplicitAttention:
    """Hooks that recompute each attention explicitly, with weights [nh, T_q, T_k] that keep their
    gradient, and turn each layer's (weights, gradient) into its Ā as soon as the backward pass
    reaches it, so no layer's gradient outlives its use (R50-DC5 at 800x1066: 360 MB per layer)."""

    def __init__(self, roles: dict[str, list[nn.MultiheadAttention]]):
        self.role_of = {id(m): role for role, mods in roles.items() for m in mods}
        self.roles: list[str] = []  # role of each attention call, in call order
        self.shapes: list[tuple[int, int]] = []  # its [T_q, T_k]
        self.pending: dict[int, Tensor] = {}  # call -> weights, until its gradient arrives
        self.leaves: dict[int, Tensor] = {}  # call -> weights that depend on no input (asked for explicitly)
        self.cams: dict[int, Tensor] = {}  # call -> Ā [T_q, T_k], float32 on the CPU
        self.source: Tensor | None = None  # the transformer's input, where the graph starts

    def input_hook(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
        if is_active(self):
            self.source = output.detach().requires_grad_(True)
            return self.source
        return None

    def cam(self, call: int, grad: Tensor, attn: Tensor) -> None:
        self.cams[call] = (grad * attn.detach()).clamp_min(0).mean(0).float().cpu()  # head mean: [T_q, T_k]

    def on_grad(self, call: int, grad: Tensor) -> None:
        self.cam(call, grad, self.pending.pop(call))

    def attention_hook(self, module: nn.MultiheadAttention, args: tuple, *kwargs_and_output):
        if not is_active(self):  # another thread's recording, or none
            return None
        call = attention_inputs(args, kwargs_and_output)
        query, key, value, mask = call.query, call.key, call.value, call.key_padding_mask
        if module.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        T_q, B, E = query.shape
        q, k, v = (t.flatten(0, 1) for t in in_projection(module, query, key, value))  # [B*nh, T, d]
        q = q / math.sqrt(q.shape[-1])
        logits = q @ k.transpose(1, 2)  # [B*nh, T_q, T_k]
        if mask is not None:
            logits = logits.masked_fill(mask.repeat_interleave(module.num_heads, 0)[:, None, :].bool(), float("-inf"))
        attn = logits.softmax(-1)
        call = len(self.roles)
        self.roles.append(self.role_of[id(module)])
        self.shapes.append((attn.shape[-2], attn.shape[-1]))
        if attn.requires_grad:
            self.pending[call] = attn
            attn.register_hook(functools.partial(self.on_grad, call))
        else:  # e.g. the first decoder self-attention (queries only, no image)
            attn = self.leaves[call] = attn.detach().requires_grad_(True)
        out = (attn @ v).transpose(0, 1).reshape(T_q, B, E)
        out = module.out_proj(out)
        if module.batch_first:
            out = out.transpose(0, 1)
        return out, None


def normalize_residual(r: Tensor) -> Tensor:
    eye = torch.eye(r.shape[0], dtype=r.dtype)
    r_hat = r - eye
    sums = r_hat.sum(-1, keepdim=True)
    r_hat = torch.where(sums > 0, r_hat / sums.clamp_min(1e-12), r_hat)
    return r_hat + eye


def propagate(cams: list[tuple[str, Tensor]], query: int) -> Tensor:
    """Row `query` of R_qi from the layers' relevance-weighted attention Ā ([T_q, T_k], >= 0, in
    call order: every encoder layer, then the decoder's self- and cross-attention): [HW], float64.
    Each Ā is used in float64 (converted one at a time: the list may hold them in float32)."""
    cams = [(role, c if role == "encoder" else c.double()) for role, c in cams]  # decoder ones are small
    encoder = [c for role, c in cams if role == "encoder"]  # Ā_1 .. Ā_L: R_ii = (I + Ā_L) ... (I + Ā_1)
    n_img = encoder[0].shape[0]
    n_q = next(c.shape[0] for role, c in cams if role != "encoder")
    r_qq = torch.eye(n_q, dtype=torch.float64)
    u = torch.zeros(n_q, n_img, dtype=torch.float64)  # R_qi = u @ norm(R_ii)
    for role, cam in cams:
        if role == "decoder_self":
            r_qq = r_qq + cam @ r_qq
            u = u + cam @ u
        elif role == "cross":
            u = u + normalize_residual(r_qq).T @ cam
        elif role != "encoder":  # pragma: no cover - attention_modules only returns the three roles
            raise CaptureError(f"unknown attention role {role}")
    ones = torch.ones(n_img, dtype=torch.float64)
    row_sums = ones
    for cam in encoder:  # R_ii 1
        row_sums = row_sums + cam.double() @ row_sums
    row_sums = row_sums - 1  # rows of R_ii - I
    row_sums = torch.where(row_sums > 0, row_sums, ones)  # an all-zero row stays zero
    w = u[query] / row_sums
    w_r = w
    for cam in reversed(encoder):  # w^T R_ii
        w_r = w_r + w_r @ cam.double()
    return w_r - w + u[query]


def relevance(model: nn.Module, prepared: PreparedImage, query: int, class_id: int | None = None) -> Tensor:
    """Relevance of every image location for `query`'s class score: [h, w], finite and non-negative.

    `class_id` defaults to the query's most likely class (excluding "no object").
    """
    roles = attention_modules(model)
    rec = _ExplicitAttention(roles)
    device = next(model.parameters()).device
    with recording(rec) as handles:
        handles += [
            m.register_forward_hook(rec.attention_hook, with_kwargs=True) for mods in roles.values() for m in mods
        ]
        handles.append(model.input_projection.register_forward_hook(rec.input_hook))
        with torch.enable_grad():
            out = model(prepared.tensor.to(device))
            logits = out["pred_logits"][0]  # [Q, K+1]
            if not 0 <= query < logits.shape[0]:
                raise DETRError(f"query {query} does not exist: the model has {logits.shape[0]} queries")
            cls = int(logits[query, :-1].argmax()) if class_id is None else class_id
            leaves = list(rec.leaves.items())
            inputs = [rec.source] + [attn for _, attn in leaves]
            grads = torch.autograd.grad(logits[query, cls], inputs, allow_unused=True)  # fires rec.on_grad
            for (call, attn), grad in zip(leaves, grads[1:]):
                if grad is not None:
                    rec.cam(call, grad, attn)

    cams = [(role, rec.cams.get(call, torch.zeros(rec.shapes[call]))) for call, role in enumerate(rec.roles)]
    g = prepared.geometry
    return propagate(cams, query).float().view(g.feat_h, g.feat_w)
