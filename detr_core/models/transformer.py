"""DETR's transformer: a post-norm encoder-decoder where position encodings are added to the
queries and keys of every attention (never to the values). With `normalize_before` (the official
`pre_norm` option, e.g. Table Transformer) each sublayer normalizes its input instead, and the
encoder ends with a norm (`encoder.norm`), as in the official code.

Token layout follows the official code: sequence first, [HW, B, C] for the image tokens (the
feature map flattened row by row, token = row * w + col) and [Q, B, C] for the object queries.
Attention is a subclass of `nn.MultiheadAttention`, so the parameter names are those of the official
checkpoints (`self_attn`, `multihead_attn`, `in_proj_weight`, ...). It computes the same function with
each projection done once and shows its projected queries and keys, and on the CPU the log-sum-exp
of every attention row that the fused kernel computes anyway, to an `AttentionProbe` submodule: the
capture layer hooks the probe and records every attention map at no extra cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AttentionProbe",
    "FLASH_ATTENTION_CPU",
    "MultiheadAttention",
    "in_projection",
    "Transformer",
    "TransformerEncoderLayer",
    "TransformerDecoderLayer",
]

# The CPU flash-attention kernel behind F.scaled_dot_product_attention; it also returns the row
# log-sum-exp of the scaled logits. Private in torch, so looked up once and optional.
FLASH_ATTENTION_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


class AttentionProbe(nn.Module):
    """Identity point that receives an attention's internals, for forward hooks (no parameters).

    Called once per attention forward with q, k [B, nh, T, d] (projected, not yet scaled), lse
    [B, nh, T_q] (log-sum-exp of each row of q k^T / sqrt(d), or None where the kernel used does not
    give it) and key_padding_mask [B, T_k] or None. Returns nothing; costs nothing unhooked.
    """

    def forward(self, q: Tensor, k: Tensor, lse: Tensor | None, key_padding_mask: Tensor | None) -> None:
        return None


def in_projection(mha: nn.MultiheadAttention, query: Tensor, key: Tensor, value: Tensor | None = None) -> tuple:
    """`mha`'s packed in_proj applied to sequence-first query [T_q, B, E], key [T_k, B, E] (and
    value), split into heads: q, k (, v) [B, nh, T, d], not scaled. Self-attention inputs (query is
    key) take one matmul for q and k."""
    E, nh = mha.embed_dim, mha.num_heads
    w, b = mha.in_proj_weight, mha.in_proj_bias

    def rows(i: int, j: int) -> tuple[Tensor, Tensor | None]:  # q: 0-1, k: 1-2, v: 2-3 (in units of E)
        return w[i * E : j * E], None if b is None else b[i * E : j * E]

    if query is key:
        out = list(F.linear(query, *rows(0, 2)).chunk(2, dim=-1))  # [T_q, B, E] each
    else:
        out = [F.linear(query, *rows(0, 1)), F.linear(key, *rows(1, 2))]
    if value is not None:
        out.append(F.linear(value, *rows(2, 3)))  # [T_k, B, E]
    return tuple(t.view(t.shape[0], t.shape[1], nh, E // nh).permute(1, 2, 0, 3) for t in out)


class MultiheadAttention(nn.MultiheadAttention):
    """`nn.MultiheadAttention` (same parameters, same outputs) with an `AttentionProbe`.

    The probed path covers what DETR uses: sequence-first inputs, packed in_proj weights, an
    optional boolean key padding mask, need_weights=False. Anything else is the parent's forward,
    unprobed (a capture then says that not every attention module was called once).
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__(embed_dim, num_heads, dropout=dropout)
        self.probe = AttentionProbe()

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """query [T_q, B, E], key and value [T_k, B, E] -> ([T_q, B, E], None)."""
        float_mask = key_padding_mask is not None and key_padding_mask.dtype != torch.bool
        if need_weights or attn_mask is not None or is_causal or query.dim() != 3 or float_mask:
            return super().forward(
                query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
            )
        T_q, B, E = query.shape
        q, k, v = in_projection(self, query, key, value)  # [B, nh, T, d]
        mask = None
        if key_padding_mask is not None:  # True = padding -> -inf logits: [B, 1, 1, T_k]
            mask = torch.zeros(key_padding_mask.shape, dtype=q.dtype, device=q.device)
            mask = mask.masked_fill(key_padding_mask.bool(), float("-inf"))[:, None, None, :]
        dropout = self.dropout if self.training else 0.0
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        lse = None
        if (
            FLASH_ATTENTION_CPU is not None
            and q.device.type == "cpu"
            and mask is None
            and dropout == 0.0
            and not needs_grad
        ):
            out, lse = FLASH_ATTENTION_CPU(q, k, v)  # [B, nh, T_q, d], [B, nh, T_q]
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        self.probe(q, k, lse, key_padding_mask)
        out = out.permute(2, 0, 1, 3).reshape(T_q, B, E)  # [B, nh, T_q, d] -> [T_q, B, E]
        return self.out_proj(out), None


