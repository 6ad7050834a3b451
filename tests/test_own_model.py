"""Your own DETR: fine-tuned checkpoints in the Hugging Face and the official training formats.

Oracle: Hugging Face transformers. A `DetrForObjectDetection` (or `TableTransformerForObjectDetection`,
for pre-norm) is built from a small config with random weights (no download), saved with
`save_pretrained`, loaded through the project, and run on the same input: logits, boxes and every
attention map the project shows (encoder self-attention and decoder cross-attention, per layer and
head) must agree with HF's `output_attentions` within 1e-4 of the largest value.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from PIL import Image

from detr_core import CheckpointError
from detr_core.analysis.attention import decoder_map, encoder_attention
from detr_core.analysis.capture import capture
from detr_core.analysis.pipeline import prepare
from detr_core.models.config import DETRConfig
from detr_core.models.detr import build_detr
from detr_core.models.own import load_own_model, read_own_checkpoint

transformers = pytest.importorskip("transformers")  # a test dependency (requirements-dev.txt)

TOL = 1e-4  # relative to the largest absolute value compared
IMAGE_W, IMAGE_H = 96, 64  # input pixels: 3x2 feature cells at stride 32, 6x4 at 16
AGREEMENT: dict[str, dict[str, float]] = {}  # config -> quantity -> max relative difference (printed at the end)


def _small(**overrides):
    base = dict(
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
        num_queries=20,
        num_labels=7,
        use_pretrained_backbone=False,
        use_timm_backbone=True,
        backbone="resnet50",
    )
    base.update(overrides)
    return base


def _resnet_config():
    return transformers.ResNetConfig(out_features=["stage1", "stage2", "stage3", "stage4"])


HF_CONFIGS = {
    "7 labels, 20 queries, 2+2 layers, timm R50": dict(),
    "3 labels, 9 queries, 1 encoder + 3 decoder layers, 2 heads": dict(
        num_labels=3, num_queries=9, encoder_layers=1, decoder_layers=3, encoder_attention_heads=2,
        decoder_attention_heads=2,
    ),
    "dilation (DC5)": dict(dilation=True),
    "learned position embedding": dict(position_embedding_type="learned"),
    "transformers' own ResNet-50 backbone": dict(
        use_timm_backbone=False, backbone=None, backbone_config="resnet"
    ),
    "pre-norm (TableTransformer)": dict(table_transformer=True),
}  # fmt: skip


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights far from HF's small init (std 0.02) and non-trivial frozen batch norms, so that
    attention is far from uniform and every parameter matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "conv_encoder" in name:
                continue
            is_norm_scale = "norm" in name and name.endswith("weight")
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.1) + float(is_norm_scale))
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif "conv_encoder" in name and name.endswith("weight"):  # frozen BN scale
                b.copy_(torch.rand(b.shape, generator=g) * 0.5 + 0.5)


def make_hf(tmp_path, label: str, seed: int = 0):
    torch.manual_seed(seed)  # HF's own init (the backbone) draws from the global generator
    overrides = dict(HF_CONFIGS[label])
    table = overrides.pop("table_transformer", False)
    if overrides.get("backbone_config") == "resnet":
        overrides["backbone_config"] = _resnet_config()
    kwargs = _small(**overrides)
    if table:
        cfg = transformers.TableTransformerConfig(**kwargs)
        hf = transformers.TableTransformerForObjectDetection(cfg)
    else:
        cfg = transformers.DetrConfig(**kwargs)
        hf = transformers.DetrForObjectDetection(cfg)
    _randomize(hf, seed)
    hf.eval()
    folder = tmp_path / f"hf_{seed}"
    hf.save_pretrained(folder)
    return hf, folder


def _photo() -> Image.Image:
    g = torch.Generator().manual_seed(1)
    return Image.fromarray((torch.rand(IMAGE_H, IMAGE_W, 3, generator=g) * 255).byte().numpy())


ABS: dict[str, float] = {}  # quantity -> max absolute difference of the last config run (printed)


def _rel(a: torch.Tensor, b: torch.Tensor, what: str = "") -> float:
    ABS[what] = max(ABS.get(what, 0.0), float((a - b).abs().max()))
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("label", list(HF_CONFIGS))
def test_a_hugging_face_detr_matches_hf_in_predictions_and_every_attention_map(tmp_path, label):
    hf, folder = make_hf(tmp_path, label)
    own = load_own_model(folder, device="cpu")
    prepared = prepare(own.model, _photo(), own.spec, min_size=IMAGE_H, max_size=IMAGE_W)
    analysis = capture(own.model, prepared, own.spec.class_names, own.spec.name)
    with torch.no_grad():
        out = hf(pixel_values=prepared.tensor, output_attentions=True)

    ABS.clear()
    diffs = {
        "logits": _rel(analysis.pred_logits[-1], out.logits[0], "logits"),
        "boxes": _rel(analysis.pred_boxes[-1], out.pred_boxes[0], "boxes"),
    }
    hw = analysis.geometry.tokens
    assert hw == out.encoder_attentions[0].shape[-1]
    enc = []
    for layer in range(analysis.enc_layers):
        ours = torch.stack([encoder_attention(analysis, layer, t) for t in range(hw)], dim=1)  # [nh, HW, HW]
        enc.append(_rel(ours, out.encoder_attentions[layer][0], "encoder attention"))
        assert ours.max() > 2 / hw  # far from uniform: the comparison means something
    cross = []
    nh, q = analysis.nheads, analysis.num_queries
    for layer in range(analysis.dec_layers):
        ours = torch.stack(
            [torch.stack([decoder_map(analysis, i, layer, h).flatten() for i in range(q)]) for h in range(nh)]
        )  # [nh, Q, HW]
        cross.append(_rel(ours, out.cross_attentions[layer][0], "cross attention"))
    diffs["encoder attention"] = max(enc)
    diffs["cross attention"] = max(cross)
    AGREEMENT[label] = diffs
    print(f"\n{label}: " + ", ".join(f"{k} rel {v:.1e} abs {ABS[k]:.1e}" for k, v in diffs.items()))
    assert all(v < TOL for v in diffs.values()), diffs
    # the architecture and the class names came from the folder
    assert analysis.pred_logits.shape[-1] == hf.config.num_labels + 1
    assert analysis.num_queries == hf.config.num_queries
    assert analysis.enc_layers == hf.config.encoder_layers and analysis.dec_layers == hf.config.decoder_layers
    assert own.spec.class_names == tuple(hf.config.id2label[i] for i in range(hf.config.num_labels))
    assert own.spec.config.pre_norm == ("TableTransformer" in label or "pre-norm" in label)


# ----------------------------------------------------------------------------------------------
# The official training format (main.py)


def _official_args(**overrides) -> argparse.Namespace:
    """The argparse.Namespace main.py saves (its defaults, with a few changed)."""
    args = dict(
        lr=1e-4, lr_backbone=1e-5, batch_size=2, weight_decay=1e-4, epochs=300, lr_drop=200, clip_max_norm=0.1,
        frozen_weights=None, backbone="resnet50", dilation=False, position_embedding="sine", enc_layers=6,
        dec_layers=6, dim_feedforward=2048, hidden_dim=256, dropout=0.1, nheads=8, num_queries=100, pre_norm=False,
        masks=False, aux_loss=True, set_cost_class=1, set_cost_bbox=5, set_cost_giou=2, dataset_file="coco",
        coco_path="/data/coco", output_dir="out", device="cuda", seed=42, resume="", start_epoch=0, eval=False,
        num_workers=2, world_size=1, dist_url="env://", distributed=False,
    )  # fmt: skip
    args.update(overrides)
    return argparse.Namespace(**args)


OFFICIAL_VARIANTS = {
    "R50, 7 classes, 20 queries, 2+1 layers": dict(backbone="resnet50", enc_layers=2, dec_layers=1, num_queries=20),
    "R50-DC5": dict(dilation=True, enc_layers=1, dec_layers=1),
    "R101": dict(backbone="resnet101", enc_layers=1, dec_layers=1),
    "learned position embedding": dict(position_embedding="learned", enc_layers=1, dec_layers=2),
    "pre-norm": dict(pre_norm=True, enc_layers=2, dec_layers=2),
}


def _args_to_config(args: argparse.Namespace, num_classes: int) -> DETRConfig:
    return DETRConfig(
        backbone=args.backbone, dilation=args.dilation, hidden_dim=args.hidden_dim, nheads=args.nheads,
        enc_layers=args.enc_layers, dec_layers=args.dec_layers, dim_feedforward=args.dim_feedforward, dropout=0.0,
        num_queries=args.num_queries, num_classes=num_classes,
        position_embedding="learned" if args.position_embedding in ("learned", "v3") else "sine",
        pre_norm=args.pre_norm,
    )  # fmt: skip


def _main_py_checkpoint(path, model, args, epoch=11):
    torch.save(
        {"model": model.state_dict(), "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]},
         "lr_scheduler": {"step_size": 200, "last_epoch": epoch}, "epoch": epoch, "args": args},
        path,
    )  # fmt: skip


@pytest.mark.parametrize("variant", list(OFFICIAL_VARIANTS))
def test_a_main_py_checkpoint_loads_with_its_args_and_predicts_as_the_model_it_came_from(tmp_path, variant):
    args = _official_args(hidden_dim=32, nheads=4, dim_feedforward=48, **OFFICIAL_VARIANTS[variant])
    torch.manual_seed(0)
    reference = build_detr(_args_to_config(args, num_classes=7)).eval()
    path = tmp_path / "checkpoint.pth"
    _main_py_checkpoint(path, reference, args)
    own = load_own_model(path, device="cpu")
    assert own.spec.config == _args_to_config(args, 7)
    assert own.spec.class_names == tuple(f"class {i}" for i in range(7))
    x = prepare(own.model, _photo(), own.spec, IMAGE_H, IMAGE_W).tensor
    with torch.no_grad():
        ours, theirs = own.model(x), reference(x)
    assert torch.equal(ours["pred_logits"], theirs["pred_logits"])
    assert torch.equal(ours["pred_boxes"], theirs["pred_boxes"])
    assert "trained for 12 epochs" in own.spec.notes


def test_a_bare_state_dict_needs_dilation_and_heads_and_says_so(tmp_path):
    cfg = DETRConfig(hidden_dim=32, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=48, num_queries=20,
                     num_classes=7, dropout=0.0)  # fmt: skip
    torch.manual_seed(0)
    reference = build_detr(cfg).eval()
    path = tmp_path / "bare.pth"
    torch.save(reference.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"dilated \(DC5\).*--dilation.*heads.*--nheads"):
        read_own_checkpoint(path)
    own = load_own_model(path, dilation=False, nheads=4, device="cpu")
    assert own.spec.config == cfg
    x = prepare(own.model, _photo(), own.spec, IMAGE_H, IMAGE_W).tensor
    with torch.no_grad():
        assert torch.equal(own.model(x)["pred_logits"], reference(x)["pred_logits"])


def test_a_detr_segm_checkpoint_loads_its_detection_part_and_says_so(tmp_path):
    args = _official_args(hidden_dim=32, nheads=4, dim_feedforward=48, enc_layers=1, dec_layers=1, masks=True)
    torch.manual_seed(0)
    reference = build_detr(_args_to_config(args, 250)).eval()
    state = {f"detr.{k}": v for k, v in reference.state_dict().items()}
    state["bbox_attention.q_linear.weight"] = torch.zeros(32, 32)
    state["mask_head.lay1.weight"] = torch.zeros(40, 40, 3, 3)
    torch.save({"model": state, "args": args, "epoch": 0}, tmp_path / "segm.pth")
    own = load_own_model(tmp_path / "segm.pth", device="cpu")
    assert "DETR-segm" in own.spec.notes and "mask head (2 tensors)" in own.spec.notes
    assert own.spec.config.num_classes == 250


# ----------------------------------------------------------------------------------------------
# Bad input: a clear CheckpointError, never a traceback


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _tiny_official(tmp_path):
    args = _official_args(hidden_dim=32, nheads=4, dim_feedforward=48, enc_layers=1, dec_layers=1, num_queries=20)
    torch.manual_seed(0)
    model = build_detr(_args_to_config(args, 7)).eval()
    path = tmp_path / "good.pth"
    _main_py_checkpoint(path, model, args)
    return path, model


def _bad_files(tmp_path):
    """(label, path, the message it must give)."""
    from safetensors.torch import save_file

    good, model = _tiny_official(tmp_path)
    data = good.read_bytes()
    cases = []

    def put(name, content):
        p = tmp_path / name
        p.write_bytes(content) if isinstance(content, bytes) else p.write_text(content)
        return p

    cases.append(("truncated", put("truncated.pth", data[: len(data) // 2]), "damaged, truncated"))
    cases.append(("corrupt", put("corrupt.pth", b"\x00garbage" * 100), "damaged, truncated"))
    torch.save({"model": model.state_dict(), "evil": _RunsCode()}, tmp_path / "evil.pth")
    cases.append(("pickle that runs code", tmp_path / "evil.pth", "refused.*could run code"))
    torch.save({"model": model.state_dict(), "args": {1, 2}, "x": Image.new("RGB", (2, 2))}, tmp_path / "obj.pth")
    cases.append(("pickle with other objects", tmp_path / "obj.pth", "refused"))
    deform = {"transformer.level_embed": torch.zeros(4, 32), "input_proj.0.0.weight": torch.zeros(32, 512, 1, 1)}
    torch.save({"model": deform}, tmp_path / "deformable.pth")
    cases.append(("Deformable DETR", tmp_path / "deformable.pth", "looks like a Deformable DETR"))
    rcnn = {"rpn.head.conv.0.0.weight": torch.zeros(1), "roi_heads.box_head.fc6.weight": torch.zeros(1)}
    torch.save(rcnn, tmp_path / "frcnn.pth")
    cases.append(("Faster R-CNN", tmp_path / "frcnn.pth", "looks like a Faster / Mask R-CNN"))
    torch.save({"class_token": torch.zeros(1, 1, 8), "conv_proj.weight": torch.zeros(8, 3, 16, 16)}, tmp_path / "v.pth")
    cases.append(("ViT", tmp_path / "v.pth", "looks like a Vision Transformer"))
    torch.save([1, 2, 3], tmp_path / "list.pth")
    cases.append(("a list", tmp_path / "list.pth", "not a checkpoint"))

    _hf, folder = make_hf(tmp_path, "7 labels, 20 queries, 2+2 layers, timm R50")
    from safetensors.torch import load_file

    sd = load_file(str(folder / "model.safetensors"))

    def hf_variant(name, state):
        f = tmp_path / name
        f.mkdir()
        (f / "config.json").write_text((folder / "config.json").read_text())
        save_file(state, str(f / "model.safetensors"))
        return f

    missing = dict(sd)
    missing.pop("model.decoder.layers.0.fc1.weight")
    cases.append(("safetensors: missing tensor", hf_variant("missing", missing), "1 missing keys.*linear1"))
    extra = dict(sd, **{"model.extra.weight": torch.zeros(3)})
    cases.append(("safetensors: extra tensor", hf_variant("extra", extra), "unexpected keys"))
    shape = dict(sd, **{"model.input_projection.weight": torch.zeros(32, 100, 1, 1)})
    cases.append(("safetensors: wrong shape", hf_variant("shape", shape), "shape mismatches.*input_proj"))
    dtype = dict(sd, **{"model.input_projection.bias": torch.zeros(32, dtype=torch.int32)})
    cases.append(("safetensors: wrong dtype", hf_variant("dtype", dtype), "int32, not floating point"))
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    (trunc / "config.json").write_text((folder / "config.json").read_text())
    (trunc / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:5000])
    cases.append(("safetensors: truncated", trunc, "damaged, truncated or not safetensors"))
    for kind in ("deformable_detr", "conditional_detr", "rt_detr", "yolos"):
        f = tmp_path / kind
        f.mkdir()
        (f / "config.json").write_text(f'{{"model_type": "{kind}"}}')
        cases.append((f"HF {kind}", f, f"not supported: {kind}"))
    nothing = tmp_path / "noweights"
    nothing.mkdir()
    (nothing / "config.json").write_text((folder / "config.json").read_text())
    cases.append(("HF folder without weights", nothing, "no model.safetensors or pytorch_model.bin"))
    cases.append(("not there", tmp_path / "nope.pth", "not found"))
    return cases


def test_every_bad_file_gives_a_clear_checkpoint_error(tmp_path):
    cases = _bad_files(tmp_path)
    for label, path, message in cases:
        with pytest.raises(CheckpointError, match=message):
            load_own_model(path, device="cpu")
        print(f"{label}: ok")
    assert len(cases) == 19


def test_class_names_from_every_kind_of_sidecar_file_and_a_wrong_count(tmp_path):
    from detr_core.io.class_names import ClassNamesError, read_class_names

    names = [f"thing{i}" for i in range(7)]
    (tmp_path / "c.txt").write_text("\n".join(names) + "\n\n")
    (tmp_path / "c.json").write_text(str(names).replace("'", '"'))
    (tmp_path / "map.json").write_text('{"0": "thing0", "6": "thing6"}')
    coco = '{"images": [], "annotations": [], "categories": [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}]}'
    (tmp_path / "coco.json").write_text(coco)
    assert read_class_names(tmp_path / "c.txt", 7) == tuple(names)
    assert read_class_names(tmp_path / "c.json", 7) == tuple(names)
    assert read_class_names(tmp_path / "map.json", 7) == ("thing0", *[f"class {i}" for i in range(1, 6)], "thing6")
    assert read_class_names(tmp_path / "coco.json", 4) == ("class 0", "cat", "class 2", "dog")
    with pytest.raises(ClassNamesError, match="names 7 classes, but the model has 5"):
        read_class_names(tmp_path / "c.txt", 5)
    with pytest.raises(ClassNamesError, match=r"class id 3, but the model's class ids are 0\.\.2"):
        read_class_names(tmp_path / "coco.json", 3)
    good, _ = _tiny_official(tmp_path)
    own = load_own_model(good, classes=tmp_path / "c.txt", device="cpu")
    assert own.spec.class_names == tuple(names)
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    with pytest.raises(CheckpointError, match="names 3 classes, but the model has 7"):
        load_own_model(good, classes=tmp_path / "three.txt", device="cpu")


def test_the_cli_analyses_an_image_with_your_own_checkpoint_and_class_file(tmp_path, capsys):
    import json

    from detr_core.cli import main
    from detr_core.models.zoo import MODELS

    good, _ = _tiny_official(tmp_path)
    (tmp_path / "classes.txt").write_text("\n".join(f"part{i}" for i in range(7)))
    photo = tmp_path / "photo.png"
    _photo().save(photo)
    try:
        argv = [str(photo), "--checkpoint", str(good), "--classes", str(tmp_path / "classes.txt")]
        rc = main([*argv, "--threshold", "0.0", "--out", str(tmp_path / "out"), "--device", "cpu"])
        assert rc == 0
        result = json.loads((tmp_path / "out" / "photo" / "detections.json").read_text())
        assert result["model"] == "good"
        assert len(result["detections"]) == 20  # threshold 0: every query
        assert {d["class_name"] for d in result["detections"]} <= {f"part{i}" for i in range(7)}
        (tmp_path / "two.txt").write_text("a\nb\n")
        rc = main([str(photo), "--checkpoint", str(good), "--classes", str(tmp_path / "two.txt"), "--out", "x"])
        assert rc == 2 and "names 2 classes, but the model has 7" in capsys.readouterr().err
        torch.save(_tiny_official(tmp_path)[1].state_dict(), tmp_path / "bare.pth")
        assert main([str(photo), "--checkpoint", str(tmp_path / "bare.pth"), "--out", "x"]) == 2
        assert "--dilation or --no-dilation" in capsys.readouterr().err
    finally:
        MODELS.pop("good", None)


def test_a_class_name_path_that_is_not_a_file_is_refused_without_reading_it(tmp_path):
    from detr_core.io.class_names import ClassNamesError, read_class_names

    fifo = tmp_path / "names.txt"
    os.mkfifo(fifo)  # no writer: reading it would wait forever
    for path, message in [(fifo, "not a regular file"), (type(tmp_path)("/dev/zero"), "not a regular file"),
                          (tmp_path, "is a folder, not a file")]:  # fmt: skip
        with pytest.raises(ClassNamesError, match=message):
            read_class_names(path, 7)
