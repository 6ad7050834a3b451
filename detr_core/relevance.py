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

This needs gradients, so it runs its own forward pass (hooks replace each attention's output with
an explicitly computed, equal one whose weights keep their gradient); the model is not edited and
nothing is written to its parameters' .grad. Call it on demand for one query, then cache it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .capture import _ACTIVE, CaptureError, attention_modules
from .errors import DETRError
from .image import PreparedImage

__all__ = ["relevance"]


class _ExplicitAttention:
    """Hooks that recompute each attention explicitly and keep the weights [nh, T_q, T_k]."""

    def __init__(self, roles: dict[str, list[nn.MultiheadAttention]]):
        self.role = {id(m): role for role, mods in roles.items() for m in mods}
        self.maps: list[tuple[str, Tensor]] = []  # in call order

    def input_hook(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
        if _ACTIVE.get() is self:
            return output.detach().requires_grad_(True)  # the graph starts at the transformer's input
        return None

    def attention_hook(self, module: nn.MultiheadAttention, args: tuple, *kwargs_and_output):
        if _ACTIVE.get() is not self:  # not ours (see capture._Recorder.attention_hook)
            return None
        kwargs = kwargs_and_output[0] if len(kwargs_and_output) == 2 else {}
        query = args[0] if len(args) > 0 else kwargs["query"]
        key = args[1] if len(args) > 1 else kwargs["key"]
        value = args[2] if len(args) > 2 else kwargs["value"]
        mask = kwargs.get("key_padding_mask", args[3] if len(args) > 3 else None)
        if module.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        E, nh = module.embed_dim, module.num_heads
        d = E // nh
        w, b = module.in_proj_weight, module.in_proj_bias
        q = F.linear(query, w[:E], b[:E])  # [T_q, B, E]
        k = F.linear(key, w[E : 2 * E], b[E : 2 * E])
        v = F.linear(value, w[2 * E :], b[2 * E :])
        T_q, B, _ = q.shape
        q = q.reshape(T_q, B * nh, d).transpose(0, 1) / math.sqrt(d)  # [B*nh, T_q, d]
        k = k.reshape(-1, B * nh, d).transpose(0, 1)
        v = v.reshape(-1, B * nh, d).transpose(0, 1)
        logits = q @ k.transpose(1, 2)  # [B*nh, T_q, T_k]
        if mask is not None:
            logits = logits.masked_fill(mask.repeat_interleave(nh, 0)[:, None, :].bool(), float("-inf"))
        attn = logits.softmax(-1)
        if not attn.requires_grad:  # e.g. the first decoder self-attention (queries only, no image)
            attn = attn.detach().requires_grad_(True)
        self.maps.append((self.role[id(module)], attn))
        out = (attn @ v).transpose(0, 1).reshape(T_q, B, E)
        out = module.out_proj(out)
        if module.batch_first:
            out = out.transpose(0, 1)
        return out, None


def _normalize_residual(r: Tensor) -> Tensor:
    eye = torch.eye(r.shape[0], dtype=r.dtype)
    r_hat = r - eye
    sums = r_hat.sum(-1, keepdim=True)
    r_hat = torch.where(sums > 0, r_hat / sums.clamp_min(1e-12), r_hat)
    return r_hat + eye


def relevance(model: nn.Module, prepared: PreparedImage, query: int, class_id: int | None = None) -> Tensor:
    """Relevance of every image location for `query`'s class score: [h, w], finite and non-negative.

    `class_id` defaults to the query's most likely class (excluding "no object").
    """
    roles = attention_modules(model)
    rec = _ExplicitAttention(roles)
    handles = [m.register_forward_hook(rec.attention_hook, with_kwargs=True) for mods in roles.values() for m in mods]
    handles.append(model.input_projection.register_forward_hook(rec.input_hook))
    device = next(model.parameters()).device
    token = _ACTIVE.set(rec)
    try:
        with torch.enable_grad():
            out = model(prepared.tensor.to(device))
            logits = out["pred_logits"][0]  # [Q, K+1]
            if not 0 <= query < logits.shape[0]:
                raise DETRError(f"query {query} does not exist: the model has {logits.shape[0]} queries")
            cls = int(logits[query, :-1].argmax()) if class_id is None else class_id
            grads = torch.autograd.grad(logits[query, cls], [a for _, a in rec.maps], allow_unused=True)
    finally:
        _ACTIVE.reset(token)
        for h in handles:
            h.remove()

    g = prepared.geometry
    n_img, n_q = g.tokens, logits.shape[0]
    r_ii = torch.eye(n_img, dtype=torch.float64)
    r_qq = torch.eye(n_q, dtype=torch.float64)
    r_qi = torch.zeros(n_q, n_img, dtype=torch.float64)
    for (role, attn), grad in zip(rec.maps, grads):
        if grad is None:
            grad = torch.zeros_like(attn)
        cam = (grad * attn).clamp_min(0).mean(0).detach().double().cpu()  # head mean: [T_q, T_k]
        if role == "encoder":
            r_ii = r_ii + cam @ r_ii
        elif role == "decoder_self":
            r_qq = r_qq + cam @ r_qq
            r_qi = r_qi + cam @ r_qi
        elif role == "cross":
            r_qi = r_qi + _normalize_residual(r_qq).T @ cam @ _normalize_residual(r_ii)
        else:  # pragma: no cover - attention_modules only returns the three roles
            raise CaptureError(f"unknown attention role {role}")
    return r_qi[query].float().view(g.feat_h, g.feat_w)
