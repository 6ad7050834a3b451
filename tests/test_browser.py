"""The real dashboard in a real browser: `streamlit run app.py` driven by Debian's Chromium through
Playwright. The tests click, type and upload like a person, and save a screenshot of every page to
docs/screenshots/ (the README shows them).

Run them with `python -m pytest tests/test_browser.py -m browser`. They need /usr/bin/chromium
(never `playwright install`) and no network: the server runs offline with an empty torch hub cache,
so it opens on the bundled detr_shapes model.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _server import StreamlitServer, browser_marks, launch_chromium  # noqa: E402

pytestmark = browser_marks(600)

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect
expect.set_options(timeout=120_000)

SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
WAIT_MS = 120_000  # the CPU is slow and busy: generous, but every wait is for something specific
VIEWPORT = {"width": 1400, "height": 1050}
RUNS = re.compile(r"^model runs \(this session\): \d+$")


# ------------------------------------------------------------------------------------------------
# Fixtures: one server and one browser for the module, a fresh page (session) per test


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server")
    env = {"TORCH_HOME": str(tmp / "torch_home"), "DETR_WEIGHTS_DIR": ""}
    srv = StreamlitServer(tmp / "streamlit.log", env=env).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport=VIEWPORT)
    pg = context.new_page()
    pg.set_default_timeout(WAIT_MS)
    yield pg
    context.close()


@pytest.fixture(scope="module")
def shapes_model():
    from detr_core import load_model

    return load_model("detr_shapes", device="cpu")


@pytest.fixture(scope="module")
def scene(shapes_model) -> int:
    """The first held-out scene where the bundled model finds at least two shapes at its default
    threshold, their box centres at least 24 px apart (so each centre marker can be clicked)."""
    for number in range(100):
        dets = expected_detections(shapes_model, scene_bytes(number), default_threshold())
        centres = [((d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2) for d in dets]
        apart = all(
            ((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2) ** 0.5 >= 24 for i, a in enumerate(centres) for b in centres[:i]
        )
        if len(dets) >= 2 and apart:
            return number
    raise AssertionError("no held-out scene with two well separated detections")


# ------------------------------------------------------------------------------------------------
# Helpers


def scene_bytes(number: int) -> bytes:
    from ui.caches import scene_png

    return scene_png.__wrapped__(number) if hasattr(scene_png, "__wrapped__") else scene_png(number)


def geometry_of(data: bytes):
    from detr_core import MODELS, load_image, preprocess

    spec = MODELS["detr_shapes"]
    return preprocess(load_image(data), 16, spec.min_size, spec.max_size).geometry


def default_threshold() -> float:
    from detr_core import MODELS

    return float(getattr(MODELS["detr_shapes"], "default_threshold", 0.9))


def expected_detections(model, data: bytes, threshold: float):
    from detr_core.analysis.pipeline import analyze

    return analyze(model, data, "detr_shapes").detections(threshold)


def open_app(page, server, path: str = "") -> None:
    page.goto(server.url + path)
    expect(page.get_by_text(RUNS)).to_be_visible()
    wait_idle(page)


def wait_idle(page) -> None:
    """Wait until the script run the last action started has finished (the status widget is gone)."""
    page.wait_for_timeout(300)  # the "running" indicator appears a moment after an action
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=WAIT_MS, polling=200
    )


def url_param(page, key: str, done, timeout_s: float = 10.0) -> str | None:
    """The URL's `key` parameter once `done(value)` holds, or its last value after `timeout_s`. The
    browser rewrites its URL a moment after the page redraws: wait for it instead of sampling it."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = parse_qs(urlparse(page.url).query).get(key, [None])[0]
        if (value is not None and done(value)) or time.monotonic() > deadline:
            return value
        page.wait_for_timeout(100)


def model_runs(page) -> int:
    text = page.get_by_text(RUNS).inner_text()
    return int(text.rsplit(" ", 1)[1])


