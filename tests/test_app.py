"""The dashboard, page by page, through Streamlit's AppTest (in-process, no browser, no network).

Every test runs the real app with the project's bundled model (`load_model("detr_shapes")`) on small
synthetic scenes (256 px, analyzed at 128 px), so each script run takes well under a second once
the model is loaded. Official checkpoints are never downloaded: the torch hub cache points at an
empty folder and `urlopen` is replaced by one that fails as an offline machine does.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

from detr_core import MODELS, Geometry, load_image, load_model, preprocess  # noqa: E402
from detr_core.analysis import budget  # noqa: E402
from detr_core.models.zoo import SHAPES_CLASSES  # noqa: E402
from ui import caches, view  # noqa: E402
from ui.figures import cell_grid_trace  # noqa: E402
from ui.text import plain  # noqa: E402

APP = str(REPO_ROOT / "app.py")
SHAPES = MODELS["detr_shapes"]
TIMEOUT = 180  # seconds per script run: the first one loads the model on a busy 2-core CPU


@pytest.fixture(scope="module")
def shapes_model():
    """The bundled model, loaded as the app loads it (the tests compare the app's numbers with it)."""
    return load_model("detr_shapes", device="cpu")


@pytest.fixture(scope="module")
def scene(shapes_model) -> int:
    """The first held-out scene in which the bundled model finds at least two shapes at its default
    threshold (the tests that count detections need some; found, not hard-coded, so retraining the
    model does not break them)."""
    threshold = getattr(SHAPES, "default_threshold", 0.9)
    for number in range(caches.SCENE_COUNT):
        if len(expected_detections(shapes_model, number, threshold)) >= 2:
            return number
    raise AssertionError("the bundled model finds two shapes in none of the held-out scenes")


@pytest.fixture(autouse=True)
def _offline(offline):
    """Every test here runs on an offline machine (tests/conftest.py)."""


def new_app(**query_params: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params = dict(query_params)
    return at.run()


def no_problems(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def scene_geometry(number: int) -> Geometry:
    image = load_image(caches.scene_png(number))
    return preprocess(image, 16, SHAPES.min_size, SHAPES.max_size).geometry


def expected_detections(model, number: int, threshold: float):
    from detr_core.analysis.pipeline import analyze

    return analyze(model, caches.scene_png(number), "detr_shapes").detections(threshold)


def switch(at: AppTest, page: str) -> AppTest:
    return at.switch_page(f"pages/{page}.py").run()


def session_runs(at: AppTest) -> int:
    key = caches.SESSION_RUNS_KEY
    return at.session_state[key] if key in at.session_state else 0  # noqa: SIM401 (no .get here)


# ------------------------------------------------------------------------------------------------
# Opening, the sidebar, caching


def test_opens_on_detr_shapes_with_a_synthetic_scene_and_a_notice(scene):
    at = new_app()
    no_problems(at)
    assert at.session_state["w_model"] == "detr_shapes"
    assert at.session_state["w_source"] == "scene"
    notice = " ".join(texts(at.sidebar.info))
    assert "No official DETR checkpoint" in notice and "detr_shapes" in notice
    assert at.slider(key="w_threshold").value == pytest.approx(getattr(SHAPES, "default_threshold", 0.9))
    captions = texts(at.sidebar.caption)
    assert any(c.startswith("model runs (this session): ") for c in captions)
    assert at.query_params["model"] == "detr_shapes" and at.query_params["page"] == "detect"


def test_the_picker_says_a_model_cannot_be_downloaded_when_its_host_does_not_answer():
    """Issue #13 item 4: offline, the official models are not "downloadable, 159 MB" but say why not."""
    caches.HOST_CHECK.reset()
    at = new_app()
    caches.HOST_CHECK.wait()  # the probe runs in the background (urlopen fails at once here)
    at.run()
    labels = at.selectbox(key="w_model").options
    assert not any("downloadable" in o for o in labels), labels
    assert any(o.startswith("DETR R50 (needs download, host unreachable") for o in labels), labels
    assert any("(available)" in o for o in labels)


def test_detect_page_lists_the_detections_of_a_synthetic_scene(shapes_model, scene):
    at = new_app(scene=str(scene))
    no_problems(at)
    threshold = at.slider(key="w_threshold").value
    expected = expected_detections(shapes_model, scene, threshold)
    assert expected, "the bundled model should find the shapes of held-out scene 1"
    table = at.dataframe[0].value
    assert len(table) == len(expected)
    assert list(table["query"]) == [d.query for d in expected]
    assert set(table["class"]) <= set(SHAPES_CLASSES)
    assert list(table.columns[:4]) == ["class", "class_id", "score", "query"]
    assert any("inference:" in c for c in texts(at.caption))
    assert [b.label for b in at.download_button] == ["Annotated PNG", "Detections JSON", "Detections CSV"]
    assert any(f"{len(expected)} of {len(expected)} detections" in s for s in texts(at.subheader))


def test_a_threshold_above_every_score_says_nothing_was_found(scene):
    at = new_app(scene=str(scene))
    at.slider(key="w_threshold").set_value(1.0).run()
    no_problems(at)
    assert any("Nothing above the threshold 1.00" in i for i in texts(at.info))
    assert not at.dataframe


def test_pages_sliders_and_picks_never_rerun_the_model():
    caches.clear_caches()  # the new image below (scene 3) must not be cached by an earlier test file
    at = new_app(scene="2")
    no_problems(at)
    runs = caches.model_runs()
    for page in ("encoder", "decoder", "model", "guide", "detect", "encoder"):
        switch(at, page)
        no_problems(at)
    at.segmented_control(key="p_enc_layer").set_value("1").run()
    at.radio(key="p_enc_direction").set_value("looked_at").run()
    at.slider(key="w_threshold").set_value(0.5).run()
    switch(at, "decoder")
    no_problems(at)
    assert caches.model_runs() == runs
    assert f"model runs (this session): {session_runs(at)}" in texts(at.sidebar.caption)
    at.number_input(key="w_scene").set_value(3).run()  # a new image: one new run
    assert caches.model_runs() == runs + 1


# ------------------------------------------------------------------------------------------------
# Encoder


def test_encoder_page_shows_the_feature_map_facts_and_the_reference_points(scene):
    at = switch(new_app(scene=str(scene)), "encoder")
    no_problems(at)
    g = scene_geometry(scene)
    text = " ".join(texts(at.markdown))
    assert f"Feature map shape: `[1, 192, {g.feat_h}, {g.feat_w}]`" in text
    assert f"tokens: {g.feat_h} x {g.feat_w} = {g.tokens}" in text
    assert f"self-attention reshaped: `[{g.feat_h}, {g.feat_w}, {g.feat_h}, {g.feat_w}]`" in text
    assert f"stride: {g.stride} px" in text
    # the newest of the notebook's reference points, (y, x) = (440, 800) in its 1066 x 800 input, scaled
    row, col = g.pixel_to_cell(*g.to_original(800 * g.input_w / 1066, 440 * g.input_h / 800))
    assert f"Selected cell: **({row}, {col})**" in text
    assert len(at.get("plotly_chart")) >= 1


def test_encoder_controls_cover_layers_rollout_and_every_head(scene):
    at = switch(new_app(scene=str(scene)), "encoder")
    assert at.segmented_control(key="p_enc_layer").options == ["1", "2", "3", "mean", "rollout"]
    at.segmented_control(key="p_enc_layer").set_value("rollout").run()
    no_problems(at)
    assert at.segmented_control(key="p_enc_head").disabled
    at.segmented_control(key="p_enc_layer").set_value("2").run()
    head = at.segmented_control(key="p_enc_head")
    assert head.options == ["mean", *(str(i) for i in range(1, 9)), "all heads (grid)"] and not head.disabled
    head.set_value("all heads (grid)").run()
    no_problems(at)
    assert any(s.startswith("Every head of layer 2") for s in texts(at.subheader))
    heads = [c for img in at.image for c in img.captions if c.startswith("head ")]
    assert heads == [f"head {i}" for i in range(1, 9)]


def test_a_clicked_point_from_the_url_selects_its_cell(scene):
    g = scene_geometry(scene)
    at = new_app(page="encoder", scene=str(scene), pts="20,100")
    no_problems(at)
    row, col = g.pixel_to_cell(20, 100)
    assert f"Selected cell: **({row}, {col})**" in " ".join(texts(at.markdown))
    assert at.query_params["pts"] == "20,100"


@pytest.mark.parametrize(
    ("orig", "min_size", "stride"),
    [((256, 256), 128, 16), ((451, 300), 128, 16), ((600, 400), 800, 32), ((640, 427), 800, 16), ((97, 1301), 64, 32)],
)
def test_click_markers_map_every_point_to_the_cell_that_holds_it(orig, min_size, stride):
    """The nearest transparent marker to any point of the photo (in screen pixels, at any display
    scale) carries the (row, col) that Geometry.pixel_to_cell gives for that point."""
    from detr_core.io.image import resized_size

    w, h = orig
    in_w, in_h = resized_size(w, h, min_size, 1333)
    g = Geometry(h, w, in_h, in_w, -(-in_h // stride), -(-in_w // stride), stride)
    trace = cell_grid_trace(g, 400, "white")
    xs, ys, cells = list(trace.x), list(trace.y), [tuple(c) for c in trace.customdata]
    assert set(cells) == {(r, c) for r in range(g.feat_h) for c in range(g.feat_w)}
    assert all(0 <= x <= w and 0 <= y <= h for x, y in zip(xs, ys, strict=True))
    rng = random.Random(0)
    for scale_x, scale_y in ((1.0, 1.0), (0.37, 0.37), (2.5, 2.5)):
        for _ in range(400):
            x, y = rng.uniform(0, w), rng.uniform(0, h)
            best = min(range(len(xs)), key=lambda i: ((xs[i] - x) * scale_x) ** 2 + ((ys[i] - y) * scale_y) ** 2)
            assert cells[best] == g.pixel_to_cell(x, y), (x, y)


# ------------------------------------------------------------------------------------------------
# Decoder


def test_decoder_page_shows_one_panel_per_detection_and_the_picked_one(shapes_model, scene):
    at = new_app(scene=str(scene))
    threshold = at.slider(key="w_threshold").value
    expected = expected_detections(shapes_model, scene, threshold)
    switch(at, "decoder")
    no_problems(at)
    captions = " ".join(c for img in at.image for c in img.captions)
    for det in expected[:8]:  # the panels: one picture, its caption naming each detection's query
        assert f"query id: {det.query} · {det.class_name} ({det.score:.2f})" in captions
    picked = expected[-1]
    at.selectbox(key="p_dec_pick").set_value(picked.query).run()
    no_problems(at)
    assert f"**Selected detection: query {picked.query} · {picked.class_name}" in " ".join(texts(at.markdown))
    assert at.query_params["q"] == str(picked.query)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["inside its box"].endswith("%") and metrics["chance"].endswith("%")
    assert 0.0 <= float(metrics["entropy"]) <= 1.0


def test_relevance_is_computed_on_demand_once_per_query(scene):
    at = switch(new_app(scene=str(scene)), "decoder")
    model_runs, relevance_runs = caches.model_runs(), caches.relevance_runs()
    at.radio(key="p_dec_mode").set_value("relevance (Chefer et al.)").run()
    no_problems(at)
    assert at.selectbox(key="p_dec_layer").disabled
    assert "inside its box" in {m.label for m in at.metric}
    assert any("relevance of query" in c for img in at.image for c in img.captions)
    done = caches.relevance_runs()
    assert done in (relevance_runs, relevance_runs + 1)  # 0 when an earlier test cached this one
    switch(at, "guide")
    switch(at, "decoder")
    assert caches.relevance_runs() == done and caches.model_runs() == model_runs


def test_relevance_is_offered_for_every_zoo_model_at_the_default_size():
    """The budget admits R50-DC5 (and R101-DC5) at 800/1333: 50 x 84 = 4,200 feature cells, about 1.3 GB;
    and so rollout maps and every layer's entropy there."""
    for request in ("relevance", "rollout", "entropy"):
        assert budget.check_budget(request, 50 * 84).ok, request
    assert budget.estimate("relevance", 50 * 84).gigabytes < 1.5
    assert budget.estimate("relevance", 3350).gigabytes == pytest.approx(0.97, abs=0.1)  # R50-DC5 800x1066


def _tiny_budget(monkeypatch, request: str) -> None:
    """A server whose budget for `request` fits no image at all (detr_shapes scenes have 64+ cells)."""
    monkeypatch.setitem(budget.DEFAULT_BUDGETS, request, budget.Budget(seconds=1e-3, gigabytes=1e-3))


def test_rollout_and_entropy_over_the_budget_are_refused_with_what_to_lower(scene, monkeypatch):
    at = switch(new_app(scene=str(scene)), "encoder")
    _tiny_budget(monkeypatch, "rollout")
    at.segmented_control(key="p_enc_layer").set_value("rollout").run()
    no_problems(at)
    info = " ".join(i.value for i in at.info)
    assert "a rollout map at" in info and "feature cells" in info and "Showing the mean over layers" in info
    assert any("layer mean" in m for m in texts(at.markdown))
    _tiny_budget(monkeypatch, "entropy")
    switch(at, "guide")
    no_problems(at)
    assert any("the entropy of every encoder layer at" in i.value for i in at.info)
    assert not at.metric  # nothing measured


def test_relevance_too_big_for_the_server_is_refused_with_a_message(scene, monkeypatch):
    """Over the server's relevance budget (detr_core.analysis.budget) the page explains instead of
    running a pass that could take gigabytes, and shows raw attention with its controls enabled."""
    at = switch(new_app(scene=str(scene)), "decoder")
    _tiny_budget(monkeypatch, "relevance")
    relevance_runs = caches.relevance_runs()
    at.radio(key="p_dec_mode").set_value("relevance (Chefer et al.)").run()
    no_problems(at)
    assert any("Not offered at this size: a relevance map at" in i.value and "cells" in i.value for i in at.info)
    assert not at.selectbox(key="p_dec_layer").disabled
    assert any("cross-attention of query" in c for img in at.image for c in img.captions)
    assert caches.relevance_runs() == relevance_runs


# ------------------------------------------------------------------------------------------------
# Model and guide


def test_model_page_shows_the_architecture_parameters_and_shapes(shapes_model, scene):
    at = switch(new_app(scene=str(scene)), "model")
    no_problems(at)
    code = [c.value for c in at.code]
    assert any(c.startswith("DETR(") and "(transformer): Transformer(" in c and "(backbone)" in c for c in code)
    parts = at.dataframe[0].value
    total = sum(p.numel() for p in shapes_model.parameters())
    assert int(parts.loc[parts["part"] == "Total", "parameters"].iloc[0]) == total
    assert int(parts.loc[parts["part"] != "Total", "parameters"].sum()) == total
    assert {"Backbone (CNN)", "Transformer encoder", "Transformer decoder", "Object queries"} <= set(parts["part"])
    shapes = at.dataframe[1].value.set_index("tensor")["shape"]
    g = scene_geometry(scene)
    assert shapes["input"] == f"[1, 3, {g.input_h}, {g.input_w}]"
    assert shapes["pred_logits"] == f"[1, 20, {len(SHAPES_CLASSES) + 1}]"
    assert shapes["encoder tokens"] == f"[{g.tokens}, 1, 128]"


def test_guide_page_measures_its_claims_on_the_current_image(shapes_model, scene):
    from detr_core.analysis import stats
    from detr_core.analysis.pipeline import analyze

    at = switch(new_app(scene=str(scene)), "guide")
    no_problems(at)
    analysis = analyze(shapes_model, caches.scene_png(scene), "detr_shapes")
    metrics = {m.label: m.value for m in at.metric}
    enc = stats.encoder_entropy(analysis, analysis.enc_layers - 1)
    assert metrics["encoder entropy (last layer, mean over locations)"] == f"{enc:.3f}"
    assert "decoder entropy (mean over detections)" in metrics
    layers = at.dataframe[0].value
    assert list(layers["layer"]) == [1, 2, 3]
    distance = stats.mean_attention_distance(analysis, 0)
    assert layers["mean attention distance (px)"].iloc[0] == pytest.approx(round(distance, 1))
    text = " ".join(texts(at.markdown))
    assert "falls inside its own box" in text and "%" in text


# ------------------------------------------------------------------------------------------------
# Bad input, other images, models, deep links


def _truncated_png() -> bytes:
    data = caches.scene_png(7)
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("notes.txt", b"this is not an image at all", "not an image we can read"),
        ("empty.png", b"", "empty"),
        ("cut.png", None, "truncated or corrupt"),
    ],
    ids=["not-an-image", "zero-bytes", "truncated"],
)
def test_a_bad_upload_shows_a_message_and_the_app_keeps_working(name, data, message, scene):
    at = new_app(scene=str(scene))
    at.radio(key="w_source").set_value("upload").run()
    assert any("Upload a photo" in i for i in texts(at.info))
    data = _truncated_png() if data is None else data
    at.file_uploader(key="w_upload").set_value((name, data, "application/octet-stream")).run()
    assert not at.exception
    errors = " ".join(texts(at.error))
    assert message in errors and plain(name) in errors  # the name shows as plain text (ui/text.py)
    assert "Traceback" not in errors
    at.file_uploader(key="w_upload").set_value(("good.png", caches.scene_png(4), "image/png")).run()
    no_problems(at)
    assert at.dataframe or any("Nothing above the threshold" in i for i in texts(at.info))


def test_a_sample_photo_runs_with_a_hint_that_detr_shapes_knows_only_shapes(scene):
    at = new_app(scene=str(scene))
    at.radio(key="w_source").set_value("sample").run()
    at.selectbox(key="w_sample").set_value("chelsea.png").run()
    no_problems(at)
    assert any("only knows synthetic shapes" in c for c in texts(at.sidebar.caption))
    assert at.query_params["sample"] == "chelsea.png" and at.query_params["src"] == "sample"


def test_an_official_model_without_its_weights_keeps_the_session_on_its_model(scene):
    at = new_app(scene=str(scene))
    at.selectbox(key="w_model").set_value("detr_resnet50").run()
    assert not at.exception
    assert at.session_state["w_model"] == "detr_shapes"
    message = " ".join(texts(at.error))
    filename = MODELS["detr_resnet50"].checkpoint.filename
    assert filename in message and "Still showing DETR shapes" in message and "Model page" in message
    assert not at.sidebar.error  # in the page, where a phone shows it too
    assert at.dataframe  # the page works on the bundled model


def test_a_deep_link_reopens_the_same_view(scene):
    at = new_app(page="decoder", model="detr_shapes", src="scene", scene="5", thr="0.5")
    no_problems(at)
    assert at.header[0].value == "Decoder attention"
    assert at.number_input(key="w_scene").value == 5
    assert at.slider(key="w_threshold").value == pytest.approx(0.5)
    link = dict(at.query_params)
    assert link["page"] == "decoder" and link["scene"] == "5" and link["thr"] == "0.50"
    again = new_app(**link)
    no_problems(again)
    assert again.header[0].value == "Decoder attention"
    assert texts(again.markdown) == texts(at.markdown)


def test_an_unexpected_error_shows_a_friendly_message_not_a_traceback(monkeypatch, caplog, scene):
    from ui import compute

    def broken(*args, **kwargs):
        raise RuntimeError("boom: an internal bug")

    monkeypatch.setattr(compute, "encoder_facts", broken)
    at = switch(new_app(scene=str(scene)), "encoder")
    assert not at.exception
    errors = " ".join(texts(at.error))
    assert "Something went wrong while drawing the Encoder attention page" in errors
    assert "boom" not in errors and "Traceback" not in errors
    assert "boom: an internal bug" in caplog.text  # the traceback is logged on the server
    assert any(c.startswith("model runs (this session): ") for c in texts(at.sidebar.caption))  # the sidebar works


def test_the_downloads_hold_class_name_id_score_query_and_xyxy_box(shapes_model, scene):
    import csv
    import json

    from ui import compute

    detections = expected_detections(shapes_model, scene, 0.0)[:3]
    rows = list(csv.DictReader(compute.detections_csv(detections).splitlines()))
    assert [r["query"] for r in rows] == [str(d.query) for d in detections]
    assert list(rows[0]) == ["class_name", "class_id", "score", "query", "x0", "y0", "x1", "y1"]
    data = json.loads(compute.detections_json(detections, {"model": "detr_shapes"}))
    assert data["model"] == "detr_shapes"
    assert [d["box_xyxy"] for d in data["detections"]] == [list(d.box) for d in detections]
    assert compute.annotated_png(load_image(caches.scene_png(scene)), detections).startswith(b"\x89PNG")


def test_model_page_builds_detr_demo_for_a_chosen_number_of_classes(scene):
    at = switch(new_app(scene=str(scene)), "model")
    assert any("class DETRdemo" in c.value for c in at.code)  # its source
    at.number_input(key="p_model_classes").set_value(10).run()
    at.button(key="model_build").click().run()
    no_problems(at)
    assert any("num_classes=10" in c.value for c in at.code)
    parts = at.dataframe[-1].value.set_index("part")["parameters"]
    assert parts["Prediction heads (class + box)"] == (256 + 1) * (10 + 1) + (256 + 1) * 4
    assert parts["Object queries"] == 100 * 256 and parts["Learned positions"] == 2 * 50 * 128


def test_a_download_reports_progress_and_a_failed_one_falls_back(monkeypatch, scene):
    from detr_core import CheckpointError
    from detr_core.models import weights

    reported = []

    def fake_resolve(info, path=None, progress=None):
        for done in (0, 40, 100):
            progress(done, 100)
            reported.append(done)
        raise CheckpointError(f"the download of {info.filename} is corrupt (test)")

    at = new_app(scene=str(scene))
    monkeypatch.setattr(weights, "resolve_checkpoint", fake_resolve)
    at.selectbox(key="w_model").set_value("detr_resnet101").run()
    assert not at.exception
    assert reported == [0, 40, 100]
    assert at.session_state["w_model"] == "detr_shapes"
    assert "detr-r101-2c7b67e5.pth could not be downloaded" in " ".join(texts(at.error))


# ------------------------------------------------------------------------------------------------
# One view state (issue #13)

# A non-default value for every URL field, and the page that shows it. A field a page declares
# without an entry here fails test_every_view_field_round_trips_through_the_url.
NON_DEFAULT = {
    "detect": {"model": "detr_shapes", "src": "scene", "scene": "7", "thr": "0.55", "min": "96", "max": "640"},
    "sample": {"src": "sample", "sample": "chelsea.png", "thr": "0.30"},
    "encoder": {
        "enc_dir": "looked_at",
        "enc_layer": "rollout",
        "enc_head": "3",
        "pts": "20,100;60,30",
        "four_dir": "looks",
    },
    "encoder-grid": {"enc_layer": "mean", "enc_head": "grid"},
    "decoder": {"dec_mode": "relevance", "dec_layer": "1", "dec_head": "2", "thr": "0.00", "q": "5"},
}
# the image URL: tests/test_fetch.py; the class filter: below; the precision: tests/test_precision.py
COVERED_ELSEWHERE = {"url", "hide", "prec"}


def _widget_values(at: AppTest) -> dict[str, object]:
    """Every declared field's value in this session (the view as the session holds it)."""
    return {name: at.session_state[f.key] for name, f in view.FIELDS.items() if f.key in at.session_state}


@pytest.mark.parametrize("case", list(NON_DEFAULT))
def test_every_view_field_round_trips_through_the_url(case):
    """Issue #13 item 2: set each field to a non-default value (through the session, as a widget does),
    open the URL the app wrote in a fresh session, and get the same view back."""
    page = case.split("-")[0] if case != "sample" else "detect"
    wanted = NON_DEFAULT[case]
    at = new_app()
    if page != "detect":
        switch(at, page)
    for name, text in wanted.items():
        f = view.FIELDS[name]
        at.session_state[f.key] = f.parse(text)
        if f.per_image:  # set by a click for the image shown
            at.session_state[f"{f.key}_for"] = None
    at.run()
    no_problems(at)
    link = dict(at.query_params)
    assert link["page"] == page
    for name, text in wanted.items():
        assert view.FIELDS[name].parse(link[name]) == view.FIELDS[name].parse(text), (name, link)
    before = _widget_values(at)
    again = new_app(**link)
    no_problems(again)
    assert again.header[0].value == at.header[0].value
    after = _widget_values(again)
    for name in wanted:
        assert after[name] == before[name], name
    assert dict(again.query_params) == link
    assert texts(again.markdown) == texts(at.markdown)


def test_the_round_trip_test_covers_every_declared_field():
    new_app()
    for page in ("encoder", "decoder"):  # their scripts declare their fields when they run
        switch(new_app(), page)
    covered = {name for values in NON_DEFAULT.values() for name in values} | COVERED_ELSEWHERE
    assert set(view.FIELDS) <= covered, set(view.FIELDS) - covered


def test_the_detect_class_filter_round_trips_through_the_url(scene):
    at = new_app(scene=str(scene))
    box = at.multiselect[0]
    assert len(box.options) >= 1
    hidden = box.options[0]
    box.unselect(hidden).run()
    no_problems(at)
    link = dict(at.query_params)
    assert link["hide"] == hidden
    again = new_app(**link)
    assert again.multiselect[0].value == at.multiselect[0].value
    assert again.dataframe[0].value.equals(at.dataframe[0].value)
    assert hidden not in set(again.dataframe[0].value["class"])


def _upload(at: AppTest, number: int, name: str = "mine.png") -> AppTest:
    at.radio(key="w_source").set_value("upload").run()
    return at.file_uploader(key="w_upload").set_value((name, caches.scene_png(number), "image/png")).run()


def test_a_failed_model_switch_changes_nothing_else(scene):
    """Issue #13 item 1: the upload, threshold, page and points stay; the session stays on its model."""
    at = _upload(new_app(scene=str(scene)), scene)
    at.slider(key="w_threshold").set_value(0.42).run()
    switch(at, "encoder")
    at.session_state["enc_points"] = [(20.0, 100.0)]
    at.run()
    no_problems(at)
    before = (dict(at.query_params), texts(at.markdown), [c for img in at.image for c in img.captions])
    at.selectbox(key="w_model").set_value("detr_resnet50").run()
    assert not at.exception
    assert at.session_state["w_model"] == "detr_shapes"
    assert at.session_state["w_source"] == "upload" and at.file_uploader(key="w_upload").value is not None
    assert at.slider(key="w_threshold").value == pytest.approx(0.42)
    assert at.header[0].value == "Encoder attention"
    assert at.session_state["enc_points"] == [(20.0, 100.0)]
    after = (dict(at.query_params), [m for m in texts(at.markdown) if "is not available" not in m])
    assert after[0] == before[0]
    assert after[1] == before[1]
    assert [c for img in at.image for c in img.captions] == before[2]


def test_an_unavailable_model_in_a_link_changes_nothing_else(scene):
    link = {"model": "detr_resnet50", "src": "sample", "sample": "chelsea.png", "thr": "0.42", "page": "decoder",
            "dec_head": "2"}  # fmt: skip
    at = new_app(**link)
    assert not at.exception
    ss = at.session_state
    assert ss["w_model"] == "detr_shapes"
    assert (ss["w_source"], ss["w_sample"], ss["w_threshold"]) == ("sample", "chelsea.png", 0.42)
    assert at.header[0].value == "Decoder attention"
    assert ss["p_dec_head"] == "2"
    assert any("DETR R50 is not available" in e for e in texts(at.error))
    assert {k: at.query_params[k] for k in link if k != "model"} == {k: v for k, v in link.items() if k != "model"}


def test_a_failed_pick_s_message_is_short_has_no_path_and_goes_with_the_next_action(scene, tmp_path, caplog):
    """Issue #13 item 3."""
    at = new_app(scene=str(scene))
    at.selectbox(key="w_model").set_value("detr_resnet50").run()
    errors = texts(at.error)
    assert len(errors) == 1
    message = errors[0]
    assert len(message.splitlines()) <= 3
    for secret in (str(tmp_path), "torch_home", "/hub/", "Traceback", "DETR_WEIGHTS_DIR"):
        assert secret not in message, secret
    assert str(tmp_path) in caplog.text  # where it looked is in the server log
    at.run()  # a rerun without an action: still there
    assert texts(at.error) == errors
    at.slider(key="w_threshold").set_value(0.5).run()  # the next action: gone
    assert not at.error
    at.selectbox(key="w_model").set_value("detr_resnet50").run()  # again, then dismissed
    assert len(at.error) == 1
    next(b for b in at.button if b.label == "Dismiss").click().run()
    assert not at.error
    switch(at, "model")  # where checkpoint files go is on the Model page
    assert any("DETR_WEIGHTS_DIR" in e for e in texts(at.markdown))


def test_detect_opens_with_what_the_tool_is_and_where_to_go():
    """Issue #13 item 6 (the first paint's timing: tests/test_browser.py)."""
    at = new_app()
    intro = texts(at.markdown)
    assert any("Encoder attention" in m and "Decoder attention" in m and "click a pixel" in m for m in intro), intro


def test_the_detections_shown_belong_to_the_threshold_shown(shapes_model, scene):
    """Issue #13 item 11: the table's heading says the threshold it was computed for, the slider's."""
    at = new_app(scene=str(scene))
    for value in (0.5, 0.95, 0.3):
        at.slider(key="w_threshold").set_value(value).run()
        expected = expected_detections(shapes_model, scene, value)
        heading = f"{len(expected)} of {len(expected)} detections at threshold {value:.2f}"
        if expected:
            assert heading in texts(at.subheader), texts(at.subheader)
            assert len(at.dataframe[0].value) == len(expected)


def test_model_runs_are_counted_per_session(scene):
    """Issue #13 item 12: a visitor who opens an image another one already ran sees 0 runs."""
    first = new_app(scene=str(scene + 1))
    assert caches.model_runs() >= 1
    second = new_app(scene=str(scene + 1))
    assert "model runs (this session): 0" in texts(second.sidebar.caption)
    assert session_runs(first) in (0, 1)


@pytest.mark.parametrize("page", ["detect", "encoder", "decoder", "model", "guide"])
def test_every_page_names_the_active_model_in_its_header(page):
    """Issue #13 item 13: visible where a phone's collapsed sidebar hides the picker."""
    at = new_app(page=page)
    title = MODELS["detr_shapes"].title
    assert any(m.startswith("**DETR Attention Explorer** · model: ") and title in m for m in texts(at.markdown))


def test_messages_for_visitors_name_no_server_folder_and_stay_short():
    from ui.frame import visitor_text

    text = visitor_text("put x.pth in /home/alice/.cache/torch/hub/checkpoints\nor C:\\Users\\bob\\w\nthree\nfour")
    assert "alice" not in text and "bob" not in text and ".cache" not in text
    assert text.startswith("put x.pth in …/checkpoints") and len(text.splitlines()) == 3
    assert (
        visitor_text("from https://dl.fbaipublicfiles.com/detr/x.pth")
        == "from https://dl.fbaipublicfiles.com/detr/x.pth"
    )


# ------------------------------------------------------------------------------------------------
# Issue 13, items 7-10, downloads and "all detections"


def test_encoder_layer_options_are_visible_rollout_is_legible_and_the_cell_outlined_on_every_map(scene):
    """Item 7: a segmented control shows 1..N, mean and rollout at once; the rollout map leaves the
    cell's own (identity) share out of its colour scale and says so; the cell is outlined on the map."""
    at = switch(new_app(scene=str(scene)), "encoder")
    control = at.segmented_control(key="p_enc_layer")
    assert control.options == ["1", "2", "3", "mean", "rollout"] and control.value == "3"
    captions = [c for img in at.image for c in img.captions]
    assert any(c.startswith("map of cell") and "the cell outlined" in c for c in captions)
    control.set_value("rollout").run()
    no_problems(at)
    captions = [c for img in at.image for c in img.captions]
    assert any(c.startswith("map of cell") and "left out of the colour scale" in c for c in captions)


def test_rollout_display_leaves_the_own_cell_out_of_the_colour_scale_and_keeps_the_exact_map(shapes_model, scene):
    from detr_core.analysis.pipeline import analyze
    from ui import compute

    analysis = analyze(shapes_model, caches.scene_png(scene), "detr_shapes")
    g = analysis.geometry
    result = compute.encoder_result(analysis, g.orig_w / 2, g.orig_h / 2, "rollout", "mean", "looks")
    shown, share = compute.display_map(result, "rollout")
    others = np.delete(result.map.reshape(-1), result.row * g.feat_w + result.col)
    assert result.map[result.row, result.col] > others.max()  # the identity term dominates
    assert shown[result.row, result.col] == pytest.approx(others.max())
    assert np.array_equal(np.delete(shown.reshape(-1), result.row * g.feat_w + result.col), others)
    assert 0 < share < 1
    plain = compute.encoder_result(analysis, g.orig_w / 2, g.orig_h / 2, "2", "mean", "looks")
    assert compute.display_map(plain, "2") == (plain.map, None)


def test_cached_cell_maps_and_pictures_are_the_core_s_and_keep_analyses_apart(shapes_model, scene):
    """The encoder page's per-cell caches (ui/compute.cell_result, encoder_picture) give exactly what the
    uncached path gives, for every cell, layer, head and direction, and two analyses never share an entry."""
    from detr_core.analysis.pipeline import analyze
    from ui import compute

    first = analyze(shapes_model, caches.scene_png(scene), "detr_shapes")
    other = analyze(shapes_model, caches.scene_png(scene + 1), "detr_shapes")
    g = first.geometry
    photo = Image.new("RGB", (g.orig_w, g.orig_h), (120, 90, 60))
    for key, analysis in (("first", first), ("other", other)):
        for row, col in ((0, 0), (g.feat_h - 1, g.feat_w - 1), (g.feat_h // 2, 1)):
            x, y = g.cell_center(row, col)
            for layer, head, direction in (  # neighbours differ in one of the three
                ("1", "mean", "looks"),
                ("1", "mean", "looked_at"),
                ("1", "2", "looked_at"),
                ("mean", "2", "looked_at"),
                ("rollout", "mean", "looks"),
            ):
                for _ in range(2):  # the second call is served from the caches
                    cached = compute.cell_result(key, analysis, x + 0.3, y - 0.2, layer, head, direction)
                    plain = compute.encoder_result(analysis, x + 0.3, y - 0.2, layer, head, direction)
                    assert (
                        (cached.row, cached.col, cached.token)
                        == (plain.row, plain.col, plain.token)
                        == (row, col, g.token(row, col))
                    )
                    np.testing.assert_array_equal(cached.map, plain.map)
                    assert not cached.map.flags.writeable
                    shown, _ = compute.display_map(plain, layer)
                    np.testing.assert_array_equal(
                        np.asarray(compute.encoder_picture(cached, layer, g)),
                        np.asarray(compute.heatmap_image(shown, g)),
                    )
                    np.testing.assert_array_equal(
                        np.asarray(compute.encoder_picture(cached, layer, g, photo)),
                        np.asarray(compute.overlay_image(photo, shown, g)),
                    )
    assert not np.array_equal(
        compute.cell_result("first", first, 1, 1, "1", "mean", "looks").map,
        compute.cell_result("other", other, 1, 1, "1", "mean", "looks").map,
    )


def test_cached_query_maps_are_the_core_s_and_keep_analyses_apart(shapes_model, scene):
    """The decoder page's per-query cache (ui/compute.query_map) gives exactly detr_core's decoder_map for
    every query, layer and head, and two analyses never share an entry."""
    import torch

    from detr_core.analysis import attention
    from detr_core.analysis.pipeline import analyze
    from ui import compute

    first = analyze(shapes_model, caches.scene_png(scene), "detr_shapes")
    other = analyze(shapes_model, caches.scene_png(scene + 1), "detr_shapes")
    for key, analysis in (("first", first), ("other", other)):
        for query in (0, analysis.num_queries - 1):
            for layer, head in (("1", "mean"), ("1", "2"), ("mean", "2"), (str(analysis.dec_layers), "mean")):
                expected = attention.decoder_map(
                    analysis, query, layer=compute.layer_arg(layer), head=compute.head_arg(head)
                )
                for _ in range(2):  # the second call is served from the cache
                    torch.testing.assert_close(
                        compute.query_map(key, analysis, query, layer, head), expected, rtol=0, atol=0
                    )
    assert not torch.equal(
        compute.query_map("first", first, 0, "1", "mean"), compute.query_map("other", other, 0, "1", "mean")
    )


def test_a_finished_figure_sends_what_the_figure_would_and_makes_its_dict_once(scene):
    """figures.finished: Streamlit serialises a figure through `to_dict()` in every run (a deep copy and a
    walk of every value); a finished figure makes that dict once and sends the same JSON as the figure."""
    import plotly.io as pio
    import plotly.tools as pt

    from ui import figures

    g = scene_geometry(scene)
    photo = Image.new("RGB", (g.orig_w, g.orig_h), (10, 20, 30))

    def sent(fig) -> str:  # what st.plotly_chart does with a figure
        return pio.to_json(pt.return_figure_from_figure_or_data(fig, validate_figure=True), validate=False)

    plain = sent(figures.cells_figure(photo, g, 300, "red"))
    fin = figures.finished(figures.cells_figure(photo, g, 300, "red"))
    assert isinstance(fin, figures.FinishedFigure)
    assert sent(fin) == plain and sent(fin) == plain
    assert fin.to_dict() is fin.to_dict()


def chart(at: AppTest):
    """The page's one Plotly chart proto (its id is what the browser keys the chart by)."""
    (element,) = at.get("plotly_chart")
    return element.proto


def test_a_pick_or_a_click_re_sends_the_same_chart(scene):
    """Streamlit derives a chart's id from its whole spec, and the browser builds a chart with a new id from
    scratch (250-700 ms of each click for an R50 photo, benchmarks/interaction.py). So picking another
    detection, changing the decoder's layer, or adding encoder points leaves the clickable figure as it was
    (same id, same spec); the encoder's reset makes it a new chart (the browser forgets the last click).
    Detect's figure is kept while the same boxes are shown (`state.kept`)."""
    at = switch(new_app(scene=str(scene), thr="0.00"), "decoder")
    queries = at.selectbox(key="p_dec_pick").options
    first = chart(at)
    at.selectbox(key="p_dec_pick").set_value(queries[-1]).run()
    at.selectbox(key="p_dec_layer").set_value("1").run()
    no_problems(at)
    assert f"Selected detection: query {queries[-1].split(':')[0].split()[-1]} " in " ".join(texts(at.markdown))
    assert (chart(at).id, chart(at).spec) == (first.id, first.spec)

    at = switch(at, "encoder")
    before = chart(at)  # the notebook's four reference points
    g = scene_geometry(scene)
    corners = [(10, 10), (g.orig_w - 5, 10), (10, g.orig_h - 5), (g.orig_w - 5, g.orig_h - 5)]
    for points in (corners, corners[::-1]):  # four new points, then another newest one
        at.session_state["enc_points"] = points
        at.run()
        no_problems(at)
        row, col = g.pixel_to_cell(*points[-1])
        assert f"Selected cell: **({row}, {col})**" in " ".join(texts(at.markdown))
        assert (chart(at).id, chart(at).spec) == (before.id, before.spec)
    (grid,) = [t for t in json.loads(before.spec)["data"] if t.get("name") == "cells"]
    assert grid["selected"]["marker"]["opacity"] == 1 and grid["unselected"]["marker"]["opacity"] == 0
    reset = next(b for b in at.button if b.label.startswith("Reset to the notebook"))
    reset.click().run()
    no_problems(at)
    assert chart(at).id != before.id

    at = switch(at, "detect")  # Detect re-sends its kept figure while the same boxes are shown
    shown = chart(at)
    switch(switch(at, "guide"), "detect")
    assert chart(at).id == shown.id
    at.multiselect[0].unselect(at.multiselect[0].options[0]).run()
    no_problems(at)
    assert chart(at).id != shown.id, "a class hidden: other boxes, a new figure"


@pytest.mark.parametrize(
    ("orig_w", "orig_h", "in_w", "in_h"),
    [(1066, 800, 1066, 800), (640, 480, 1066, 800), (4000, 600, 1333, 200), (256, 256, 128, 128)],
)
def test_reference_points_are_the_notebooks_at_its_size_and_scale_with_the_input(orig_w, orig_h, in_w, in_h):
    """Item 8: (y, x) = (200, 200), (280, 400), (200, 600), (440, 800) in the notebook's 1066 x 800 input,
    the same share of the width and height for every other input (a panorama's spread over its width)."""
    from ui import compute

    g = Geometry(orig_h, orig_w, in_h, in_w, -(-in_h // 32), -(-in_w // 32), 32)
    points = compute.reference_points(g)
    for (x, y), (ny, nx) in zip(points, ((200, 200), (280, 400), (200, 600), (440, 800)), strict=True):
        assert x == pytest.approx(nx / 1066 * orig_w, abs=1e-6) and y == pytest.approx(ny / 800 * orig_h, abs=1e-6)
    if (in_w, in_h) == (1066, 800):
        assert [g.to_input(x, y) for x, y in points] == pytest.approx([(200, 200), (400, 280), (600, 200), (800, 440)])


def test_the_four_point_figure_defaults_to_the_notebooks_direction_and_says_so(scene):
    """Item 8: the figure reads sattn[..., y, x] (what looks at each point) unless changed; the click view
    keeps "where this location looks"."""
    at = switch(new_app(scene=str(scene)), "encoder")
    no_problems(at)
    assert at.radio(key="p_enc_direction").value == "looks"
    assert at.radio(key="p_enc_four_direction").value == "looked_at"
    assert any("sattn[..., y, x]" in c for c in texts(at.caption))
    at.radio(key="p_enc_four_direction").set_value("looks").run()
    no_problems(at)
    assert not any("sattn[..., y, x]" in c for c in texts(at.caption))


def _bar_regions(fig) -> list[tuple[float, float, float, float, int, str, str]]:
    """The hover rectangles of a detections figure: x0, y0, x1, y1, query, hover text, hover colour."""
    (bars,) = [t for t in fig.data if t.type == "bar"]
    return [
        (x - w / 2, base, x + w / 2, base + h, q, text, color)
        for x, w, base, h, q, text, color in zip(
            bars.x,
            bars.width,
            bars.base,
            bars.y,
            bars.customdata,
            bars.hovertext,
            bars.hoverlabel.bgcolor,
            strict=True,
        )
    ]


def test_detection_boxes_keep_their_colour_and_hover_anywhere_inside_names_the_innermost():
    """Item 9: each box is drawn in its query's colour with its "class: score" label, whatever else is shown;
    hovering anywhere inside a box names it (class, score, query, in its colour), and where boxes overlap,
    the innermost (smallest) one; outside every box, nothing."""
    from PIL import Image

    from detr_core.io.image import Geometry
    from detr_core.io.postprocess import Detection
    from ui import figures

    photo = Image.new("RGB", (400, 300), (120, 130, 140))
    g = Geometry(orig_h=600, orig_w=800, input_h=600, input_w=800, feat_h=19, feat_w=25, stride=32)
    dets = [  # original pixels (the photo is shown at half size)
        Detection(query=1, class_id=1, class_name="outer", score=0.91, box=(40.0, 40.0, 400.0, 400.0)),
        Detection(query=2, class_id=2, class_name="inner", score=0.52, box=(150.0, 150.0, 250.0, 250.0)),
        Detection(query=9, class_id=3, class_name="overlap", score=0.77, box=(300.0, 300.0, 700.0, 560.0)),
        Detection(query=7, class_id=3, class_name="overlap", score=0.33, box=(600.0, 20.0, 780.0, 120.0)),
    ]

    def drawn(fig):
        """(box, colour) of every box path in the figure's line traces, and the labels' (text, colour)."""
        out = []
        for t in fig.data:
            if t.type == "scatter" and t.mode == "lines":
                assert t.fill == "toself" and t.hoverinfo == "skip"
                xs, ys = list(t.x), list(t.y)
                for k in range(0, len(xs), 6):  # x0 x1 x1 x0 x0 gap
                    assert xs[k + 5] is None and ys[k + 5] is None
                    out.append(((xs[k], ys[k], xs[k + 1], ys[k + 2]), t.line.color))
        return sorted(out), sorted((a.text, a.bgcolor) for a in fig.layout.annotations)

    def label(det):
        return f"{det.class_name}: {det.score:.2f}", figures.rgb(det.query)

    fig = figures.detections_figure(photo, g, dets)
    assert drawn(fig) == (sorted((d.box, figures.rgb(d.query)) for d in dets), sorted(label(d) for d in dets))
    assert len([t for t in fig.data if t.type == "scatter"]) == 3  # queries 1 and 7 share the notebook's colour
    # where labels overlap, the best detection's is drawn last (on top)
    assert [a.text for a in fig.layout.annotations] == [label(d)[0] for d in sorted(dets, key=lambda d: d.score)]
    for det in dets:  # alone: the same box, label and colour
        assert drawn(figures.detections_figure(photo, g, [det])) == ([(det.box, figures.rgb(det.query))], [label(det)])

    regions = _bar_regions(fig)

    def hovered(x, y):
        return [r for r in regions if r[0] < x < r[2] and r[1] < y < r[3]]

    by_query = {d.query: d for d in dets}
    points = [((60, 60), 1), ((200, 200), 2), ((350, 270), 1), ((350, 350), 9), ((690, 550), 9), ((700, 100), 7)]
    for (x, y), want in points:
        ((*_, q, text, color),) = hovered(x, y)
        det = by_query[q]
        assert q == want and det.class_name in text and f"score {det.score:.3f}" in text and f"query {q}" in text
        assert color == figures.rgb(q)
    assert not hovered(20, 20) and not hovered(750, 590) and not hovered(500, 200)


def test_innermost_regions_cover_each_point_once_with_the_smallest_box_containing_it():
    """Random boxes, some sharing edges, some of no width or height: every point inside a box lies in exactly
    one region, owned by the smallest box containing it (the first of equal ones); a point in no box, in none."""
    from ui.figures import innermost_regions

    rng = np.random.default_rng(3)
    for n in (0, 1, 2, 3, 8, 40):
        x0, y0 = rng.choice([rng.uniform(0, 900), 100.0], n), rng.choice([rng.uniform(0, 700), 50.0], n)
        boxes = [
            (float(a), float(b), float(a + w), float(b + h))
            for a, b, w, h in zip(x0, y0, rng.choice([0.0, 30.0, 250.0], n), rng.choice([0.0, 40.0, 300.0], n))
        ]
        regions = innermost_regions(boxes)
        for x, y in rng.uniform((0, 0), (1300, 1100), (400, 2)):
            inside = [k for k, (a, b, c, d) in enumerate(boxes) if a < x < c and b < y < d]
            area = [(c - a) * (d - b) for a, b, c, d in boxes]
            want = [min(inside, key=lambda k: (area[k], k))] if inside else []
            got = [k for a, b, c, d, k in regions if a < x < c and b < y < d]
            assert got == want, (n, x, y)
        assert len(regions) <= (2 * n) ** 2


def test_photo_figures_follow_the_images_aspect_ratio():
    """Item 10: a 4000 x 600 panorama gets a low figure (no wide bands), a tall photo a capped one."""
    from ui import figures

    assert figures.fitted_height(4000, 600, 1000) == 150
    assert figures.fitted_height(800, 600, 600) == 450
    assert figures.fitted_height(600, 4000, 600) == figures.MAX_HEIGHT
    assert figures.fitted_height(100000, 100, 600) == figures.MIN_HEIGHT


def test_every_shown_figure_can_be_downloaded(scene):
    at = switch(new_app(scene=str(scene)), "encoder")
    no_problems(at)
    labels = [b.label for b in at.download_button]
    assert labels == ["Map PNG", "Overlay PNG", "Map .npy", "Map CSV", "Figure PNG"]
    switch(at, "decoder")
    no_problems(at)
    labels = [b.label for b in at.download_button]
    assert labels[:4] == ["Row of maps PNG", "Overlay PNG", "Map .npy", "Map CSV"]


def test_raw_map_downloads_hold_the_exact_map():
    import io

    from ui import downloads

    m = np.random.default_rng(0).random((5, 7)).astype(np.float32)
    assert np.array_equal(np.load(io.BytesIO(downloads.npy(m))), m)
    back = np.array([[float(v) for v in line.split(",")] for line in downloads.csv(m).splitlines()], np.float32)
    assert np.array_equal(back, m)
    from PIL import Image

    tiles = [(Image.new("RGB", (40, 30), "red"), "a"), (Image.new("RGB", (20, 50), "blue"), "b")]
    assert Image.open(io.BytesIO(downloads.grid_png(tiles, 2))).size[0] > 80


def test_relevance_for_every_detection_is_computed_once_on_demand(shapes_model, scene):
    at = switch(new_app(scene=str(scene)), "decoder")
    no_problems(at)
    dets = expected_detections(shapes_model, scene, at.slider(key="w_threshold").value)
    before = caches.relevance_runs()
    assert not any(c.startswith("relevance · query") for img in at.image for c in img.captions)
    at.button(key="dec_all_button").click().run()
    no_problems(at)
    captions = [c for img in at.image for c in img.captions]
    assert [c for c in captions if c.startswith("relevance · query")] == [
        f"relevance · query {d.query} · {d.class_name}" for d in dets
    ]
    done = caches.relevance_runs()
    assert before <= done <= before + len(dets)
    switch(at, "guide")
    switch(at, "decoder")
    assert any(c.startswith("relevance · query") for img in at.image for c in img.captions)
    assert caches.relevance_runs() == done


def test_relevance_for_every_detection_respects_the_servers_limit(scene, monkeypatch):
    at = switch(new_app(scene=str(scene)), "decoder")
    _tiny_budget(monkeypatch, "relevance")
    at.run()
    no_problems(at)
    assert any("Not offered at this size: a relevance map at" in i.value for i in at.info)
    assert not [b for b in at.button if b.key == "dec_all_button"]
