"""The model zoo: every architecture has exactly the official parameter names and shapes, the
transformer reproduces the official implementation's numbers, and checkpoints load strictly.

Models have random weights (nothing is downloaded); forward passes use small inputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re

import pytest
import torch
from torch.testing import assert_close

from detr_core import CheckpointError, InputSizeError, build_model, load_model
from detr_core.models import zoo
from detr_core.models.config import DETRConfig, SmallBackboneConfig
from detr_core.models.detr import build_detr
from detr_core.models.position_encoding import PositionEmbeddingSine
from detr_core.models.weights import CheckpointInfo
from detr_core.models.zoo import MODELS

OFFICIAL = ["detr_resnet50", "detr_resnet50_dc5", "detr_resnet101", "detr_resnet101_dc5"]


def _input(h: int = 64, w: int = 96, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def official_keys(reference_dir) -> dict[str, list[tuple[str, list[int]]]]:
    return json.loads((reference_dir / "official_state_dict_keys.json").read_text())


# --------------------------------------------------------------------------------------------
# architecture


def test_the_registry_covers_the_reference_models(official_keys):
    assert set(official_keys) == {*OFFICIAL, "detr_demo"}
    assert set(MODELS) == {*OFFICIAL, "detr_demo", "detr_shapes"}


@pytest.mark.parametrize("name", [*OFFICIAL, "detr_demo"])
def test_state_dict_keys_and_shapes_are_the_official_ones(name, official_keys, zoo_model):
    ours = {k: list(v.shape) for k, v in zoo_model(name).state_dict().items()}
    reference = {k: shape for k, shape in official_keys[name]}
    assert len(reference) == len(official_keys[name])  # no duplicate keys in the reference
    assert sorted(set(ours) - set(reference)) == []  # unexpected keys
    assert sorted(set(reference) - set(ours)) == []  # missing keys
    assert ours == reference
    has_bn_counters = any(k.endswith("num_batches_tracked") for k in ours)
    assert has_bn_counters == (name == "detr_demo")  # frozen BN in the official models, plain BN in DETRdemo


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_predicts_a_class_and_a_normalized_box_per_query(name, zoo_model):
    model = zoo_model(name)
    cfg = MODELS[name].config
    with torch.no_grad():
        out = model(_input())
    assert set(out) == {"pred_logits", "pred_boxes"}  # eval mode: no auxiliary outputs
    assert out["pred_logits"].shape == (1, cfg.num_queries, cfg.num_classes + 1)
    assert out["pred_boxes"].shape == (1, cfg.num_queries, 4)
    if name != "detr_shapes":
        assert out["pred_logits"].shape == (1, 100, 92)
    assert torch.isfinite(out["pred_logits"]).all()
    assert out["pred_boxes"].min() >= 0 and out["pred_boxes"].max() <= 1


def test_detr_demo_prints_as_the_papers_listing(zoo_model):
    text = str(zoo_model("detr_demo"))
    parts = (
        "(backbone): ResNet",
        "(conv): Conv2d(2048, 256",
        "(transformer): Transformer",
        "TransformerEncoderLayer",
        "TransformerDecoderLayer",
        "(linear_class): Linear(in_features=256, out_features=92",
        "(linear_bbox): Linear(in_features=256, out_features=4",
    )
    for part in parts:
        assert part in text


def test_detr_demo_refuses_a_feature_map_wider_than_its_50_learned_columns(zoo_model):
    with torch.no_grad(), pytest.raises(InputSizeError, match=r"at most 50x50 .* this input gives 2x52"):
        zoo_model("detr_demo")(_input(64, 1664))  # 1664 / 32 = 52 cells


# --------------------------------------------------------------------------------------------
# numbers of the official implementation


def test_the_tiny_reference_is_reproduced_to_1e_5(reference_dir):
    ref = torch.load(reference_dir / "detr_tiny_reference.pt", weights_only=True)
    c = ref["config"]
    cfg = DETRConfig(
        backbone="small", small_backbone=SmallBackboneConfig(channels=(c["backbone_channels"],), strides=(1,)),
        hidden_dim=c["hidden_dim"], nheads=c["nheads"], enc_layers=c["enc_layers"], dec_layers=c["dec_layers"],
        dim_feedforward=c["dim_feedforward"], num_queries=c["num_queries"], num_classes=c["num_classes"],
    )  # fmt: skip
    model = build_detr(cfg)
    result = model.load_state_dict(ref["state_dict"], strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(k.startswith("backbone.") for k in result.missing_keys)
    model.eval()

    exact = {"atol": 1e-5, "rtol": 0}
    features = ref["backbone_features"]  # [1, 32, 6, 9]
    position = model.backbone[1]
    assert isinstance(position, PositionEmbeddingSine) and position.num_pos_feats == 32
    with torch.no_grad():
        pos = position(features)  # [1, 64, 6, 9]
        assert_close(pos, ref["pos_embedding"], **exact)
        assert_close(PositionEmbeddingSine(32)(features), ref["pos_embedding"], **exact)
        hs, memory = model.transformer(model.input_proj(features), model.query_embed.weight, pos)
        logits, boxes = model.heads(hs)
    assert_close(memory, ref["memory"], **exact)  # [1, 64, 6, 9]
    assert_close(hs, ref["decoder_outputs"], **exact)  # [2, 1, 10, 64]
    assert_close(logits, ref["pred_logits_per_layer"], **exact)  # [2, 1, 10, 6]
    assert_close(boxes, ref["pred_boxes_per_layer"], **exact)  # [2, 1, 10, 4]


# --------------------------------------------------------------------------------------------
# loading checkpoints


@pytest.fixture(scope="module")
def r50_checkpoint(tmp_path_factory, zoo_model):
    """A random detr_resnet50 saved in the official format, named by torch.hub's hash convention."""
    folder = tmp_path_factory.mktemp("r50")
    tmp = folder / "unnamed.pth"
    torch.save({"model": zoo_model("detr_resnet50").state_dict()}, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = tmp.rename(folder / f"detr-r50-{digest[:8]}.pth")
    return path


def test_an_official_format_checkpoint_found_in_detr_weights_dir_loads_strictly(
    r50_checkpoint, zoo_model, weights_env, monkeypatch
):
    spec = dataclasses.replace(MODELS["detr_resnet50"], checkpoint=CheckpointInfo(r50_checkpoint.name, None, 159))
    monkeypatch.setitem(zoo.MODELS, "detr_resnet50", spec)
    monkeypatch.setenv("DETR_WEIGHTS_DIR", str(r50_checkpoint.parent))
    model = load_model("detr_resnet50", device="cpu")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = _input()
    with torch.no_grad():
        expected, got = zoo_model("detr_resnet50")(x), model(x)
    assert_close(got["pred_logits"], expected["pred_logits"], atol=1e-6, rtol=0)
    assert_close(got["pred_boxes"], expected["pred_boxes"], atol=1e-6, rtol=0)


def test_load_model_takes_an_explicit_checkpoint_path(r50_checkpoint, zoo_model, weights_env):
    model = load_model("detr_resnet50", checkpoint=str(r50_checkpoint), device="cpu")
    source = zoo_model("detr_resnet50").state_dict()
    assert all(torch.equal(v, source[k]) for k, v in model.state_dict().items())


def test_the_half_precision_demo_format_loads_as_float32(tmp_path, zoo_model, weights_env):
    source = zoo_model("detr_demo")
    half = {k: v.half() if v.is_floating_point() else v for k, v in source.state_dict().items()}
    path = tmp_path / "my_detr_demo.pth"
    torch.save(half, path)  # a plain state dict, as the official detr_demo checkpoint
    model = load_model("detr_demo", checkpoint=path, device="cpu")
    source_sd = source.state_dict()
    for k, v in model.state_dict().items():
        assert v.dtype == source_sd[k].dtype  # float32 (and int64 batch counters)
        assert torch.equal(v, half[k].to(v.dtype))
    x = _input()
    with torch.no_grad():
        expected, got = source(x), model(x)
    assert_close(got["pred_logits"], expected["pred_logits"], atol=5e-3, rtol=0)  # fp16 rounding of the weights
    assert_close(got["pred_boxes"], expected["pred_boxes"], atol=1e-3, rtol=0)


def test_a_checkpoint_failing_its_hash_is_refused_before_it_is_read(weights_env, zoo_model, monkeypatch):
    """A file named like the official R50 checkpoint, but with other bytes, is never unpickled."""
    path = weights_env["weights_dir"] / MODELS["detr_resnet50"].checkpoint.filename
    torch.save({"model": {"w": torch.zeros(1)}}, path)
    monkeypatch.setenv("DETR_WEIGHTS_DIR", str(path.parent))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a checkpoint that failed its hash was read"))
    monkeypatch.setattr(zoo, "build_model", lambda name: pytest.fail("a model was built for a refused checkpoint"))
    for explicit in (None, path):
        with pytest.raises(CheckpointError, match="not the expected checkpoint"):
            load_model("detr_resnet50", checkpoint=explicit, device="cpu")


def test_a_checkpoint_of_the_wrong_shape_names_the_offending_keys(tmp_path, zoo_model, weights_env):
    sd = dict(zoo_model("detr_shapes").state_dict())
    del sd["query_embed.weight"]
    sd["class_embed.weight"] = torch.zeros(92, 128)  # a COCO head on the shapes model
    sd["transformer.encoder.layers.9.norm1.weight"] = torch.zeros(128)
    path = tmp_path / "wrong.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError) as caught:
        load_model("detr_shapes", checkpoint=path, device="cpu")
    message = str(caught.value)
    assert "wrong.pth (checkpoint for detr_shapes) does not fit DETR" in message
    assert "1 missing keys: query_embed.weight" in message
    assert "1 unexpected keys: transformer.encoder.layers.9.norm1.weight" in message
    assert "class_embed.weight (checkpoint [92, 128], model [5, 128])" in message


def test_unknown_model_names_are_a_checkpoint_error():
    with pytest.raises(CheckpointError, match=r"unknown model 'detr_resnet18'; known models: detr_resnet50, "):
        build_model("detr_resnet18")


def test_the_readme_example_runs(repo_root, weights_env, monkeypatch, capsys):
    """The README's "Use the library" example, on a random-weights detr_shapes in the bundled folder.

    (The trained checkpoint's name and numbers change when it is retrained; the example must run.)
    """
    torch.manual_seed(0)
    tmp = weights_env["bundled"] / "tmp.pth"
    torch.save(build_model("detr_shapes").state_dict(), tmp)  # a plain state dict, as detr_core.training.train exports
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = tmp.rename(weights_env["bundled"] / f"detr_shapes-{digest[:8]}.pth")
    spec = dataclasses.replace(MODELS["detr_shapes"], checkpoint=CheckpointInfo(path.name, None, 4.3))
    monkeypatch.setitem(zoo.MODELS, "detr_shapes", spec)
    monkeypatch.chdir(repo_root)
    readme = (repo_root / "README.md").read_text()
    section = readme[readme.index("## Use the library") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert re.search(r"^\d+ detections above 0\.7$", printed, re.M)
    # coffee.png at detr_shapes' 128 px: an 8 x 12 grid of feature cells (stride 16, 128 x 192 input)
    assert "torch.Size([8, 12]) feature cells; clicked cell" in printed
