"""The dashboard with a user's own 7-class, 20-query DETR configured on the server (AppTest, offline)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

from detr_core.models.config import DETRConfig  # noqa: E402
from detr_core.models.detr import build_detr  # noqa: E402
from detr_core.models.zoo import MODELS  # noqa: E402
from ui import own_models  # noqa: E402

APP = str(REPO_ROOT / "app.py")
CLASSES = [f"part{i}" for i in range(7)]


@pytest.fixture
def configured(tmp_path, monkeypatch):
    """A main.py-format checkpoint (7 classes, 20 queries) and its class file, configured through
    DETR_OWN_MODELS; no official checkpoint and no network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    cfg = DETRConfig(hidden_dim=32, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=48, num_queries=20,
                     num_classes=7, dropout=0.0)  # fmt: skip
    torch.manual_seed(0)
    model = build_detr(cfg)
    args = argparse.Namespace(backbone="resnet50", dilation=False, position_embedding="sine", nheads=4, pre_norm=False)
    torch.save({"model": model.state_dict(), "args": args, "epoch": 3}, tmp_path / "parts.pth")
    (tmp_path / "parts.txt").write_text("\n".join(CLASSES))
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    entries = [
        {"checkpoint": str(tmp_path / "parts.pth"), "classes": str(tmp_path / "parts.txt"), "name": "parts"},
        {"checkpoint": str(bad)},
    ]
    monkeypatch.setenv(own_models.ENV, json.dumps(entries))
    monkeypatch.setattr(own_models, "_done", False)
    monkeypatch.setattr(own_models, "MODELS_OWN", {})
    monkeypatch.setattr(own_models, "ERRORS", [])
    yield
    MODELS.pop("parts", None)


def test_parse_args_groups_options_by_checkpoint():
    argv = ["--checkpoint", "a.pth", "--classes", "a.txt", "--checkpoint", "b", "--name", "B", "--no-dilation"]
    assert own_models.parse_args(argv) == [
        {"checkpoint": "a.pth", "classes": "a.txt"},
        {"checkpoint": "b", "name": "B", "dilation": False},
    ]


def test_your_model_is_listed_its_classes_show_in_detect_and_its_queries_in_decoder(configured):
    at = AppTest.from_file(APP, default_timeout=240)
    at.query_params = {"thr": "0.00", "src": "sample"}
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    picker = at.sidebar.selectbox(key="w_model")
    assert picker.value == "parts"  # opens on your own model
    assert "parts" in picker.options[-1] or any("your model" in o for o in picker.options)
    warnings = " ".join(w.value for w in at.sidebar.warning)
    assert "broken.pth" in warnings and "not a PyTorch checkpoint" in warnings
    assert "/" not in warnings, warnings  # no server path: the file name only
    page = " ".join(str(m.value) for m in at.markdown) + " ".join(str(c.value) for c in at.caption)
    tables = " ".join(df.value.to_string() for df in at.dataframe)
    assert any(name in page + tables for name in CLASSES), page[:500]
    assert not any(f"class {i}" in tables for i in range(7))
    at.switch_page("pages/decoder.py").run()
    assert not at.exception, [e.value for e in at.exception]
    picks = at.selectbox(key="p_dec_pick").options  # threshold 0: every query is a detection
    assert sorted(int(p.split(":")[0].removeprefix("query ")) for p in picks) == list(range(20)), picks
    assert all(p.split(": ")[1].split(" (")[0] in CLASSES for p in picks), picks
    assert len(at.selectbox(key="p_dec_layer").options) == 2 + 1  # 2 decoder layers and their mean
    assert not at.error, [e.value for e in at.error]
    for page in ("encoder", "model", "guide"):  # every other page works for this model too
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception and not at.error, (page, [e.value for e in (*at.exception, *at.error)])
