"""The dashboard's precision choice (ui/precision.py): offered exactly where the device runs a reduced
precision natively. Which CPU CI has must not matter, so `detr_core.models.fast.fast_dtype` is
replaced both ways: "no native reduced precision" (an AVX2-only CPU) and "native bfloat16" (AVX-512
BF16 / AMX). Where bfloat16 is emulated the fast pass is slower but rounds the same way, so the
numbers asserted below hold on any x86 CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

from detr_core import MODELS, load_model  # noqa: E402
from detr_core.analysis.pipeline import analyze  # noqa: E402
from detr_core.models import fast  # noqa: E402
from detr_core.models.fast import optimize_for_inference  # noqa: E402
from ui import caches, precision  # noqa: E402

APP = str(REPO_ROOT / "app.py")
SCENE = 41


@pytest.fixture(autouse=True, scope="module")
def forget_analyses():
    """Leave the process-wide caches as found (other test files count the passes they cause)."""
    yield
    caches.clear_caches()


@pytest.fixture(autouse=True)
def _offline(offline):
    """Every test here runs on an offline machine (tests/conftest.py)."""


@pytest.fixture
def native_bf16(monkeypatch):
    monkeypatch.setattr(fast, "fast_dtype", lambda device: torch.bfloat16)


@pytest.fixture
def no_native(monkeypatch):
    monkeypatch.setattr(fast, "fast_dtype", lambda device: None)


def new_app(**params: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params = {"scene": str(SCENE), **params}
    return at.run()


def precision_radios(at: AppTest) -> list:
    return [r for r in at.sidebar.radio if r.label == "Precision"]


def test_without_native_reduced_precision_there_is_no_choice_and_the_model_page_says_why(no_native):
    at = new_app()
    assert not at.exception
    assert precision_radios(at) == []
    assert at.session_state["_view"].precision == precision.EXACT
    at.switch_page("pages/model.py").run()
    text = " ".join(m.value for m in at.markdown)
    assert "no native bfloat16" in text and "emulated and slower" in text
    assert not [b for b in at.button if b.key == "model_compare"]


def test_a_link_asking_for_fast_mode_where_it_is_absent_gets_exact(no_native):
    at = new_app(prec="fast")
    assert not at.exception and not at.error
    assert at.session_state["_view"].precision == precision.EXACT


def test_with_native_bfloat16_the_choice_runs_the_fast_pass_and_round_trips_through_the_url(native_bf16):
    at = new_app()
    (radio,) = precision_radios(at)
    assert radio.value == precision.EXACT and radio.options == ["exact (float32)", "fast (bfloat16)"]
    runs = caches.model_runs()
    radio.set_value(precision.FAST).run()
    assert not at.exception and not at.error
    view = at.session_state["_view"]
    assert view.precision == precision.FAST and view.key.precision == precision.FAST
    assert caches.model_runs() == runs + 1  # a new pass, in bfloat16
    served = optimize_for_inference(load_model("detr_shapes", device="cpu"))  # as the app serves it
    expected = analyze(served, caches.scene_png(SCENE), "detr_shapes", autocast_dtype=torch.bfloat16)
    threshold = view.threshold
    got, want = view.analysis.detections(threshold), expected.detections(threshold)
    assert got and [(d.query, d.class_id) for d in got] == [(d.query, d.class_id) for d in want]
    assert [d.score for d in got] == pytest.approx([d.score for d in want], abs=1e-6)
    exact = analyze(served, caches.scene_png(SCENE), "detr_shapes")
    assert [d.score for d in got] != [d.score for d in exact.detections(threshold)]  # it did run in bfloat16
    link = dict(at.query_params)
    assert link["prec"] == "fast"
    again = AppTest.from_file(APP, default_timeout=180)
    again.query_params = link
    again.run()
    assert again.session_state["_view"].precision == precision.FAST
    assert precision_radios(again)[0].value == precision.FAST


def test_the_model_page_compares_fast_with_exact_on_demand(native_bf16):
    at = new_app()
    at.switch_page("pages/model.py").run()
    (button,) = [b for b in at.button if b.key == "model_compare"]
    assert "bfloat16" in button.label
    button.click().run()
    assert not at.exception and not at.error
    said = [s.value for s in at.success] + [w.value for w in at.warning]
    threshold = MODELS["detr_shapes"].default_threshold
    assert len(said) == 1 and said[0].startswith(f"At threshold {threshold:.2f}, fast mode")
    assert "finds the same" in said[0]  # detr_shapes' held-out scenes agree (tests/test_agreement.py)
    runs = caches.model_runs()
    at.run()  # cached: asking again runs nothing
    assert caches.model_runs() == runs


def test_labels_and_reasons():
    cpu = torch.device("cpu")
    assert precision.label(precision.EXACT, cpu) == "exact (float32)"
    assert precision.autocast_dtype(precision.EXACT, cpu) is None
    if fast.fast_dtype(cpu) is None:  # this CPU: no native bfloat16
        assert precision.options(cpu) == [precision.EXACT]
        assert precision.autocast_dtype(precision.FAST, cpu) is None
        assert "no native bfloat16" in precision.why_absent(cpu)
    else:
        assert precision.options(cpu) == [precision.EXACT, precision.FAST]
        assert precision.why_absent(cpu) is None
