"""Attention analyses on hand-made numbers: directions, layers, heads, rollout, statistics, relevance."""

from __future__ import annotations

import math

import pytest
import torch

from detr_core.analysis.attention import LOOKED_AT, LOOKS, decoder_map, encoder_map
from detr_core.analysis.capture import Analysis, attention_modules, capture
from detr_core.analysis.recording import attention_inputs, is_active, recording
from detr_core.analysis.relevance import normalize_residual, propagate, relevance
from detr_core.analysis.rollout import rollout, rollout_vector
from detr_core.analysis.stats import box_share, mean_attention_distance, normalized_entropy
from detr_core.io.image import Geometry, preprocess
from detr_core.models.transformer import in_projection
from detr_core.training.synthetic import make_scene


def _analysis_from_logits(enc_logits: torch.Tensor, geometry: Geometry, cross_logits: torch.Tensor | None = None):
    """An Analysis whose attention is softmax(logits) exactly: q = logits rows, k = identity.

    enc_logits [L, nh, N, N]; cross_logits [L, nh, Q, N].
    """
    L, nh, n, _ = enc_logits.shape
    eye = torch.eye(n).expand(L, nh, n, n)
    if cross_logits is None:
        cross_logits = torch.zeros(L, nh, 2, n)
    Ld, q = cross_logits.shape[0], cross_logits.shape[2]
    return Analysis(
        geometry=geometry, feature_shape=(1, 8, geometry.feat_h, geometry.feat_w), nheads=nh,
        enc_q=enc_logits.clone(), enc_k=eye.clone(), enc_lse=enc_logits.logsumexp(-1),
        dec_self=torch.full((Ld, nh, q, q), 1 / q), cross_q=cross_logits.clone(),
        cross_k=torch.eye(n).expand(Ld, nh, n, n).clone(), cross_lse=cross_logits.logsumexp(-1),
        pred_logits=torch.zeros(Ld, q, 3), pred_boxes=torch.zeros(Ld, q, 4),
    )  # fmt: skip


G23 = Geometry(orig_h=60, orig_w=90, input_h=64, input_w=96, feat_h=2, feat_w=3, stride=32)


def test_rows_and_columns_point_the_right_way():
    # 6 tokens; token 4 = (row 1, col 1). Each token looks almost only at token (i + 1) % 6.
    n = 6
    logits = torch.full((1, 1, n, n), -30.0)
    for i in range(n):
        logits[0, 0, i, (i + 1) % n] = 30.0
    a = _analysis_from_logits(logits, G23)
    x, y = G23.cell_center(1, 1)
    looks = encoder_map(a, x, y, layer=0, direction=LOOKS)
    looked_at = encoder_map(a, x, y, layer=0, direction=LOOKED_AT)
    assert (looks.row, looks.col, looks.token) == (1, 1, 4)
    assert looks.map.shape == (2, 3)
    assert looks.map[1, 2] == pytest.approx(1.0)  # 4 looks at 5 = (1, 2)
    assert looked_at.map[1, 0] == pytest.approx(1.0)  # 3 = (1, 0) looks at 4
    assert looks.map.sum() == pytest.approx(1.0)
    assert (looks.tokens, looks.view_shape, looks.stride) == (6, (2, 3, 2, 3), 32)


def test_heads_layers_and_means():
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 6, 6) * 3
    a = _analysis_from_logits(logits, G23)
    probs = logits.softmax(-1)  # [L, nh, N, N]
    x, y = G23.cell_center(0, 2)  # token 2
    torch.testing.assert_close(encoder_map(a, x, y, layer=1, head=1).map.flatten(), probs[1, 1, 2])
    torch.testing.assert_close(encoder_map(a, x, y, layer=-1).map.flatten(), probs[2, :, 2].mean(0))
    torch.testing.assert_close(encoder_map(a, x, y, layer="mean").map.flatten(), probs[:, :, 2].mean((0, 1)))
    torch.testing.assert_close(encoder_map(a, x, y, layer=0, direction=LOOKED_AT).map.flatten(),
                               probs[0, :, :, 2].mean(0))


