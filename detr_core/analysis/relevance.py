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

What row q needs (and why R_ii, HW x HW, is never formed: a product of one HW x HW matrix per
encoder layer, HW^3 work each, minutes for R50-DC5's 3,350 cells):
1. The encoder ends before the decoder starts, so R_ii is fixed while R_qi accumulates. Every
   cross-attention term ends in the same factor norm(R_ii), and the decoder self-attention update
   left-multiplies R_qi, which keeps that factor on the right; by induction over the decoder layers
   R_qi = U norm(R_ii), with U [Q, HW] accumulated by the same rules without the factor (U += Ā U;
   U += norm(R_qq)^T Ā). The decoder's matrices are Q x Q and Q x HW (Q = 100): negligible work.
2. R_ii - I >= 0 entrywise (products of I + Ā, Ā >= 0), so its row sums s = R_ii 1 - 1 are >= 0 and
   a zero sum means a zero row; norm(R_ii) = D^-1 (R_ii - I) + I with D = diag(s) (1 where s = 0:
   the row stays zero). Row q: u^T norm(R_ii) = w^T R_ii - w^T + u^T with u = U[q], w = D^-1 u.
3. R_ii = (I + Ā_L) ... (I + Ā_1): s is the chain Ā_1 first applied to 1, w^T R_ii the chain Ā_L
   first applied to w^T: 2 HW^2 work per layer. The second chain needs w, so s, so every encoder Ā,
   first: each Ā_l is kept (float32, HW^2 x 4 bytes: 45 MB at 3,350 cells).
4. Nothing smaller suffices in general: s_j involves every entry of every Ā_l (its row j of Ā_L,
   then the rows those columns reach), and u is dense over the image (the cross-attention Ā rows
   of every query that q's self-attention mixes in). So each encoder layer's whole Ā, hence its
   whole dL/dA = dL/dout v^T, is needed: a full backward pass through the transformer, but only
   Ā where a layer's inputs need no gradient (the first encoder layer: its q, k and v gradients
   would only reach the features, which the map does not ask for).

This needs gradients, so it runs its own forward pass: the backbone without autograd (a folded
model's weights may require gradients: its saved activations would double the pass's memory), then
hooks replace each attention's output with an equal one from `RelevanceAttention`, an autograd
function of the scaled queries, keys and values whose forward is the fused kernel (keeping only q,
k, v, the output and the row log-sum-exp, never the [nh, T_q, T_k] weights) and whose backward
rebuilds the weights block by block (analysis/kernel.py) into buffers every layer reuses and, with
the gradients of q, k and v, hands that layer's Ā to the recorder. At most BLOCK_ROWS rows of one
layer's weights exist at a time (R50-DC5 at 800x1066: 55 MB per block instead of 360 MB per layer
kept for the whole backward pass). The model is not edited and nothing is written to its
parameters' .grad. Call it on demand for one query, then cache it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DETRError
from ..io.image import PreparedImage
from ..models.transformer import FLASH_ATTENTION_CPU, in_projection
from . import kernel
from .capture import CaptureError, attention_modules
from .recording import attention_inputs, is_active, recording

__all__ = ["RelevanceAttention", "Workspace", "relevance"]


