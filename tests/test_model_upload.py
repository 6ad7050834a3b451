"""Uploading a checkpoint in the browser (ui/model_upload.py, issue 14): absent unless the server says
--allow-checkpoint-upload; a small random-weight main.py-format checkpoint (7 classes, 20 queries,
2 decoder layers) uploads, is listed as yours and shows its class names; at most HELD uploads are
kept; oversize and bad files get a message; nothing stays on disk (AppTest, offline)."""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
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
from ui import model_upload, own_models  # noqa: E402

APP = str(REPO_ROOT / "app.py")
CLASSES = [f"part{i}" for i in range(7)]


def small_checkpoint() -> bytes:
    """main.py's layout ({'model', 'args', 'epoch'}) for a 7-class, 20-query, 2-decoder-layer DETR."""
    cfg = DETRConfig(hidden_dim=32, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=48, num_queries=20,
                     num_classes=7, dropout=0.0)  # fmt: skip
    torch.manual_seed(0)
    model = build_detr(cfg)
    args = argparse.Namespace(backbone="resnet50", dilation=False, position_embedding="sine", nheads=4, pre_norm=False)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "args": args, "epoch": 3}, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def checkpoint() -> bytes:
    return small_checkpoint()


@pytest.fixture
def server(tmp_path, monkeypatch, offline):
    """Offline, no official checkpoint, no model configured; uploads on (undo with allow=False)."""
    monkeypatch.delenv(own_models.ENV, raising=False)
    monkeypatch.setattr(sys, "argv", ["app.py", "--allow-checkpoint-upload"])
    monkeypatch.setattr(own_models, "_done", False)
    monkeypatch.setattr(own_models, "MODELS_OWN", {})
    monkeypatch.setattr(own_models, "ERRORS", [])
    monkeypatch.setattr(model_upload, "_HELD", type(model_upload._HELD)())
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    from streamlit import config

    limit = config.get_option("server.maxUploadSize")
    config.set_option("server.maxUploadSize", 200)  # as `--server.maxUploadSize 200` (README)
    before = set(MODELS)
    yield tmp_path / "tmp"
    config.set_option("server.maxUploadSize", limit)
    for name in set(MODELS) - before:
        MODELS.pop(name)


def json_names(prefix: str) -> tuple[str, bytes]:
    return f"{prefix}.json", json.dumps([f"{prefix}_{j}" for j in range(7)]).encode()


def new_app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=240)
    at.query_params = {"thr": "0.00", "src": "sample"}
    return at.run()


def upload(at: AppTest, name: str, data: bytes, classes: tuple[str, bytes] | None = None) -> AppTest:
    uploaders = [u for u in at.sidebar.file_uploader if u.key and u.key.startswith("w_ckpt_upload_")]
    assert len(uploaders) == 1, [u.key for u in at.sidebar.file_uploader]
    uploaders[0].set_value((name, data, "application/octet-stream"))
    if classes is not None:
        names = [u for u in at.sidebar.file_uploader if u.key and u.key.startswith("w_classes_upload_")]
        names[0].set_value((classes[0], classes[1], "text/plain"))
    return at.sidebar.button[0].click().run()


def notices(at: AppTest) -> str:
    return " ".join(str(e.value) for e in (*at.sidebar.success, *at.sidebar.error, *at.sidebar.info))


def test_no_uploader_unless_the_server_allows_it(server, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["app.py"])
    monkeypatch.delenv("DETR_ALLOW_CHECKPOINT_UPLOAD", raising=False)
    at = new_app()
    assert not at.exception, [e.value for e in at.exception]
    assert not any((u.key or "").startswith("w_ckpt") for u in at.file_uploader)
    assert not any("Upload your own" in str(e.label) for e in at.sidebar.expander)