def go_to(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"] a').filter(has_text=title).first.click()
    expect(page.get_by_role("heading", name=re.compile("^" + re.escape(title)))).to_be_visible()
    wait_idle(page)


def pick_source(page, label: str) -> None:
    page.locator('[data-testid="stSidebar"] [data-testid="stRadio"] label').filter(has_text=label).click()
    wait_idle(page)
    if label == "Upload":
        expect(page.locator('[data-testid="stSidebar"] input[type=file]')).to_be_attached()


def upload(page, path: Path) -> None:
    page.locator('[data-testid="stSidebar"] input[type=file]').set_input_files(str(path))
    wait_idle(page)


def settle(page) -> None:
    """Wait for the run the page's own first report starts (the browser tells the server its width once,
    ui/viewport.py) as well as the one before it."""
    wait_idle(page)
    page.wait_for_timeout(800)
    wait_idle(page)


def photo_box(page, index: int = 0, min_height: float = 50) -> dict:
    """The on-screen box of the photo in the `index`-th Plotly chart (the layout image)."""
    chart = page.locator('[data-testid="stPlotlyChart"]').nth(index)
    image = chart.locator(".imagelayer image")
    box = None
    for attempt in range(3):  # a rerun may replace the chart while it is measured
        try:
            expect(image).to_have_count(1)
            chart.scroll_into_view_if_needed()
            page.wait_for_timeout(300)
            box = image.bounding_box()
            if box and box["width"] > 50 and box["height"] > min_height:
                break
        except playwright_api.Error:
            if attempt == 2:
                raise
        wait_idle(page)  # replaced by a rerun (e.g. the width report's) while measured: measure again
    assert box and box["width"] > 50 and box["height"] > min_height
    return box


def screen_to_image(box: dict, sx: float, sy: float, orig_w: int, orig_h: int) -> tuple[float, float]:
    return (sx - box["x"]) / box["width"] * orig_w, (sy - box["y"]) / box["height"] * orig_h


def image_to_screen(box: dict, x: float, y: float, orig_w: int, orig_h: int) -> tuple[float, float]:
    return box["x"] + x / orig_w * box["width"], box["y"] + y / orig_h * box["height"]


def away_from_borders(g, box: dict, fx: float, fy: float) -> tuple[float, float]:
    """A screen point near (fx, fy) of the photo at least 3 screen px from any feature-cell border."""
    cell_w = g.stride * g.orig_w / g.input_w * box["width"] / g.orig_w
    cell_h = g.stride * g.orig_h / g.input_h * box["height"] / g.orig_h
    sx, sy = box["x"] + fx * box["width"], box["y"] + fy * box["height"]
    for _ in range(20):
        dx = (sx - box["x"]) % cell_w
        dy = (sy - box["y"]) % cell_h
        if 3 < dx < cell_w - 3 and 3 < dy < cell_h - 3:
            return sx, sy
        sx += 2.5 if dx <= 3 or dx >= cell_w - 3 else 0
        sy += 2.5 if dy <= 3 or dy >= cell_h - 3 else 0
    return sx, sy


def selected_cell(page) -> tuple[int, int]:
    text = page.get_by_text(re.compile(r"^Selected cell:")).inner_text()
    match = re.search(r"Selected cell: \((\d+), (\d+)\)", text)
    assert match, text
    return int(match.group(1)), int(match.group(2))


def main_images(page) -> list[str]:
    return page.locator('[data-testid="stMain"] [data-testid="stImage"] img').evaluate_all(
        "els => els.map(e => e.getAttribute('src'))"
    )


def shoot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.mouse.move(5, VIEWPORT["height"] - 5)  # no hover label in the picture
    page.wait_for_timeout(300)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def write_scene(tmp_path: Path, number: int) -> Path:
    path = tmp_path / f"scene_{number}.png"
    path.write_bytes(scene_bytes(number))
    return path


# ------------------------------------------------------------------------------------------------
# Tests


def test_upload_a_synthetic_scene_and_see_its_detections(page, server, shapes_model, scene, tmp_path):
    open_app(page, server)
    expect(page.get_by_role("heading", name="Detect", exact=True)).to_be_visible()
    path = write_scene(tmp_path, scene)
    expected = expected_detections(shapes_model, path.read_bytes(), default_threshold())
    assert expected
    pick_source(page, "Upload")
    upload(page, path)
    n = len(expected)
    expect(page.get_by_role("heading", name=re.compile(rf"^{n} of {n} detections at threshold"))).to_be_visible()
    chart = page.locator('[data-testid="stPlotlyChart"]').first
    for det in expected:  # each box's "class: score" label is drawn on the photo
        expect(chart.get_by_text(f"{det.class_name}: {det.score:.2f}").first).to_be_attached()
    expect(page.get_by_text(re.compile(r"inference: \d+ ms"))).to_be_visible()
    expect(page.get_by_role("button", name="Annotated PNG")).to_be_visible()
    shoot(page, "detect")


def test_clicks_on_the_encoder_page_select_the_clicked_cell(page, server):
    open_app(page, server)
    go_to(page, "Encoder attention")
    g = geometry_of(scene_bytes(0))
    expect(page.get_by_text(f"tokens: {g.feat_h} x {g.feat_w} = {g.tokens}")).to_be_visible()
    runs = model_runs(page)
    seen = set()
    for fx, fy in ((0.3, 0.4), (0.8, 0.65)):
        before = main_images(page)
        box = photo_box(page)
        sx, sy = away_from_borders(g, box, fx, fy)
        x, y = screen_to_image(box, sx, sy, g.orig_w, g.orig_h)
        row, col = g.pixel_to_cell(x, y)
        page.mouse.move(sx - 4, sy - 4)
        page.mouse.move(sx, sy, steps=4)
        page.mouse.click(sx, sy)
        expect(page.get_by_text(re.compile(rf"^Selected cell: \({row}, {col}\)"))).to_be_visible()
        wait_idle(page)
        assert main_images(page)[:2] != before[:2], "the map and overlay must change with the cell"
        seen.add((row, col))
    assert len(seen) == 2
    assert model_runs(page) == runs
    points = url_param(page, "pts", lambda v: len(v.split(";")) == 4).split(";")
    assert len(points) == 4
    shoot(page, "encoder")


VISIBLE_POINTS_JS = """chart => [...chart.querySelectorAll('.scatterlayer path.point')]
  .filter(p => parseFloat(getComputedStyle(p).opacity) > 0.5)
  .map(p => { const r = p.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })"""


def test_an_encoder_click_outlines_its_cell_in_the_browser_and_keeps_the_chart(page, server):
    """The clickable photo is the same figure in every run (a changed one is a new chart, built anew: about
    250 ms of an R50 click). The browser outlines the clicked cell itself: after each click exactly one
    cell marker is visible, at the clicked cell, and the chart's own node is still the one drawn before."""
    open_app(page, server, "/encoder")
    g = geometry_of(scene_bytes(0))
    expect(page.get_by_text(re.compile(r"^Selected cell:"))).to_be_visible()
    chart = page.locator('[data-testid="stPlotlyChart"]').first
    for i, (fx, fy) in enumerate(((0.5, 0.5), (0.3, 0.4), (0.8, 0.65))):
        box = photo_box(page)
        sx, sy = away_from_borders(g, box, fx, fy)
        row, col = g.pixel_to_cell(*screen_to_image(box, sx, sy, g.orig_w, g.orig_h))
        page.mouse.move(sx - 4, sy - 4)
        page.mouse.move(sx, sy, steps=4)
        page.mouse.click(sx, sy)
        expect(page.get_by_text(re.compile(rf"^Selected cell: \({row}, {col}\)"))).to_be_visible()
        wait_idle(page)
        svg = chart.locator(".main-svg").first
        if i > 0:  # the first click may still meet the run that learnt the page's width (a new size)
            assert svg.evaluate("e => e.kept === true"), "the chart was built anew"
        visible = chart.evaluate(VISIBLE_POINTS_JS)
        assert len(visible) == 1, visible
        vx, vy = visible[0]
        assert g.pixel_to_cell(*screen_to_image(box, vx, vy, g.orig_w, g.orig_h)) == (row, col)
        svg.evaluate("e => { e.kept = true }")


def test_picking_a_detection_on_the_decoder_page_shows_its_map(page, server, shapes_model, scene):
    open_app(page, server, f"/?scene={scene}")
    go_to(page, "Decoder attention")
    data = scene_bytes(scene)
    g = geometry_of(data)
    detections = expected_detections(shapes_model, data, default_threshold())
    assert len(detections) >= 2
    first = detections[0]
    expect(page.get_by_text(f"Selected detection: query {first.query} · {first.class_name}")).to_be_visible()
    for det in detections[:12]:  # the page shows at most 12 panels
        expect(page.get_by_text(f"query id: {det.query} · {det.class_name}")).to_be_visible()
    before = main_images(page)[-1]
    runs = model_runs(page)
    box = photo_box(page)

    def centre(det) -> tuple[float, float]:
        return image_to_screen(box, (det.box[0] + det.box[2]) / 2, (det.box[1] + det.box[3]) / 2, g.orig_w, g.orig_h)

    def room(det) -> float:  # screen distance from its centre marker to the nearest other one
        (x, y) = centre(det)
        return min(((x - centre(o)[0]) ** 2 + (y - centre(o)[1]) ** 2) ** 0.5 for o in detections if o is not det)

    target = max(detections[1:], key=room)
    assert room(target) > 12, "the detections' centre markers overlap"
    sx, sy = centre(target)
    page.mouse.move(sx - 3, sy - 3)
    page.mouse.move(sx, sy, steps=3)
    page.mouse.click(sx, sy)
    expect(page.get_by_text(f"Selected detection: query {target.query} · {target.class_name}")).to_be_visible()
    wait_idle(page)
    assert main_images(page)[-1] != before
    assert url_param(page, "q", lambda v: v == str(target.query)) == str(target.query)
    assert model_runs(page) == runs
    shoot(page, "decoder")


def test_switching_pages_and_moving_sliders_never_reruns_the_model(page, server):
    open_app(page, server)
    runs = model_runs(page)
    for title in ("Encoder attention", "Decoder attention", "Model", "Guide", "Detect"):
        go_to(page, title)
        assert model_runs(page) == runs
        if title == "Model":
            expect(page.locator('[data-testid="stExpander"]').filter(has_text="print(model)")).to_be_visible()
            shoot(page, "model")
        if title == "Guide":
            expect(page.get_by_text("encoder entropy (last layer, mean over locations)")).to_be_visible()
            shoot(page, "guide")
    threshold = page.locator('[data-testid="stSidebar"] [data-testid="stSlider"] input[type=range]')
    start = float(threshold.input_value())
    threshold.focus()
    for _ in range(5):
        page.keyboard.press("ArrowLeft")
    expect(threshold).to_have_value(re.compile(rf"^{start - 0.05:.2f}0*$"))
    wait_idle(page)
    expect(page.get_by_text(f"threshold {start - 0.05:.2f}").first).to_be_visible()
    heading = page.get_by_role("heading", name=re.compile(r" detections at threshold "))
    expect(heading).to_contain_text(f"at threshold {start - 0.05:.2f}")  # the table's own threshold
    go_to(page, "Encoder attention")
    layers = page.locator('[data-testid="stMain"] [data-testid="stButtonGroup"]').first
    layers.get_by_role("radio", name="2", exact=True).click()
    expect(page.get_by_text(re.compile(r"^Selected cell: .* layer 2 "))).to_be_visible()
    wait_idle(page)
    assert model_runs(page) == runs
    assert url_param(page, "thr", lambda v: v == f"{start - 0.05:.2f}") == f"{start - 0.05:.2f}"


def test_a_corrupt_upload_shows_a_message_and_a_good_one_works_after_it(page, server, tmp_path):
    open_app(page, server)
    pick_source(page, "Upload")
    bad = tmp_path / "broken.png"
    data = scene_bytes(12)
    bad.write_bytes(data[: len(data) // 2])
    upload(page, bad)
    alert = page.locator('[data-testid="stMain"] [data-testid="stAlert"]').filter(has_text="cannot be analyzed")
    expect(alert).to_contain_text("broken.png")
    expect(alert).to_contain_text("truncated or corrupt")
    assert "Traceback" not in page.locator("body").inner_text()
    upload(page, write_scene(tmp_path, 12))
    expect(page.get_by_text("scene_12.png", exact=False).first).to_be_visible()
    expect(alert).to_have_count(0)
    expect(page.get_by_role("heading", name=re.compile(r"^\d+ of \d+ detections at|^Detect$")).first).to_be_visible()


def test_a_deep_link_lands_on_the_same_view(page, server, browser):
    g = geometry_of(scene_bytes(3))
    row, col = g.pixel_to_cell(20, 100)
    open_app(page, server, "/encoder?model=detr_shapes&src=scene&scene=3&thr=0.50&pts=20,100")
    expect(page.get_by_role("heading", name="Encoder attention", exact=True)).to_be_visible()
    expect(page.get_by_text(re.compile(rf"^Selected cell: \({row}, {col}\)"))).to_be_visible()
    slider = page.locator('[data-testid="stSidebar"] [data-testid="stSlider"] input[type=range]')
    expect(slider).to_have_value(re.compile(r"^0\.50*$"))
    expect(page.locator('[data-testid="stSidebar"] [data-testid="stNumberInput"] input').first).to_have_value("3")
    link = page.url
    assert "page=encoder" in link and "scene=3" in link
    other = browser.new_context(viewport=VIEWPORT)
    try:
        second = other.new_page()
        second.set_default_timeout(WAIT_MS)
        started = time.monotonic()
        second.goto(link)
        expect(second.get_by_role("heading", name="Encoder attention", exact=True)).to_be_visible()
        expect(second.get_by_text(re.compile(rf"^Selected cell: \({row}, {col}\)"))).to_be_visible()
        assert time.monotonic() - started < WAIT_MS / 1000
    finally:
        other.close()


def test_a_fresh_server_draws_a_title_and_a_progress_line_within_two_seconds(browser, tmp_path):
    """Issue #13 item 6: the first visit to a freshly started server (PyTorch not yet imported, no model
    loaded) shows the title and a progress line at once; the model loads after the frame is drawn."""
    env = {"TORCH_HOME": str(tmp_path / "torch_home"), "DETR_WEIGHTS_DIR": ""}
    fresh = StreamlitServer(tmp_path / "fresh.log", env=env).start()
    context = browser.new_context(viewport={"width": 390, "height": 844})  # a phone: the sidebar is collapsed
    try:
        pg = context.new_page()
        pg.set_default_timeout(WAIT_MS)
        connected = []  # when the page's script opened its connection to the server
        pg.on("websocket", lambda ws: connected.append(time.monotonic()))
        pg.goto(fresh.url, wait_until="commit")
        expect(pg.get_by_text("DETR Attention Explorer").first).to_be_visible()
        title_s = time.monotonic() - connected[0]
        progress = pg.get_by_text(re.compile(r"^Starting: loading PyTorch and the model"))
        saw_progress = progress.count() > 0
        expect(pg.get_by_role("heading", name="Detect", exact=True)).to_be_visible()
        loaded_s = time.monotonic() - connected[0]
        assert title_s < 2.0, f"the title came {title_s:.1f} s after connecting"
        assert saw_progress or loaded_s < 2.0, "no progress line while the model loaded"
        expect(pg.get_by_text(re.compile(r"model: .*DETR shapes"))).to_be_visible()  # the header names the model
        expect(pg.get_by_text(re.compile(r"click a pixel on Encoder attention"))).to_be_visible()
        expect(progress).to_have_count(0)  # gone once the page is drawn
    finally:
        context.close()
        fresh.stop()


def test_a_failed_model_pick_keeps_the_upload_and_its_message_can_be_dismissed(page, server, tmp_path):
    """Issue #13 items 1 and 3 in a real browser: the upload survives a pick of a model whose weights
    cannot be had here, the session stays on detr_shapes, and the short message goes when dismissed."""
    open_app(page, server)
    pick_source(page, "Upload")
    upload(page, write_scene(tmp_path, 9))
    caption = page.get_by_text(re.compile(r" on scene_9\.png · threshold "))
    expect(caption).to_be_visible()
    page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.click()
    page.get_by_role("option", name=re.compile(r"^DETR R50 \(")).click()
    wait_idle(page)
    alert = page.locator('[data-testid="stMain"] [data-testid="stAlert"]').filter(has_text="DETR R50 is not available")
    expect(alert).to_be_visible()
    text = alert.inner_text()
    assert len(text.strip().splitlines()) <= 3 and "/hub/" not in text and "torch_home" not in text, text
    expect(caption).to_be_visible()  # the same upload, analyzed by the same model
    expect(page.get_by_text(re.compile(r"model: .*DETR shapes"))).to_be_visible()
    page.get_by_role("button", name="Dismiss").click()
    wait_idle(page)
    expect(alert).to_have_count(0)
    expect(caption).to_be_visible()


def test_a_burst_of_threshold_presses_costs_one_rerun_and_the_table_names_its_threshold(page, server):
    """Issue #13 item 11: thirty arrow presses on the threshold; the detections heading (which names the
    threshold it was computed for) ends on the slider's value, drawn after at most one value in between
    (the slider commits a burst of key presses once, or twice when the first press commits at once)."""
    open_app(page, server)
    slider = page.locator('[data-testid="stSidebar"] [data-testid="stSlider"] input[type=range]')
    heading = page.get_by_role("heading", name=re.compile(r" detections at threshold "))
    start = float(slider.input_value())
    slider.focus()
    for _ in range(30):
        page.keyboard.press("ArrowLeft")
    final = f"{max(start - 0.30, 0.0):.2f}"
    expect(slider).to_have_value(re.compile(rf"^{float(final):g}0*$|^{final}$"))
    seen = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = heading.first.inner_text() if heading.count() else ""
        match = re.search(r"at threshold (\d\.\d\d)$", text)
        if match:
            seen.add(match.group(1))
            if match.group(1) == final:
                break
        page.wait_for_timeout(100)
    wait_idle(page)
    assert re.search(rf"at threshold {final}$", heading.first.inner_text())
    between = seen - {f"{start:.2f}", final}
    assert len(between) <= 1, f"the burst drew {len(between)} intermediate thresholds: {sorted(between)}"


def test_taps_on_the_encoder_photo_select_the_tapped_cell(browser, server):
    """On a phone (touch emulation, 390 px wide) the FIRST tap selects the tapped cell, every tap."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    try:
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(server.url + "/encoder?scene=0")
        expect(page.get_by_role("heading", name="Encoder attention", exact=True)).to_be_visible()
        expect(page.get_by_text(re.compile(r"^Selected cell:"))).to_be_visible()
        settle(page)
        g = geometry_of(scene_bytes(0))
        seen = []
        for fx, fy in ((0.3, 0.4), (0.8, 0.65), (0.15, 0.85)):
            box = photo_box(page)
            sx, sy = away_from_borders(g, box, fx, fy)
            row, col = g.pixel_to_cell(*screen_to_image(box, sx, sy, g.orig_w, g.orig_h))
            page.touchscreen.tap(sx, sy)
            expect(page.get_by_text(re.compile(rf"^Selected cell: \({row}, {col}\)"))).to_be_visible(timeout=20_000)
            wait_idle(page)
            seen.append((row, col))
        assert len(set(seen)) == 3
    finally:
        context.close()


def test_hovering_anywhere_inside_a_detection_box_shows_its_class_score_and_box(page, server, shapes_model, scene):
    open_app(page, server, f"/?scene={scene}")
    data = scene_bytes(scene)
    g = geometry_of(data)
    detections = expected_detections(shapes_model, data, default_threshold())

    def inside_only(det, fx, fy):
        x0, y0, x1, y1 = det.box
        x, y = x0 + fx * (x1 - x0), y0 + fy * (y1 - y0)
        others = [o for o in detections if o is not det and o.box[0] <= x <= o.box[2] and o.box[1] <= y <= o.box[3]]
        return (x, y) if not others else None

    det, point = next((d, p) for d in detections for p in [inside_only(d, 0.35, 0.6)] if p)
    box = photo_box(page)
    sx, sy = image_to_screen(box, *point, g.orig_w, g.orig_h)
    page.mouse.move(sx - 5, sy - 5)
    page.mouse.move(sx, sy, steps=4)
    label = page.locator('[data-testid="stPlotlyChart"] .hoverlayer .hovertext').first
    expect(label).to_contain_text(det.class_name)
    expect(label).to_contain_text(f"score {det.score:.3f}")
    expect(label).to_contain_text(f"query {det.query}")


def _band(page, index: int = 0) -> float:
    """Empty height (px) of the index-th Plotly chart around its photo."""
    chart = page.locator('[data-testid="stPlotlyChart"]').nth(index)
    chart.scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    return chart.bounding_box()["height"] - photo_box(page, index, min_height=20)["height"]


def test_a_panorama_fills_its_figure_at_desktop_and_phone_width(browser, server, tmp_path):
    """Item 10: a 4000 x 600 photo's figure is as tall as the photo shown in it, at 1440 and 390 px."""
    import numpy as np
    from PIL import Image

    ramp = np.linspace(0, 255, 4000, dtype=np.uint8)
    pixels = np.stack([np.tile(ramp, (600, 1)), np.tile(ramp[::-1], (600, 1)), np.full((600, 4000), 90, np.uint8)], -1)
    path = tmp_path / "panorama.png"
    Image.fromarray(pixels, "RGB").save(path)
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    try:
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        open_app(page, server)
        pick_source(page, "Upload")
        upload(page, path)
        expect(page.get_by_text("panorama.png", exact=False).first).to_be_visible()
        settle(page)
        assert _band(page) <= 24
        go_to(page, "Encoder attention")
        settle(page)
        assert _band(page) <= 24
        # The four-point figure, one picture: the photo and each map on a row of their own (a panorama 6.7
        # times as wide as tall), each tile the figure's width less its margins, so each shows >= 100 px tall.
        from detr_core.io.render import PAD

        caption = re.compile(r"^1 \(blue\): cell")
        figure = page.locator('[data-testid="stImage"]').filter(has_text=caption).locator("img")
        expect(figure).to_have_count(1)
        shown = figure.bounding_box()
        natural_w = figure.evaluate("img => img.naturalWidth")
        tile_h = (natural_w - 2 * PAD) * 600 / 4000 * shown["width"] / natural_w  # as shown, px
        assert tile_h >= 100 and shown["height"] >= 5 * tile_h
        go_to(page, "Detect")
        page.set_viewport_size({"width": 390, "height": 844})
        page.wait_for_timeout(500)
        settle(page)
        assert _band(page) <= 24
    finally:
        context.close()


def test_a_tap_on_a_boxs_centre_marker_picks_that_detection(browser, server, shapes_model, scene):
    """The decoder's box picker under touch: the first tap picks the tapped detection."""
    data = scene_bytes(scene)
    g = geometry_of(data)
    detections = expected_detections(shapes_model, data, default_threshold())
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    try:
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(server.url + f"/decoder?scene={scene}")
        expect(page.get_by_text(f"Selected detection: query {detections[0].query}")).to_be_visible()
        settle(page)
        for target in (detections[-1], detections[0]):
            box = photo_box(page)
            cx, cy = (target.box[0] + target.box[2]) / 2, (target.box[1] + target.box[3]) / 2
            page.touchscreen.tap(*image_to_screen(box, cx, cy, g.orig_w, g.orig_h))
            expect(page.get_by_text(f"Selected detection: query {target.query} · {target.class_name}")).to_be_visible(
                timeout=20_000
            )
            wait_idle(page)
    finally:
        context.close()


def test_a_click_anywhere_inside_a_box_on_the_decoder_picks_the_innermost_detection_there(
    page, server, shapes_model, scene
):
    """The picker's boxes are click targets (not only their centre markers): a click inside a box, away from
    every marker, picks the smallest box containing the point."""
    data = scene_bytes(scene)
    g = geometry_of(data)
    detections = expected_detections(shapes_model, data, default_threshold())
    open_app(page, server, f"/decoder?scene={scene}")
    expect(page.get_by_text(f"Selected detection: query {detections[0].query}")).to_be_visible()
    settle(page)

    def innermost(x, y):
        inside = [d for d in detections if d.box[0] < x < d.box[2] and d.box[1] < y < d.box[3]]
        return min(inside, key=lambda d: (d.box[2] - d.box[0]) * (d.box[3] - d.box[1]), default=None)

    for target in (detections[-1], detections[0]):
        x0, y0, x1, y1 = target.box
        x, y = x0 + 0.2 * (x1 - x0), y0 + 0.75 * (y1 - y0)  # off centre, where the centre marker is not
        want = innermost(x, y)
        box = photo_box(page)
        sx, sy = image_to_screen(box, x, y, g.orig_w, g.orig_h)
        page.mouse.move(sx - 4, sy - 4)
        page.mouse.move(sx, sy, steps=4)
        page.mouse.click(sx, sy)
        expect(page.get_by_text(f"Selected detection: query {want.query} · {want.class_name}")).to_be_visible()
        wait_idle(page)