class Workspace:
    """Three flat buffers for the [nh, n, T_k] blocks of a backward pass (A, A * dL/dA, dL/dS), reused by
    every layer's backward: no fresh 55 MB allocation (and its page faults) per block and layer."""

    def __init__(self) -> None:
        self.flat: Tensor | None = None

    def buffers(self, numel: int, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        flat = self.flat
        if flat is None or flat.numel() < 3 * numel or flat.dtype != like.dtype or flat.device != like.device:
            flat = self.flat = torch.empty(3 * numel, dtype=like.dtype, device=like.device)
        return flat[:numel], flat[numel : 2 * numel], flat[2 * numel : 3 * numel]


class RelevanceAttention(torch.autograd.Function):
    """softmax(q k^T) v of one image, q already scaled: q [nh, T_q, d], k and v [nh, T_k, d], an
    optional key_padding_mask [1, T_k] (True = ignored key) -> [nh, T_q, d].

    The backward pass calls `sink(Ā)` with Ā = mean over heads of max(A * dL/dA, 0) [T_q, T_k], where
    A = exp(q k^T - lse) is rebuilt block by block and dL/dA = dL/dout v^T, and returns the gradients
    of q, k and v by the softmax rule dL/dS = A * (dL/dA - rowsum(A * dL/dA)), that row sum being
    dL/dout . out.

    `workspace`: a `Workspace` whose buffers the blocks reuse (None: a new one). `cam_only`: only Ā
    is wanted (v was made a leaf just so the backward pass reaches this layer); no gradient of q, k
    or v is computed, None is returned for them."""

    @staticmethod
    def forward(
        ctx,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        key_padding_mask: Tensor | None,
        sink: Callable,
        workspace: Workspace | None,
        cam_only: bool,
    ) -> Tensor:
        if FLASH_ATTENTION_CPU is not None and q.device.type == "cpu" and key_padding_mask is None:
            out, lse = (t[0] for t in FLASH_ATTENTION_CPU(q[None], k[None], v[None], scale=1.0)[:2])
        else:
            lse = kernel.row_logsumexp(q, k, key_padding_mask)  # [nh, T_q]
            mask = None
            if key_padding_mask is not None:  # -inf logits for ignored keys: [1, 1, 1, T_k]
                mask = torch.zeros(key_padding_mask.shape, dtype=q.dtype, device=q.device)
                mask = mask.masked_fill(key_padding_mask.bool(), float("-inf"))[:, None, None, :]
            out = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask, scale=1.0)[0]
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.key_padding_mask, ctx.sink = key_padding_mask, sink
        ctx.workspace, ctx.cam_only = workspace or Workspace(), cam_only
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple:
        q, k, v, out, lse = ctx.saved_tensors
        need_q, need_k, need_v = (n and not ctx.cam_only for n in ctx.needs_input_grad[:3])
        grad_out = grad_out.contiguous()  # [nh, T_q, d]
        nh, t_q, t_k = q.shape[0], q.shape[1], k.shape[1]
        cam = torch.empty(t_q, t_k, dtype=q.dtype, device=q.device)  # Ā [T_q, T_k]
        dq = torch.empty_like(q) if need_q else None
        row_dot = (grad_out * out).sum(-1) if need_q or need_k else None  # rowsum(A * dL/dA) = dL/dout . out
        # dk and dv accumulate transposed, [nh, d, T_k], so the big block is the right-hand operand as it
        # is, never a transposed copy of it
        dk_t = k.new_zeros(nh, k.shape[2], t_k) if need_k else None
        dv_t = v.new_zeros(nh, v.shape[2], t_k) if need_v else None
        v_t = v.transpose(1, 2)  # [nh, d, T_k]
        buf_a, buf_ga, buf_ds = ctx.workspace.buffers(nh * min(t_q, kernel.BLOCK_ROWS) * t_k, q)
        for start, a in kernel.head_blocks(q, k, lse, ctx.key_padding_mask, buf_a):  # a: A's rows [nh, n, T_k]
            stop = start + a.shape[1]
            g = grad_out[:, start:stop]  # [nh, n, d]
            if need_v:
                dv_t.baddbmm_(g.transpose(1, 2), a)  # (A^T dL/dout)^T
            ga = torch.bmm(g, v_t, out=buf_ga[: a.numel()].view_as(a)).mul_(a)  # A * dL/dA: [nh, n, T_k]
            if need_q or need_k:
                ds = torch.addcmul(ga, a, row_dot[:, start:stop, None], value=-1, out=buf_ds[: a.numel()].view_as(a))
                if need_q:
                    torch.bmm(ds, k, out=dq[:, start:stop])  # dL/dS k: [nh, n, d]
                if need_k:
                    dk_t.baddbmm_(q[:, start:stop].transpose(1, 2), ds)  # (dL/dS^T q)^T
            torch.mean(ga.clamp_min_(0), 0, out=cam[start:stop])  # ga is not needed after dL/dS
        dk = None if dk_t is None else dk_t.transpose(1, 2)
        dv = None if dv_t is None else dv_t.transpose(1, 2)
        ctx.sink(cam)
        return dq, dk, dv, None, None, None, None


