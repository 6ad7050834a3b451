"""The capture layer: every attention map of one pass, exact, thread-safe, hook-clean, bounded."""

from __future__ import annotations

import copy
import math
import pickle
import threading

import pytest
import torch
from torch import nn

from detr_core.analysis.capture import Analysis, CaptureError, attention_modules, capture
from detr_core.io.image import Geometry, PreparedImage, preprocess
from detr_core.models.config import DETRConfig, SmallBackboneConfig
from detr_core.models.detr import build_detr
from detr_core.models.zoo import MODELS
from detr_core.training.synthetic import make_scene

TINY = DETRConfig(
    backbone="small", small_backbone=SmallBackboneConfig(channels=(32,), strides=(1,)), hidden_dim=64, nheads=4,
    enc_layers=2, dec_layers=2, dim_feedforward=128, num_queries=10, num_classes=5,
)  # fmt: skip


def _hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(getattr(m, "_forward_hooks_with_kwargs", {}))
        for m in model.modules()
    )


def _full(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """Every stored map whole: [L, nh, T_q, T_k]."""
    return torch.exp(q @ k.transpose(-1, -2) - lse[..., None])


@pytest.fixture(scope="module")
def tiny_reference(reference_dir):
    """The official tiny configuration with the reference weights; its backbone passes the reference
    features through unchanged, so the captured pass is exactly the reference's."""
    ref = torch.load(reference_dir / "detr_tiny_reference.pt", weights_only=True)
    model = build_detr(TINY).eval()
    result = model.load_state_dict(ref["state_dict"], strict=False)
    assert not result.unexpected_keys and all(k.startswith("backbone.") for k in result.missing_keys)
    model.backbone[0].body = nn.Identity()
    _, _, h, w = ref["backbone_features"].shape
    analysis = capture(model, PreparedImage(ref["backbone_features"], Geometry(h, w, h, w, h, w, 1)))
    return ref, model, analysis


def test_head_means_match_the_reference(tiny_reference):
    ref, _, a = tiny_reference
    torch.testing.assert_close(_full(a.enc_q, a.enc_k, a.enc_lse).mean(1), ref["encoder_self_attention"][:, 0],
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(_full(a.cross_q, a.cross_k, a.cross_lse).mean(1), ref["decoder_cross_attention"][:, 0],
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(a.dec_self.mean(1), ref["decoder_self_attention"][:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(a.pred_logits, ref["pred_logits_per_layer"][:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(a.pred_boxes, ref["pred_boxes_per_layer"][:, 0], atol=1e-5, rtol=0)
    assert a.feature_shape == (1, 32, 6, 9)


def test_per_head_weights_are_softmax_of_scaled_dot_products(tiny_reference):
    """Recompute each head from the layer's input and in_proj weights, independently of the capture."""
    ref, model, a = tiny_reference
    nh, d = 4, 16
    memory = ref["memory"].flatten(2).permute(2, 0, 1)[:, 0]  # [HW, C]: the encoder's output
    pos = ref["pos_embedding"].flatten(2).permute(2, 0, 1)[:, 0]  # [HW, C]
    hs = ref["decoder_outputs"]  # only used for shapes
    attn = model.transformer.decoder.layers[0].multihead_attn
    # The first decoder layer's cross-attention: its query is norm1(self-attention(zeros + query_pos)), which
    # we rebuild with the module itself; the key is memory + pos.
    layer0 = model.transformer.decoder.layers[0]
    query_pos = model.query_embed.weight  # [Q, C]
    with torch.no_grad():
        tgt = torch.zeros_like(query_pos)
        sa = layer0.self_attn(query_pos[:, None], query_pos[:, None], tgt[:, None], need_weights=False)[0][:, 0]
        tgt = layer0.norm1(tgt + sa)
        w, b = attn.in_proj_weight, attn.in_proj_bias
        q = ((tgt + query_pos) @ w[:64].T + b[:64]).view(-1, nh, d).transpose(0, 1)  # [nh, Q, d]
        k = ((memory + pos) @ w[64:128].T + b[64:128]).view(-1, nh, d).transpose(0, 1)  # [nh, HW, d]
        expected = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), dim=-1)  # [nh, Q, HW]
    got = _full(a.cross_q, a.cross_k, a.cross_lse)[0]
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert got.shape == (nh, hs.shape[2], memory.shape[0])
    torch.testing.assert_close(got.sum(-1), torch.ones(nh, hs.shape[2]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list(MODELS))
def test_one_pass_captures_every_layer(name, zoo_model):
    model = zoo_model(name)
    cfg = MODELS[name].config
    size = 96 if name == "detr_shapes" else 160
    prepared = preprocess(make_scene(1, size)[0], model.stride, size, 400)
    calls = []
    handle = model.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        a = capture(model, prepared, MODELS[name].class_names, name)
    finally:
        handle.remove()
    g = prepared.geometry
    hw, nh, q = g.tokens, cfg.nheads, cfg.num_queries
    d = cfg.hidden_dim // nh
    assert len(calls) == 1, "the capture must run exactly one forward pass"
    assert a.feature_shape[-2:] == (g.feat_h, g.feat_w)
    assert a.enc_q.shape == a.enc_k.shape == (cfg.enc_layers, nh, hw, d)
    assert a.cross_q.shape == (cfg.dec_layers, nh, q, d) and a.cross_k.shape == (cfg.dec_layers, nh, hw, d)
    assert a.dec_self.shape == (cfg.dec_layers, nh, q, q)
    assert a.pred_logits.shape == (cfg.dec_layers, q, cfg.num_classes + 1)
    with torch.inference_mode():
        out = model(prepared.tensor)
    torch.testing.assert_close(a.pred_logits[-1], out["pred_logits"][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(a.pred_boxes[-1], out["pred_boxes"][0], atol=1e-6, rtol=0)
    assert _hook_count(model) == 0


def test_hooks_removed_after_an_exception(zoo_model):
    model = zoo_model("detr_shapes")
    prepared = preprocess(make_scene(2, 64)[0], model.stride, 64, 64)
    with torch.inference_mode():
        before = model(prepared.tensor)["pred_logits"]
    bad = PreparedImage(torch.zeros(1, 5, 64, 64), prepared.geometry)  # 5 channels: the first conv raises
    with pytest.raises(RuntimeError):
        capture(model, bad)
    assert _hook_count(model) == 0
    with torch.inference_mode():
        after = model(prepared.tensor)["pred_logits"]
    assert torch.equal(before, after)


def test_unrecognised_model_is_a_clear_error():
    class NoAttention(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(CaptureError, match="no encoder self-attention"):
        attention_modules(NoAttention())


def test_eight_threads_get_their_own_exact_results(zoo_model):
    model = zoo_model("detr_shapes")
    images = [preprocess(make_scene(100 + i, 96)[0], model.stride, 96, 96) for i in range(8)]
    serial = [capture(model, p) for p in images]
    results: list[Analysis | None] = [None] * 8
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(i: int) -> None:
        try:
            barrier.wait()
            for _ in range(3):  # overlap many passes
                results[i] = capture(model, images[i])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got, want in zip(results, serial):
        for field in ("enc_q", "enc_k", "enc_lse", "dec_self", "cross_q", "cross_k", "cross_lse", "pred_logits"):
            assert torch.equal(getattr(got, field), getattr(want, field)), field
    assert not torch.equal(serial[0].pred_logits, serial[1].pred_logits)  # the images really differ
    assert _hook_count(model) == 0


@pytest.mark.slow
def test_analysis_of_800x1333_fits_in_48_mb(zoo_model):
    model = zoo_model("detr_resnet50")
    prepared = PreparedImage(torch.randn(1, 3, 800, 1333), Geometry(800, 1333, 800, 1333, 25, 42, 32))
    a = capture(model, prepared)
    assert a.enc_q.shape[2] == 25 * 42
    assert a.nbytes() <= 48e6, a.nbytes()
    assert len(pickle.dumps(a)) <= 48e6  # also serialised (e.g. saved to disk), nothing hidden in it grows


def _stock_attention_copy(model: nn.Module) -> nn.Module:
    """The same model with every project MultiheadAttention swapped for a plain nn.MultiheadAttention
    holding the same weights (no probe: the capture then hooks the module and recomputes q and k)."""
    from detr_core.models.transformer import MultiheadAttention

    clone = copy.deepcopy(model)
    for parent in list(clone.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, MultiheadAttention):
                stock = nn.MultiheadAttention(child.embed_dim, child.num_heads, dropout=child.dropout)
                stock.load_state_dict(child.state_dict())
                setattr(parent, name, stock.train(child.training))
    return clone


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("grad", [False, True])
def test_probed_attention_computes_what_nn_multiheadattention_computes(masked, grad):
    from detr_core.models.transformer import MultiheadAttention

    torch.manual_seed(0)
    ours = MultiheadAttention(64, 4).eval()
    stock = nn.MultiheadAttention(64, 4).eval()
    stock.load_state_dict(ours.state_dict())
    assert list(ours.state_dict()) == list(stock.state_dict())  # the official parameter names
    x, mem = torch.randn(13, 2, 64), torch.randn(21, 2, 64)
    mask = torch.zeros(2, 21, dtype=torch.bool)
    if masked:
        mask[1, 15:] = True
    with torch.set_grad_enabled(grad):
        for q, k, v in ((x, x, mem[:13]), (x, mem, mem)):  # self-attention (query is key), cross-attention
            m = mask[:, : k.shape[0]] if masked else None
            expected = stock(q, k, v, key_padding_mask=m, need_weights=False)[0]
            torch.testing.assert_close(ours(q, k, v, key_padding_mask=m, need_weights=False)[0], expected,
                                       atol=1e-6, rtol=0)  # fmt: skip
            got, weights = ours(q, k, v, key_padding_mask=m)  # need_weights: the parent's path, unprobed
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
            assert weights.shape == (2, q.shape[0], k.shape[0])


def test_probed_and_recomputed_captures_agree(zoo_model):
    """The probe path (q, k and lse handed over by the attention) records what hooking a plain
    nn.MultiheadAttention and recomputing records, and the probe's model still gives its outputs."""
    model = zoo_model("detr_shapes")
    stock = _stock_attention_copy(model)
    assert not any(hasattr(m, "probe") for m in stock.modules())
    prepared = preprocess(make_scene(5, 128)[0], model.stride, 128, 128)
    a, b = capture(model, prepared), capture(stock, prepared)
    for name in ("enc_q", "enc_k", "enc_lse", "dec_self", "cross_q", "cross_k", "cross_lse", "pred_logits"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=2e-5, rtol=0, msg=name)
    with torch.inference_mode():
        torch.testing.assert_close(model(prepared.tensor)["pred_logits"], stock(prepared.tensor)["pred_logits"],
                                   atol=2e-5, rtol=0)  # fmt: skip
    assert _hook_count(model) == _hook_count(stock) == 0
