"""Server options (ui/server_options.py): --no-downloads / DETR_NO_DOWNLOADS=1 keeps the server from
downloading any checkpoint a visitor's link names (issue 12, team demo); the core refuses with a
clear message and never opens a connection."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

from detr_core import CheckpointError  # noqa: E402
from detr_core.models import weights  # noqa: E402
from detr_core.models.zoo import MODELS, model_status  # noqa: E402
from ui import own_models, server_options  # noqa: E402

APP = str(REPO_ROOT / "app.py")
R50 = MODELS["detr_resnet50"]


@pytest.fixture
def no_official(tmp_path, monkeypatch):
    """An empty torch hub cache; every connection attempt is recorded (and fails)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(weights.WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setenv(weights.NO_DOWNLOADS_ENV, "")  # restored (unset) after the test
    opened: list[str] = []

    def recording_urlopen(request, *args, **kwargs):
        opened.append(getattr(request, "full_url", str(request)))
        raise OSError("offline (test)")

    monkeypatch.setattr("urllib.request.urlopen", recording_urlopen)
    return opened


def test_the_core_refuses_to_download_when_told_and_says_why(no_official, monkeypatch, tmp_path):
    assert model_status(R50) == "downloadable"
    monkeypatch.setenv(weights.NO_DOWNLOADS_ENV, "1")
    assert model_status(R50) == "missing"
    with pytest.raises(CheckpointError, match="downloads are turned off here") as err:
        weights.resolve_checkpoint(R50.checkpoint)
    assert str(Path.home()) not in str(err.value) and "/" not in str(err.value)  # no server path
    with pytest.raises(CheckpointError, match="downloads are turned off"):
        weights.download_checkpoint(R50.checkpoint, tmp_path / R50.checkpoint.filename)
    assert no_official == []  # not one connection
    monkeypatch.setenv(weights.NO_DOWNLOADS_ENV, "0")
    assert weights.downloads_allowed()


def test_options_are_read_from_the_arguments_and_the_environment(monkeypatch):
    monkeypatch.delenv(weights.NO_DOWNLOADS_ENV, raising=False)
    monkeypatch.delenv(server_options.ALLOW_UPLOAD_ENV, raising=False)
    assert server_options.options([]) == server_options.ServerOptions(False, False)
    both = server_options.options(["--checkpoint", "a.pth", "--no-downloads", "--allow-checkpoint-upload"])
    assert both == server_options.ServerOptions(True, True)
    monkeypatch.setenv(server_options.ALLOW_UPLOAD_ENV, "1")
    assert server_options.options([]).allow_checkpoint_upload
    assert own_models.parse_args(["--no-downloads", "--checkpoint", "a.pth", "--no-downloads"]) == [
        {"checkpoint": "a.pth"}
    ]


def test_a_deep_link_to_an_official_model_downloads_nothing_with_no_downloads(no_official, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["app.py", "--no-downloads"])
    monkeypatch.setattr(own_models, "_done", False)
    monkeypatch.setattr(own_models, "MODELS_OWN", {})
    monkeypatch.setattr(own_models, "ERRORS", [])
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params = {"model": "detr_resnet101_dc5"}
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    errors = " ".join(e.value for e in at.error)  # the attempt's message, in the page (ui/frame.py)
    assert "is not available" in errors and "is not on this server" in errors, errors
    assert at.sidebar.selectbox(key="w_model").value == "detr_shapes"  # the fallback works
    assert no_official == []
    labels = at.sidebar.selectbox(key="w_model").options  # the picker does not offer downloads
    assert any("needs a file" in label for label in labels) and not any("downloadable" in x for x in labels), labels


def test_the_opening_notice_does_not_offer_downloads_with_no_downloads(no_official, monkeypatch):
    """With no official checkpoint on the machine the explorer opens on detr_shapes with a notice; with
    --no-downloads that notice must not tell the visitor to pick a model to download its weights."""
    monkeypatch.setattr(own_models, "_done", False)
    monkeypatch.setattr(own_models, "MODELS_OWN", {})
    monkeypatch.setattr(own_models, "ERRORS", [])
    notices = {}
    for argv in (["app.py"], ["app.py", "--no-downloads"]):
        monkeypatch.setattr(sys, "argv", argv)
        monkeypatch.setenv(weights.NO_DOWNLOADS_ENV, "")
        at = AppTest.from_file(APP, default_timeout=180)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        notices[len(argv)] = " ".join(i.value for i in at.sidebar.info)
    assert "No official DETR checkpoint" in notices[1] and "to download its weights" in notices[1], notices
    assert "No official DETR checkpoint" in notices[2] and "download its weights" not in notices[2], notices
    assert "does not download checkpoints" in notices[2], notices