def test_an_uploaded_checkpoint_is_listed_as_yours_with_its_classes(server, checkpoint, monkeypatch):
    from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager

    removed: list[str] = []
    remove_file = MemoryUploadedFileManager.remove_file

    def recording_remove(self, session_id, file_id):
        removed.append(file_id)
        remove_file(self, session_id, file_id)

    monkeypatch.setattr(MemoryUploadedFileManager, "remove_file", recording_remove)
    at = new_app()
    assert not at.exception, [e.value for e in at.exception]
    at = upload(at, "my parts model!.pth", checkpoint, ("parts.txt", "\n".join(CLASSES).encode()))
    assert len(removed) == 2  # both files' bytes dropped from Streamlit's upload manager at once
    assert not at.exception, [e.value for e in at.exception]
    assert "Loaded as" in notices(at), notices(at)
    [name] = model_upload.held()
    assert name.startswith("my_parts_model-") and name in MODELS and own_models.is_own(name)
    picker = at.sidebar.selectbox(key="w_model")
    assert any("your model" in o and "7 classes, 20 queries" in o for o in picker.options), picker.options
    picker.set_value(name).run()
    at.sidebar.slider(key="w_threshold").set_value(0.0).run()  # random weights: every query a detection
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    tables = " ".join(df.value.to_string() for df in at.dataframe)
    assert any(c in tables for c in CLASSES), tables[:300]
    at.switch_page("pages/decoder.py").run()
    assert not at.exception and not at.error
    assert len(at.selectbox(key="p_dec_pick").options) == 20  # threshold 0: every query
    assert list(server.iterdir()) == []  # the temporary folder is gone
    uploaders = [u for u in at.sidebar.file_uploader if (u.key or "").startswith("w_ckpt_upload_")]
    assert uploaders and uploaders[0].value is None  # a fresh uploader: the bytes are not kept


def test_at_most_held_uploads_are_kept_least_recently_used_out(server, checkpoint, monkeypatch):
    monkeypatch.setattr(model_upload, "HELD", 2)
    at = new_app()
    names = []
    for i in range(3):  # the same weights with other class names: three different models
        at = upload(at, f"m{i}.pth", checkpoint, json_names(f"c{i}"))
        assert not at.exception and "Loaded as" in notices(at), notices(at)
        names.append(model_upload.held()[-1])
        if i == 0:
            at.sidebar.selectbox(key="w_model").set_value(names[0]).run()
    assert model_upload.held() == names[1:]
    assert names[0] not in MODELS and not own_models.is_own(names[0])
    assert names[0] not in str(at.sidebar.selectbox(key="w_model").options)
    # this session showed the evicted model: it falls back and says why
    assert at.sidebar.selectbox(key="w_model").value == "detr_shapes"
    assert "removed from memory" in notices(at), notices(at)
    at.run()
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    # the same files again: no new model, the old one moves to the back of the queue
    at = upload(at, "again.pth", checkpoint, json_names("c1"))
    assert model_upload.held() == [names[2], names[1]]


def test_oversize_and_bad_files_get_a_message_and_nothing_is_loaded(server, checkpoint, monkeypatch):
    monkeypatch.setattr(model_upload, "CAP_MB", 1)
    at = new_app()
    at = upload(at, "big.pth", checkpoint)
    assert "at most 1 MB" in notices(at), notices(at)
    assert model_upload.held() == []
    monkeypatch.setattr(model_upload, "CAP_MB", 600)
    at.run()  # the uploader with its new limit (a new widget for Streamlit)
    at = upload(at, "broken.pth", b"not a checkpoint at all")
    message = notices(at)
    assert "was not loaded" in message and "broken" in message, message
    assert "Traceback" not in message and str(server) not in message and "/tmp" not in message, message
    at = upload(at, "code.pth", _pickle_that_runs_code())
    assert "was not loaded" in notices(at), notices(at)
    assert not (server.parent / "pwned").exists()
    at = upload(at, "parts.pth", checkpoint, ("parts.txt", b"only\ntwo"))  # wrong class count
    assert "was not loaded" in notices(at) and "7" in notices(at), notices(at)
    assert model_upload.held() == [] and not at.exception
    assert list(server.iterdir()) == []


def _pickle_that_runs_code() -> bytes:
    class Evil:
        def __reduce__(self):
            return (open, ("pwned", "w"))

    buf = io.BytesIO()
    torch.save({"model": Evil()}, buf)
    return buf.getvalue()
