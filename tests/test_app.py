"""The dashboard, page by page, through Streamlit's AppTest (in-process, no browser, no network).

Every test runs the real app with the project's bundled model (`load_model("detr_shapes")`) on small
synthetic scenes (256 px, analyzed at 128 px), so each script run takes well under a second once
the model is loaded. Official checkpoints are never downloaded: the torch hub cache points at an
empty folder and `urlopen` is replaced by one that fails as an offline machine does.
"""

from __future__ import annotations

import random
import sys
import urllib.error
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

from detr_core import MODELS, Geometry, load_image, load_model, preprocess  # noqa: E402
from detr_core.models.zoo import SHAPES_CLASSES  # noqa: E402
from ui import state  # noqa: E402
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
    for number in range(state.SCENE_COUNT):
        if len(expected_detections(shapes_model, number, threshold)) >= 2:
            return number
    raise AssertionError("the bundled model finds two shapes in none of the held-out scenes")


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """No official checkpoint on this machine and no network: the app must open on detr_shapes."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("DETR_WEIGHTS_DIR", raising=False)

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known (test: offline)")

    monkeypatch.setattr("urllib.request.urlopen", no_network)


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
    image = load_image(state.scene_png(number))
    return preprocess(image, 16, SHAPES.min_size, SHAPES.max_size).geometry


def expected_detections(model, number: int, threshold: float):
    from detr_core.analysis.pipeline import analyze

    return analyze(model, state.scene_png(number), "detr_shapes").detections(threshold)


def switch(at: AppTest, page: str) -> AppTest:
    return at.switch_page(f"pages/{page}.py").run()


# ------------------------------------------------------------------------------------------------
# Opening, the sidebar, caching


def test_opens_on_detr_shapes_with_a_synthetic_scene_and_a_notice(scene):
    at = new_app()
    no_problems(at)
    assert at.session_state["w_model"] == "detr_shapes"
    assert at.session_state["w_source"] == "scene"
    notice = " ".join(texts(at.sidebar.info))
    assert "No official DETR checkpoint" in notice and "detr_shapes" in notice
    labels = at.selectbox(key="w_model").options
    assert any("downloadable" in o for o in labels) and any("available" in o for o in labels)
    assert at.slider(key="w_threshold").value == pytest.approx(getattr(SHAPES, "default_threshold", 0.9))
    captions = texts(at.sidebar.caption)
    assert any(c.startswith("model runs: ") for c in captions)
    assert at.query_params["model"] == "detr_shapes" and at.query_params["page"] == "detect"


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
    at = new_app(scene="2")
    no_problems(at)
    runs = state.model_runs()
    for page in ("encoder", "decoder", "model", "guide", "detect", "encoder"):
        switch(at, page)
        no_problems(at)
    at.select_slider(key="p_enc_layer").set_value("1").run()
    at.radio(key="p_enc_direction").set_value("looked_at").run()
    at.slider(key="w_threshold").set_value(0.5).run()
    switch(at, "decoder")
    no_problems(at)
    assert state.model_runs() == runs
    assert f"model runs: {runs}" in texts(at.sidebar.caption)
    at.number_input(key="w_scene").set_value(3).run()  # a new image: one new run
    assert state.model_runs() == runs + 1


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
    # the newest of the notebook's reference points, (y, x) = (440, 800) at 800 px, scaled to 128 px
    row, col = g.pixel_to_cell(*g.to_original(min(800 * 0.16, g.input_w - 1), min(440 * 0.16, g.input_h - 1)))
    assert f"Selected cell: **({row}, {col})**" in text
    assert len(at.get("plotly_chart")) >= 1


def test_encoder_controls_cover_layers_rollout_and_every_head(scene):
    at = switch(new_app(scene=str(scene)), "encoder")
    assert at.select_slider(key="p_enc_layer").options == ["1", "2", "3", "mean", "rollout"]
    at.select_slider(key="p_enc_layer").set_value("rollout").run()
    no_problems(at)
    assert at.selectbox(key="p_enc_head").disabled
    at.select_slider(key="p_enc_layer").set_value("2").run()
    at.selectbox(key="p_enc_head").set_value("all heads (grid)").run()
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
    trace = cell_grid_trace(g)
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
    captions = [c for img in at.image for c in img.captions]
    for det in expected[:8]:
        assert f"query id: {det.query} · {det.class_name}" in captions
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
    model_runs, relevance_runs = state.model_runs(), state.relevance_runs()
    at.radio(key="p_dec_mode").set_value("relevance (Chefer et al.)").run()
    no_problems(at)
    assert at.selectbox(key="p_dec_layer").disabled
    assert "inside its box" in {m.label for m in at.metric}
    assert any("relevance of query" in c for img in at.image for c in img.captions)
    done = state.relevance_runs()
    assert done in (relevance_runs, relevance_runs + 1)  # 0 when an earlier test cached this one
    switch(at, "guide")
    switch(at, "decoder")
    assert state.relevance_runs() == done and state.model_runs() == model_runs


def test_relevance_is_offered_for_every_zoo_model_at_the_default_size():
    """The guard admits R50-DC5 (and R101-DC5) at 800/1333: 50 x 84 = 4,200 feature cells, about 1.7 GB."""
    assert state.RELEVANCE_MAX_TOKENS >= 50 * 84
    assert state.relevance_gb(50 * 84) < 2.0
    assert state.relevance_gb(3350) == pytest.approx(1.28, abs=0.1)  # R50-DC5 at 800x1066, measured


def test_relevance_too_big_for_the_server_is_refused_with_a_message(scene, monkeypatch):
    """Above RELEVANCE_MAX_TOKENS feature cells the page explains instead of running a pass that could
    take gigabytes (an R50-DC5 photo), and shows raw attention with its controls enabled."""
    at = switch(new_app(scene=str(scene)), "decoder")
    monkeypatch.setattr(state, "RELEVANCE_MAX_TOKENS", 10)  # detr_shapes scenes have 64+ cells
    relevance_runs = state.relevance_runs()
    at.radio(key="p_dec_mode").set_value("relevance (Chefer et al.)").run()
    no_problems(at)
    assert any("Relevance is not offered at this size" in i.value and "cells" in i.value for i in at.info)
    assert not at.selectbox(key="p_dec_layer").disabled
    assert any("cross-attention of query" in c for img in at.image for c in img.captions)
    assert state.relevance_runs() == relevance_runs


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
    analysis = analyze(shapes_model, state.scene_png(scene), "detr_shapes")
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
    data = state.scene_png(7)
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
    at.file_uploader(key="w_upload").set_value(("good.png", state.scene_png(4), "image/png")).run()
    no_problems(at)
    assert at.dataframe or any("Nothing above the threshold" in i for i in texts(at.info))


def test_a_sample_photo_runs_with_a_hint_that_detr_shapes_knows_only_shapes(scene):
    at = new_app(scene=str(scene))
    at.radio(key="w_source").set_value("sample").run()
    at.selectbox(key="w_sample").set_value("chelsea.png").run()
    no_problems(at)
    assert any("only knows synthetic shapes" in c for c in texts(at.sidebar.caption))
    assert at.query_params["sample"] == "chelsea.png" and at.query_params["src"] == "sample"


def test_an_official_model_without_its_weights_falls_back_to_detr_shapes_and_says_where_to_put_the_file(scene):
    at = new_app(scene=str(scene))
    at.selectbox(key="w_model").set_value("detr_resnet50").run()
    assert not at.exception
    assert at.session_state["w_model"] == "detr_shapes"
    message = " ".join(texts(at.sidebar.error))
    filename = MODELS["detr_resnet50"].checkpoint.filename
    assert filename in message and "DETR_WEIGHTS_DIR" in message and "detr_shapes" in message
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
    assert any(c.startswith("model runs: ") for c in texts(at.sidebar.caption))  # the sidebar still works


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
    assert compute.annotated_png(load_image(state.scene_png(scene)), detections).startswith(b"\x89PNG")


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
    assert "detr-r101-2c7b67e5.pth is corrupt (test)" in " ".join(texts(at.sidebar.error))