def _with_pos(x: Tensor, pos: Tensor | None) -> Tensor:
    return x if pos is None else x + pos


class TransformerEncoderLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, normalize_before: bool = False):
        super().__init__()
        self.normalize_before = normalize_before  # pre-norm (the official normalize_before) or post-norm
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src: Tensor, pos: Tensor | None, key_padding_mask: Tensor | None = None) -> Tensor:
        """src, pos [HW, B, C]; key_padding_mask [B, HW] -> [HW, B, C]."""
        if self.normalize_before:  # the official forward_pre
            src2 = self.norm1(src)
            q = k = _with_pos(src2, pos)
            src = src + self.dropout1(
                self.self_attn(q, k, src2, key_padding_mask=key_padding_mask, need_weights=False)[0]
            )
            src2 = self.norm2(src)
            return src + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(src2)))))
        q = k = _with_pos(src, pos)
        attended = self.self_attn(q, k, src, key_padding_mask=key_padding_mask, need_weights=False)[0]
        src = self.norm1(src + self.dropout1(attended))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout2(ffn))


class TransformerDecoderLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, normalize_before: bool = False):
        super().__init__()
        self.normalize_before = normalize_before
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        pos: Tensor | None,
        query_pos: Tensor | None,
        memory_key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """tgt, query_pos [Q, B, C]; memory, pos [HW, B, C] -> [Q, B, C]."""
        if self.normalize_before:  # the official forward_pre
            tgt2 = self.norm1(tgt)
            q = k = _with_pos(tgt2, query_pos)
            tgt = tgt + self.dropout1(self.self_attn(q, k, tgt2, need_weights=False)[0])
            tgt2 = self.norm2(tgt)
            attended = self.multihead_attn(
                _with_pos(tgt2, query_pos),
                _with_pos(memory, pos),
                memory,
                key_padding_mask=memory_key_padding_mask,
                need_weights=False,
            )[0]
            tgt = tgt + self.dropout2(attended)
            tgt2 = self.norm3(tgt)
            return tgt + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(tgt2)))))
        q = k = _with_pos(tgt, query_pos)
        attended = self.self_attn(q, k, tgt, need_weights=False)[0]  # queries look at each other
        tgt = self.norm1(tgt + self.dropout1(attended))
        attended = self.multihead_attn(  # queries look at the image
            _with_pos(tgt, query_pos),
            _with_pos(memory, pos),
            memory,
            key_padding_mask=memory_key_padding_mask,
            need_weights=False,
        )[0]
        tgt = self.norm2(tgt + self.dropout2(attended))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(ffn))


class TransformerEncoder(nn.Module):
    def __init__(self, layers: list[TransformerEncoderLayer], norm: nn.LayerNorm | None = None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm  # pre-norm only (the official encoder_norm)

    def forward(self, src: Tensor, pos: Tensor | None, key_padding_mask: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            src = layer(src, pos, key_padding_mask)
        return src if self.norm is None else self.norm(src)  # post-norm: no final norm in the encoder


class TransformerDecoder(nn.Module):
    def __init__(self, layers: list[TransformerDecoderLayer], d_model: int):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        pos: Tensor | None,
        query_pos: Tensor | None,
        memory_key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Returns every layer's output after the final norm: [L, Q, B, C]."""
        outputs = []
        for layer in self.layers:
            tgt = layer(tgt, memory, pos, query_pos, memory_key_padding_mask)
            outputs.append(self.norm(tgt))
        return torch.stack(outputs)


class Transformer(nn.Module):
    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        normalize_before: bool = False,
    ):
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead
        pre = normalize_before
        self.encoder = TransformerEncoder(
            [TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, pre) for _ in range(num_encoder_layers)],
            nn.LayerNorm(d_model) if pre else None,
        )
        self.decoder = TransformerDecoder(
            [TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, pre) for _ in range(num_decoder_layers)],
            d_model,
        )
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(
        self, src: Tensor, query_embed: Tensor, pos: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """src, pos [B, C, h, w]; query_embed [Q, C]; mask [B, h, w] (True = padding).

        Returns hs [L, B, Q, C] (each decoder layer, after the decoder norm) and memory [B, C, h, w].
        """
        B, C, h, w = src.shape
        src = src.flatten(2).permute(2, 0, 1)  # [B, C, h, w] -> [HW, B, C]
        pos = pos.flatten(2).permute(2, 0, 1)  # [HW, B, C]
        query_pos = query_embed.unsqueeze(1).expand(-1, B, -1)  # [Q, B, C]
        key_padding_mask = None if mask is None else mask.flatten(1)  # [B, HW]
        tgt = torch.zeros_like(query_pos)  # the decoder starts from zeros
        memory = self.encoder(src, pos, key_padding_mask)  # [HW, B, C]
        hs = self.decoder(tgt, memory, pos, query_pos, key_padding_mask)  # [L, Q, B, C]
        return hs.transpose(1, 2), memory.permute(1, 2, 0).reshape(B, C, h, w)