class _ExplicitGradAttention:
    """Hooks that replace each attention's output with `RelevanceAttention`'s (the same numbers) and
    collect each layer's Ā as the backward pass reaches it."""

    def __init__(self, roles: dict[str, list[nn.MultiheadAttention]]):
        self.role_of = {id(m): role for role, mods in roles.items() for m in mods}
        self.roles: list[str] = []  # role of each attention call, in call order
        self.shapes: list[tuple[int, int]] = []  # its [T_q, T_k]
        self.leaves: list[Tensor] = []  # values made leaves where no input needs a gradient (asked for explicitly)
        self.cams: dict[int, Tensor] = {}  # call -> Ā [T_q, T_k], float32 on the CPU
        self.workspace = Workspace()  # the block buffers every layer's backward reuses

    def input_hook(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
        """The backbone ran without autograd (see `relevance`); from the transformer's input on it is
        on. The input itself needs no gradient: the graph starts at the first encoder layer's leaf."""
        if is_active(self):
            torch.set_grad_enabled(True)  # the caller's no_grad block restores its mode on exit
            return output.detach()
        return None

    def store(self, call: int, cam: Tensor) -> None:
        self.cams[call] = cam.float().cpu()

    def attention_hook(self, module: nn.MultiheadAttention, args: tuple, *kwargs_and_output):
        if not is_active(self):  # another thread's recording, or none
            return None
        call = attention_inputs(args, kwargs_and_output)
        query, key, value, mask = call.query, call.key, call.value, call.key_padding_mask
        if module.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        T_q, B, E = query.shape
        if B != 1:
            raise DETRError(f"relevance runs on one image at a time, not a batch of {B}")
        q, k, v = (t[0] for t in in_projection(module, query, key, value))  # [nh, T, d]
        q = q / math.sqrt(q.shape[-1])
        # No input needs a gradient in the first encoder layer (its input is the detached features) and
        # the first decoder self-attention (queries only, no image): their Ā needs dL/dout all the same,
        # so v becomes a leaf that reaches them in the backward pass, which computes only Ā there (the
        # test is on the inputs, not on q, k and v: weights that require gradients change nothing)
        cam_only = not (query.requires_grad or key.requires_grad or value.requires_grad)
        if cam_only:
            v = v.detach().requires_grad_(True)
            self.leaves.append(v)
        index = len(self.roles)
        self.roles.append(self.role_of[id(module)])
        self.shapes.append((q.shape[1], k.shape[1]))
        mask = None if mask is None else mask.bool()
        sink = functools.partial(self.store, index)
        out = RelevanceAttention.apply(q, k, v, mask, sink, self.workspace, cam_only)  # [nh, T_q, d]
        out = module.out_proj(out.transpose(0, 1).reshape(T_q, B, E))
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

    The decoder's Ā ([Q, Q] and [Q, HW], small) are used in float64. Each encoder Ā [HW, HW] is used
    in its own dtype (float32 from `relevance`: no float64 copy of 45 MB per layer and chain at
    R50-DC5's 3,350 cells), multiplied by float64 vectors rounded to that dtype, the products
    accumulated in float64; float64 Ā (the tests) give float64 throughout."""
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
        row_sums = row_sums + (cam @ row_sums.to(cam.dtype)).double()
    row_sums = row_sums - 1  # rows of R_ii - I
    row_sums = torch.where(row_sums > 0, row_sums, ones)  # an all-zero row stays zero
    w = u[query] / row_sums
    w_r = w
    for cam in reversed(encoder):  # w^T R_ii
        w_r = w_r + (w_r.to(cam.dtype) @ cam).double()
    return w_r - w + u[query]


def relevance(model: nn.Module, prepared: PreparedImage, query: int, class_id: int | None = None) -> Tensor:
    """Relevance of every image location for `query`'s class score: [h, w], finite and non-negative.

    `class_id` defaults to the query's most likely class (excluding "no object").
    """
    roles = attention_modules(model)
    rec = _ExplicitGradAttention(roles)
    device = next(model.parameters()).device
    with recording(rec) as handles:
        handles += [
            m.register_forward_hook(rec.attention_hook, with_kwargs=True) for mods in roles.values() for m in mods
        ]
        handles.append(model.input_projection.register_forward_hook(rec.input_hook))
        with torch.enable_grad():
            # No graph for the backbone (the folded convolutions' weights may require gradients, and
            # their saved activations were most of this pass's memory): input_hook turns autograd on
            # for the transformer and the no_grad block restores it on exit
            with torch.no_grad():
                out = model(prepared.tensor.to(device))
            logits = out["pred_logits"][0]  # [Q, K+1]
            if not 0 <= query < logits.shape[0]:
                raise DETRError(f"query {query} does not exist: the model has {logits.shape[0]} queries")
            cls = int(logits[query, :-1].argmax()) if class_id is None else class_id
            torch.autograd.grad(logits[query, cls], rec.leaves, allow_unused=True)  # fills rec.cams

    cams = [(role, rec.cams.get(call, torch.zeros(rec.shapes[call]))) for call, role in enumerate(rec.roles)]
    g = prepared.geometry
    return propagate(cams, query).float().view(g.feat_h, g.feat_w)