def test_rollout_on_a_hand_made_example():
    a1 = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # swap
    a2 = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    r = rollout(torch.stack([a1, a2]))
    m1 = torch.tensor([[0.5, 0.5], [0.5, 0.5]])  # 0.5*a1 + 0.5*I
    m2 = torch.tensor([[1.0, 0.0], [0.25, 0.75]])  # 0.5*a2 + 0.5*I
    torch.testing.assert_close(r, m2 @ m1)
    torch.testing.assert_close(r, torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    torch.testing.assert_close(r.sum(-1), torch.ones(2))


def test_rollout_vector_equals_the_full_rollout():
    torch.manual_seed(1)
    logits = torch.randn(3, 2, 6, 6) * 2
    a = _analysis_from_logits(logits, G23)
    full = rollout(logits.softmax(-1).mean(1))
    for token in range(6):
        torch.testing.assert_close(rollout_vector(a, token, LOOKS), full[token])
        torch.testing.assert_close(rollout_vector(a, token, LOOKED_AT), full[:, token])
    x, y = G23.cell_center(1, 2)
    torch.testing.assert_close(encoder_map(a, x, y, layer="rollout").map.flatten(), full[5])


def test_decoder_map_of_each_query():
    cross = torch.full((2, 1, 2, 6), -30.0)
    cross[:, 0, 0, 1] = 30.0  # query 0 looks at (0, 1)
    cross[:, 0, 1, 5] = 30.0  # query 1 looks at (1, 2)
    a = _analysis_from_logits(torch.zeros(1, 1, 6, 6), G23, cross)
    assert decoder_map(a, 0)[0, 1] == pytest.approx(1.0)
    assert decoder_map(a, 1, layer=0)[1, 2] == pytest.approx(1.0)
    assert decoder_map(a, 1, layer="mean").shape == (2, 3)


@pytest.mark.parametrize("stride", [16, 32])
@pytest.mark.parametrize("size", [(37, 53), (480, 640), (800, 1066), (333, 1000), (1000, 333), (799, 800)])
def test_clicks_map_to_the_cell_under_the_pixel(stride, size):
    h, w = size
    g = preprocess(make_scene(0, 16)[0].resize((w, h)), stride, min_size=800).geometry
    for row in range(0, g.feat_h, max(1, g.feat_h // 5)):
        for col in range(0, g.feat_w, max(1, g.feat_w // 5)):
            x0, y0, x1, y1 = g.cell_box(row, col)
            for x, y in [((x0 + x1) / 2, (y0 + y1) / 2), (x0 + 1e-3, y0 + 1e-3), (x1 - 1e-3, y1 - 1e-3)]:
                assert g.pixel_to_cell(x, y) == (row, col)
    n = g.feat_h * g.feat_w
    a = _analysis_from_logits(torch.eye(n)[None, None] * 40, g)  # each location looks at itself
    for row, col in [(0, 0), (g.feat_h - 1, g.feat_w - 1), (g.feat_h // 2, g.feat_w // 3)]:
        m = encoder_map(a, *g.cell_center(row, col), layer=0)
        assert (m.row, m.col) == (row, col)
        assert divmod(int(m.map.argmax()), g.feat_w) == (row, col)


def test_statistics_on_hand_made_maps():
    g = Geometry(orig_h=64, orig_w=96, input_h=64, input_w=96, feat_h=2, feat_w=3, stride=32)
    uniform = torch.ones(2, 3)
    assert normalized_entropy(uniform) == pytest.approx(1.0)
    one_cell = torch.zeros(2, 3)
    one_cell[1, 1] = 1
    assert normalized_entropy(one_cell) == pytest.approx(0.0)
    two = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert normalized_entropy(two) == pytest.approx(math.log(2) / math.log(6))
    share, chance = box_share(one_cell, g, (32, 32, 64, 64))  # exactly cell (1, 1)
    assert (share, chance) == (pytest.approx(1.0), pytest.approx(1 / 6))
    share, chance = box_share(uniform, g, (0, 0, 48, 32))  # cell (0, 0) and half of (0, 1)
    assert share == pytest.approx(chance) == pytest.approx(1.5 / 6)
    # distance: every location looks only at itself -> 0; only at its right/left neighbour -> 32 px
    self_looking = _analysis_from_logits(torch.eye(6)[None, None] * 40, g)
    assert mean_attention_distance(self_looking, 0) == pytest.approx(0.0, abs=1e-6)
    neighbour = torch.full((1, 1, 6, 6), -40.0)
    for i, j in [(0, 1), (1, 2), (2, 1), (3, 4), (4, 5), (5, 4)]:
        neighbour[0, 0, i, j] = 40.0
    assert mean_attention_distance(_analysis_from_logits(neighbour, g), 0) == pytest.approx(32.0, rel=1e-4)


def test_relevance_is_finite_non_negative_and_per_query(zoo_model):
    model = zoo_model("detr_shapes")
    prepared = preprocess(make_scene(3, 128)[0], model.stride, 128, 128)
    maps = [relevance(model, prepared, q) for q in (0, 5)]
    g = prepared.geometry
    for m in maps:
        assert m.shape == (g.feat_h, g.feat_w)
        assert torch.isfinite(m).all() and (m >= 0).all() and m.sum() > 0
    assert not torch.allclose(maps[0], maps[1])
    assert all(p.grad is None for p in model.parameters())
    a = capture(model, prepared)  # the model is left as it was
    assert a.pred_logits.shape[1] == 20


def _dense_relevance(cams: list[tuple[str, torch.Tensor]], query: int) -> torch.Tensor:
    """Chefer et al.'s update rules as written, with the full R_ii: the reference for `propagate`."""
    n_img = cams[0][1].shape[0]
    n_q = next(c.shape[0] for role, c in cams if role != "encoder")
    r_ii, r_qq = torch.eye(n_img, dtype=torch.float64), torch.eye(n_q, dtype=torch.float64)
    r_qi = torch.zeros(n_q, n_img, dtype=torch.float64)
    for role, cam in cams:
        if role == "encoder":
            r_ii = r_ii + cam @ r_ii
        elif role == "decoder_self":
            r_qq, r_qi = r_qq + cam @ r_qq, r_qi + cam @ r_qi
        else:
            r_qi = r_qi + normalize_residual(r_qq).T @ cam @ normalize_residual(r_ii)
    return r_qi[query]


def test_relevance_propagation_equals_the_full_matrix_products():
    """`propagate` never forms R_ii; it must give row q of the dense computation."""
    gen = torch.Generator().manual_seed(0)
    n_img, n_q = 30, 7

    def cam(rows: int, cols: int, zero_rows: int = 0) -> torch.Tensor:
        c = torch.rand(rows, cols, generator=gen, dtype=torch.float64) * (torch.rand(rows, cols, generator=gen) > 0.5)
        c[:zero_rows] = 0  # rows with no relevance at all (their normalisation divides by nothing)
        return c / n_img

    cams = [("encoder", cam(n_img, n_img, zero_rows=3)) for _ in range(3)]
    for _ in range(2):
        cams += [("decoder_self", cam(n_q, n_q)), ("cross", cam(n_q, n_img))]
    for q in (0, 4, 6):
        torch.testing.assert_close(propagate(cams, q), _dense_relevance(cams, q), atol=1e-12, rtol=1e-10)
    assert not torch.allclose(propagate(cams, 0), propagate(cams, 4))


class _ReferenceRelevanceAttention:
    """The relevance hooks as they were before the autograd function (explicit softmax weights kept
    for the backward pass, Ā from their gradient by autograd): with `_dense_relevance` (Chefer et
    al.'s rules with full matrices, float64), the oracle the blockwise implementation must match."""

    def __init__(self, roles):
        self.role_of = {id(m): role for role, mods in roles.items() for m in mods}
        self.roles, self.shapes, self.pending, self.leaves, self.cams = [], [], {}, {}, {}
        self.source = None

    def input_hook(self, module, args, output):
        if is_active(self):
            self.source = output.detach().requires_grad_(True)
            return self.source
        return None

    def cam(self, call, grad, attn):
        self.cams[call] = (grad * attn.detach()).clamp_min(0).mean(0).double()

    def attention_hook(self, module, args, *kwargs_and_output):
        if not is_active(self):
            return None
        call = attention_inputs(args, kwargs_and_output)
        query, key, value, mask = call.query, call.key, call.value, call.key_padding_mask
        T_q, B, E = query.shape
        q, k, v = (t.flatten(0, 1) for t in in_projection(module, query, key, value))  # [B*nh, T, d]
        logits = (q / math.sqrt(q.shape[-1])) @ k.transpose(1, 2)
        if mask is not None:
            logits = logits.masked_fill(mask.repeat_interleave(module.num_heads, 0)[:, None, :].bool(), float("-inf"))
        attn = logits.softmax(-1)
        call = len(self.roles)
        self.roles.append(self.role_of[id(module)])
        self.shapes.append((attn.shape[-2], attn.shape[-1]))
        if attn.requires_grad:
            self.pending[call] = attn
            attn.register_hook(lambda grad, call=call: self.cam(call, grad, self.pending.pop(call)))
        else:
            attn = self.leaves[call] = attn.detach().requires_grad_(True)
        return module.out_proj((attn @ v).transpose(0, 1).reshape(T_q, B, E)), None


def _reference_relevance(model, prepared, query, class_id=None):
    roles = attention_modules(model)
    rec = _ReferenceRelevanceAttention(roles)
    with recording(rec) as handles:
        handles += [m.register_forward_hook(rec.attention_hook, with_kwargs=True) for ms in roles.values() for m in ms]
        handles.append(model.input_projection.register_forward_hook(rec.input_hook))
        with torch.enable_grad():
            logits = model(prepared.tensor)["pred_logits"][0]
            cls = int(logits[query, :-1].argmax()) if class_id is None else class_id
            leaves = list(rec.leaves.items())
            grads = torch.autograd.grad(logits[query, cls], [rec.source] + [a for _, a in leaves], allow_unused=True)
            for (call, attn), grad in zip(leaves, grads[1:]):
                if grad is not None:
                    rec.cam(call, grad, attn)
    cams = [(role, rec.cams.get(call, torch.zeros(rec.shapes[call]))) for call, role in enumerate(rec.roles)]
    return _dense_relevance(cams, query).float().view(prepared.geometry.feat_h, prepared.geometry.feat_w)


# Tolerances of the comparison with the reference, as fractions of the map's largest value.
# float64 models: the two implementations agree to the float32 rounding of the stored Ā and of the
# returned map (measured: at most 3.4e-7). float32 models (what the dashboard runs): random weights
# give logits q . k of several hundred, whose float32 rounding (~1e-4 absolute) moves the softmax,
# so any two float32 implementations differ more (measured: up to 2.7e-4; the implementation this
# one replaced differed from the same reference by up to 2.1e-4).
RELEVANCE_ATOL = {torch.float64: 1e-6, torch.float32: 1e-3}


@pytest.mark.parametrize(
    ("name", "size", "fast", "dtype"),
    [
        ("detr_shapes", 128, False, torch.float64),
        ("detr_shapes", 416, False, torch.float64),  # 26 x 26 = 676 cells: more than one block of BLOCK_ROWS rows
        ("detr_shapes", 416, False, torch.float32),
        ("detr_resnet50", 192, False, torch.float64),
        ("detr_resnet50", 192, True, torch.float64),  # folded batch norm (the dashboard's): weights require grad
        ("detr_resnet50", 192, True, torch.float32),  # ... and oneDNN's fused convolutions where no grad is on
        ("detr_resnet50_dc5", 192, False, torch.float64),  # stride 16: 12 x 12 cells
    ],
)
def test_relevance_equals_the_explicit_attention_reference(zoo_model, name, size, fast, dtype):
    """The blockwise backward (weights rebuilt from q, k and lse, never kept; only Ā where no input
    needs a gradient; the backbone without autograd; float32 matrix-vector chains) gives the maps of
    the explicit-softmax implementation it replaced followed by the dense float64 update rules of
    `_dense_relevance`, for several queries, with and without class_id."""
    import copy
    import dataclasses

    from detr_core.models.fast import optimize_for_inference

    model = zoo_model(name)
    model = optimize_for_inference(model) if fast else copy.deepcopy(model)
    if fast:
        assert any(p.requires_grad for p in model.parameters())  # the case the backbone's no_grad is for
    model = model.to(dtype)
    prepared = preprocess(make_scene(7, size)[0], model.stride, size, size)
    prepared = dataclasses.replace(prepared, tensor=prepared.tensor.to(dtype))
    for q, class_id in [(0, None), (11, None), (5, 1), (17, 0)]:
        want = _reference_relevance(model, prepared, q, class_id)
        got = relevance(model, prepared, q, class_id)
        torch.testing.assert_close(got, want, rtol=0, atol=RELEVANCE_ATOL[dtype] * float(want.abs().max()))
    assert not torch.allclose(relevance(model, prepared, 5, 1), relevance(model, prepared, 5, 2))
    assert all(p.grad is None for p in model.parameters())


def test_relevance_attention_gradients_and_cam_match_autograd():
    """The autograd function's output, q/k/v gradients and Ā equal explicit softmax attention under
    autograd, in float64, with and without ignored keys, across several row blocks."""
    from detr_core.analysis import kernel
    from detr_core.analysis.relevance import RelevanceAttention, Workspace

    gen = torch.Generator().manual_seed(0)
    nh, t_q, t_k, d = 2, kernel.BLOCK_ROWS + 37, 70, 8
    workspace = Workspace()  # shared by both calls, as by every layer of one relevance pass
    for masked in (False, True):
        q, k, v = (torch.randn(nh, t, d, generator=gen, dtype=torch.float64) for t in (t_q, t_k, t_k))
        mask = torch.zeros(1, t_k, dtype=torch.bool)
        mask[0, -9:] = masked
        w = torch.randn(nh, t_q, d, generator=gen, dtype=torch.float64)
        cams = []
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out = RelevanceAttention.apply(*leaves, mask if masked else None, cams.append, workspace, False)
        got = torch.autograd.grad((out * w).sum(), leaves)
        v_leaf = v.clone().requires_grad_(True)  # only Ā wanted: no gradient computed, the same Ā
        out_cam = RelevanceAttention.apply(q, k, v_leaf, mask if masked else None, cams.append, workspace, True)
        assert torch.autograd.grad((out_cam * w).sum(), v_leaf, allow_unused=True) == (None,)
        leaves_ref = [t.clone().requires_grad_(True) for t in (q, k, v)]
        attn = (leaves_ref[0] @ leaves_ref[1].transpose(1, 2)).masked_fill(mask[:, None, :], float("-inf")).softmax(-1)
        attn.retain_grad()
        out_ref = attn @ leaves_ref[2]
        (out_ref * w).sum().backward()
        torch.testing.assert_close(out, out_ref)
        for g, ref in zip(got, leaves_ref):
            torch.testing.assert_close(g, ref.grad)
        cam, cam_only = cams
        torch.testing.assert_close(cam, (attn.grad * attn).clamp_min(0).mean(0))
        torch.testing.assert_close(cam_only, cam)
