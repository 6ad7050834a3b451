"""What a person feels: time from an input event in the browser to the new map being visible.

    python benchmarks/interaction.py [--reps 20] [--models detr_shapes detr_resnet50] [--out FILE]

Starts the real dashboard (`python -m streamlit run app.py` on 127.0.0.1, a free port, offline with an
empty torch hub cache) and drives it with Debian's Chromium through Playwright (never `playwright
install`), 1440x900. Per model:

- detr_shapes: the bundled model on held-out synthetic scene 0 (its default view);
- detr_resnet50: the official R50 architecture with random weights (seeded), given to the server as
  the user's own checkpoint (DETR_OWN_MODELS), on an uploaded 1066x800 photo (the sample astronaut,
  resized), i.e. an 800x1066 input and 25x34 feature cells; the threshold is set so that the five
  best queries are detections.

The server is warm (each interaction is done once before timing). Each interaction is repeated
--reps times on fresh cells, queries, layers or heads; a repetition is timed on the page's own clock
(performance.now()), from the input event (the first pointerdown, mousedown or keydown that
Playwright's click, key press or option pick dispatches) to the moment the page shows what that input
asked for: a caption naming the cell / query / layer / head / threshold, in an element of the current
run, with every image of the main area loaded, every chart drawn and no element still a placeholder
(polled every animation frame). Until 3 December 2026 a placeholder was not waited for, so a page
switch could count as shown before its photo and maps were drawn; and text of the page being left
counted (Streamlit keeps it, greyed as stale, until the new run replaces it): the Decoder page's
"... more detections" made some switches to Detect count as shown after 40-90 ms (now a caption
counts in elements that are not stale, and Detect's is its own "... detections at threshold").
What comes before the input event is not timed: opening a selectbox and typing to filter its list
(nothing reaches the server until the option is clicked), and Playwright's own work before it dispatches
an event (its checks that the target is visible and stable, its round trips to the browser; timing in
this process, as until 3 December 2026, added 25-70 ms of that to every row).

Printed: p50 and p95 in ms per interaction, the target and whether it is met, the CPU it ran on, and
how fast that CPU was before and after (`machine.python_loop_ms`: a shared host's CPU runs the same
loop 2-3x slower on a bad spell, and every row then moves with it); then where each interaction's time
went (medians): the browser until it sent the rerun request, the server until the run's end
(`script_finished`) reached the page, the browser from there until the map was shown, from a trace
of the page's WebSocket messages; then the CPU each interaction took (means, from /proc): the server
process and Chromium's processes, and half their sum, the least time two cores need for that work;
and what the benchmark's own polling costs Chromium. Targets (issue #15): encoder and decoder
interactions p95 <= 250 ms, a page switch with a cached analysis <= 1 s, a threshold change <= 500 ms.

The column "Streamlit alone" (`--models floor`) runs benchmarks/floor_app.py: the same widgets and the
same clickable photo, doing nothing else; its times are the floor of a fragment's rerun on this machine.

Browser and server share the machine's cores, as on a laptop.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests"))  # tests/_server.py

from _server import CHROMIUM, StreamlitServer, launch_chromium  # noqa: E402
from machine import cpu_description, python_loop_ms  # noqa: E402  (benchmarks/machine.py)

VIEWPORT = {"width": 1440, "height": 900}
WAIT_MS = 120_000
R50_NAME = "detr_resnet50_random"
FLOOR = "floor"
FLOOR_LABEL = "Streamlit alone (floor_app.py)"
TARGETS_MS = {
    "encoder: click a cell": 250,
    "encoder: change layer": 250,
    "encoder: change head": 250,
    "encoder: switch direction": 250,
    "decoder: pick a detection": 250,
    "decoder: change layer": 250,
    "decoder: change head": 250,
    "page switch (cached analysis)": 1000,
    "threshold change": 500,
}

# The page's clock (performance.now()) once the main area shows every wanted string in elements that are
# not stale (an element of the run before, kept on screen until this run replaces it), no element is
# still a placeholder (Streamlit draws a skeleton until an element's code and data are in: a page's
# photo and maps, right after a page switch), every chart has drawn and all its images have loaded;
# false before.
SHOWN_JS = """(want) => {
  const main = document.querySelector('[data-testid="stMain"]');
  if (!main) return false;
  const fresh = main.querySelectorAll('[data-testid="stElementContainer"]:not([data-stale="true"])');
  const text = [...fresh].map(e => e.innerText).join(' | ');
  if (!want.every(w => text.includes(w))) return false;
  if (main.querySelector('[data-testid="stSkeleton"]')) return false;
  const charts = [...main.querySelectorAll('[data-testid="stPlotlyChart"]')];
  if (charts.some(c => !c.querySelector('.main-svg'))) return false;
  const loaded = [...main.querySelectorAll('img')].every(i => i.complete && i.naturalWidth > 0);
  return loaded && performance.now();
}"""

# Before the app's own scripts: log, on the page's clock, the first input event after `window.__armed`
# is set, every message the page sends to the server (a BackMsg: the rerun request) and every message
# it receives (a ForwardMsg; small ones kept whole, to find the run's end in them).
TRACE_JS = """(() => {
  const log = window.__trace = {input: null, sent: [], got: []};
  const Native = window.WebSocket;
  class Traced extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', (e) => {
        const n = e.data.byteLength || 0;
        const whole = n <= 4096 ? btoa(String.fromCharCode(...new Uint8Array(e.data))) : null;
        log.got.push([performance.now(), n, whole]);
      });
    }
    send(data) { log.sent.push(performance.now()); return super.send(data); }
  }
  window.WebSocket = Traced;
  for (const kind of ['pointerdown', 'mousedown', 'keydown', 'click']) {
    window.addEventListener(kind, () => {
      if (window.__armed) { window.__armed = false; log.input = performance.now(); }
    }, true);
  }
})()"""


# ------------------------------------------------------------------------------------------------
# Page helpers


def wait_shown(page, want: list[str]) -> float:
    """Wait until `want` is shown; the page's clock at that moment (ms)."""
    return page.wait_for_function(SHOWN_JS, arg=want, timeout=WAIT_MS, polling="raf").json_value()


def wait_idle(page) -> None:
    page.wait_for_timeout(300)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=WAIT_MS, polling=100
    )


PHASES = ("browser: input -> request sent", "server: request -> run finished", "browser: run finished -> shown")
_phases: list[tuple[float, float, float]] = []  # of the timings since `measure` began
_cpu: list[tuple[float, float, float]] = []  # (server, Chromium, stolen) CPU ms of each timing since `measure` began
SERVER_PID: list[int] = []  # the dashboard's (or floor app's) server process while it is measured
TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def stolen_ms() -> float:
    """CPU time the hypervisor has given to other machines while this one's cores wanted it ("steal" in
    /proc/stat, summed over the cores), ms so far: on a shared host, the cause of a slow spell."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) * TICK_MS if len(fields) > 8 else float("nan")


def cpu_ms() -> tuple[float, dict[int, float]]:
    """CPU time (user + system, ms) used so far by the server process and by each Chromium process
    (by pid), from /proc (clock ticks: 10 ms each, so one timing's share is coarse, a mean over many is not)."""

    def used(pid: int) -> tuple[str, float] | None:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None  # gone
        name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        return name, (int(fields[11]) + int(fields[12])) * TICK_MS  # utime, stime

    server = used(SERVER_PID[-1]) if SERVER_PID else None
    browser = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (seen := used(int(entry.name))) and seen[0].startswith("chrom"):
            browser[int(entry.name)] = seen[1]
    return (server[1] if server else float("nan")), browser


def timed(action: Callable[[], None], page, want: list[str]) -> float:
    """ms from the input event `action` makes (its first pointerdown, mousedown or keydown, on the page's
    own clock) to `want` being shown; also notes where that time went (`phases`, from TRACE_JS)."""
    page.evaluate("() => { const t = window.__trace; t.sent = []; t.got = []; t.input = null; window.__armed = true; }")
    server_before, browser_before = cpu_ms()
    stolen_before = stolen_ms()
    action()
    shown = wait_shown(page, want)
    server_after, browser_after = cpu_ms()
    browser_used = sum(browser_after[pid] - used for pid, used in browser_before.items() if pid in browser_after)
    _cpu.append((server_after - server_before, browser_used, stolen_ms() - stolen_before))
    for _ in range(100):  # the run's end may come after the map is shown: wait for it (at most ~5 s)
        trace = page.evaluate("() => window.__trace")
        where = phases(trace, shown)
        if where[1] == where[1]:  # not nan: the run's end was seen
            break
        page.wait_for_timeout(50)
    if trace["input"] is None:
        raise RuntimeError(f"no input event reached the page before {want} was shown")
    _phases.append(where)
    return shown - trace["input"]


def phases(trace: dict, shown: float) -> tuple[float, float, float]:
    """(input -> the first request sent, -> the server's end of that run received, -> shown), ms; the
    run's end is its `script_finished` ForwardMsg (a fragment's run has one too). nan where not seen."""
    import base64

    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    nan = float("nan")
    start = trace["input"]
    sent = [t for t in trace["sent"] if start is not None and t >= start]
    if start is None or not sent:
        return nan, nan, nan

    def run_end(whole: str | None) -> bool:
        return bool(whole) and ForwardMsg.FromString(base64.b64decode(whole)).WhichOneof("type") == "script_finished"

    finished = [t for t, _, whole in trace["got"] if t >= sent[0] and run_end(whole)]
    if not finished:
        return sent[0] - start, nan, nan
    return sent[0] - start, finished[0] - sent[0], shown - finished[0]


def choice_event(page, label: str, option: str, options: list[str]) -> Callable[[], None]:
    """Prepare to pick `option` (one of `options`) in the main area's widget labelled `label` (a radio, a
    segmented control, a selectbox or a select slider) and return the input event that picks it. What
    comes before that event is done here, untimed: a selectbox is opened and its list filtered by typing
    (the person is still choosing; nothing reaches the server until the option is clicked)."""
    main = page.locator('[data-testid="stMain"]')
    kinds = ("stRadio", "stButtonGroup", "stSelectbox", "stSlider")
    widget = (
        main.locator(", ".join(f'[data-testid="{k}"]' for k in kinds))
        .filter(has=page.get_by_text(label, exact=True))
        .first
    )
    kind = widget.get_attribute("data-testid")
    if kind == "stSelectbox":
        return open_selectbox(page, widget, option, exact=True)
    if kind == "stSlider":
        thumb = widget.locator("input[type=range]").first  # its value: the option's index
        steps = options.index(option) - round(float(thumb.input_value()))
        thumb.focus()

        def press() -> None:
            for _ in range(abs(steps)):
                page.keyboard.press("ArrowRight" if steps > 0 else "ArrowLeft")

        return press
    target = widget.get_by_text(option, exact=True)
    target.hover()
    return target.click


def open_selectbox(page, widget, typed: str, exact: bool) -> Callable[[], None]:
    """Open `widget`'s list, type `typed` to filter it, and return the click on the (first) matching option."""
    combo = widget.get_by_role("combobox")
    combo.click()
    combo.fill(typed)  # the list filters by what is typed (a long list scrolls otherwise)
    option = (
        page.get_by_role("option", name=typed, exact=True)
        if exact
        else page.get_by_role("option").filter(has_text=typed).first
    )
    option.wait_for(state="visible")
    return option.click


def photo_box(page, index: int = 0) -> dict:
    chart = page.locator('[data-testid="stPlotlyChart"]').nth(index)
    image = chart.locator(".imagelayer image")
    image.wait_for(state="attached")
    chart.scroll_into_view_if_needed()
    box = image.bounding_box()
    assert box and box["width"] > 50, box
    return box


def go_to(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"] a').filter(has_text=title).first.click()


# ------------------------------------------------------------------------------------------------
# The interactions (each returns one timing, ms)


class Session:
    def __init__(self, page, geometry, detections: list, reps: int):
        self.page, self.g, self.detections, self.reps = page, geometry, detections, reps
        self.switched_to: list[str] = []  # the page each page switch went to, in order
        self.rng = random.Random(0)

    def encoder_click(self) -> float:
        g, page = self.g, self.page
        box = photo_box(page)
        row, col = self.rng.randrange(g.feat_h), self.rng.randrange(g.feat_w)
        cx, cy = g.cell_center(row, col)
        sx, sy = box["x"] + cx / g.orig_w * box["width"], box["y"] + cy / g.orig_h * box["height"]
        page.mouse.move(sx - 3, sy - 3)
        page.mouse.move(sx, sy, steps=2)
        return timed(lambda: page.mouse.click(sx, sy), page, [f"Selected cell: ({row}, {col})"])

    def encoder_option(self, label: str, options: list[str], shown: Callable[[str], str]) -> Callable[[], float]:
        cycle = iter(options * (self.reps + 2))

        def one() -> float:
            option = next(cycle)
            return timed(choice_event(self.page, label, option, options), self.page, [shown(option)])

        return one

    def decoder_pick(self) -> float:
        det = self.detections[self.rng.randrange(len(self.detections))]
        page = self.page
        widget = page.locator('[data-testid="stMain"] [data-testid="stSelectbox"]').filter(
            has=page.get_by_text("Detection", exact=True)
        )
        pick = open_selectbox(page, widget, f"query {det.query}: ", exact=False)
        return timed(pick, page, [f"Selected detection: query {det.query} "])

    def threshold(self, values: list[float]) -> Callable[[], float]:
        cycle = iter(values * (self.reps + 2))
        slider = self.page.locator('[data-testid="stSidebar"] [data-testid="stSlider"] input[type=range]').first

        def one() -> float:
            target = next(cycle)
            current = float(slider.input_value())
            steps = round((target - current) / 0.01)
            key = "ArrowRight" if steps > 0 else "ArrowLeft"
            slider.focus()

            def press() -> None:
                for _ in range(abs(steps)):
                    self.page.keyboard.press(key)

            return timed(press, self.page, [f"threshold {target:.2f}"])

        return one

    def page_switch(self) -> Callable[[], float]:
        cycle = iter(["Encoder attention", "Decoder attention", "Detect"] * (self.reps + 2))
        wants = {
            "Encoder attention": "Selected cell:",
            "Decoder attention": "Selected detection:",
            "Detect": "detections at threshold",  # "detections" alone is on the Decoder page too
        }

        def one() -> float:
            title = next(cycle)
            self.switched_to.append(title)
            return timed(lambda: go_to(self.page, title), self.page, [wants[title]])

        return one

    def by_page(self, values: list[float], cpu: list[tuple[float, float, float]]) -> str:
        """The page switch's timings split by the page switched to: its median ms and mean CPU ms."""
        titles = self.switched_to[-len(values) :]
        parts = []
        for title in dict.fromkeys(titles):
            picked = [i for i, t in enumerate(titles) if t == title]
            server, browser = (statistics.fmean(cpu[i][j] for i in picked) for j in range(2))
            ms = statistics.median(values[i] for i in picked)
            parts.append(f"to {title} {ms:.0f} ms (CPU: server {server:.0f} + Chromium {browser:.0f})")
        return "; ".join(parts)


def traced_page(browser):
    """A new context (VIEWPORT) and page whose WebSocket messages and input events are traced (TRACE_JS)."""
    context = browser.new_context(viewport=VIEWPORT)
    context.add_init_script(TRACE_JS)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    return context, page


class Recorder:
    """The timings and their phases of each interaction measured on one page (`measure`)."""

    def __init__(self, reps: int):
        self.reps = reps
        self.results: dict[str, list[float]] = {}
        self.where: dict[str, list[tuple[float, float, float]]] = {}
        self.cpu: dict[str, list[tuple[float, float, float]]] = {}
        self.polling: tuple[float, float] | None = None  # `polling_cost`, where measured
        self.notes: list[str] = []  # lines printed after the tables

    def record(self, name: str, fn: Callable[[], float]) -> None:
        self.results[name], self.where[name], self.cpu[name] = measure(fn, self.reps)


def measure(
    fn: Callable[[], float], reps: int
) -> tuple[list[float], list[tuple[float, float, float]], list[tuple[float, float, float]]]:
    """`reps` timings of `fn` after one to warm up (the first of each kind fills caches and the browser's
    image cache), where each one's time went (`phases`) and the CPU it took (server, Chromium; `cpu_ms`)."""
    fn()
    _phases.clear()
    _cpu.clear()
    values = [fn() for _ in range(reps)]
    return values, list(_phases), list(_cpu)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


# ------------------------------------------------------------------------------------------------
# Models and images


def random_r50(workdir: Path) -> Path:
    """The official R50 architecture with seeded random weights, saved as an official checkpoint."""
    import torch

    from detr_core import build_model

    torch.manual_seed(0)
    model = build_model("detr_resnet50")
    path = workdir / f"{R50_NAME}.pth"
    args = argparse.Namespace(backbone="resnet50", dilation=False, position_embedding="sine", nheads=8, pre_norm=False)
    torch.save({"model": model.state_dict(), "args": args}, path)  # main.py's layout
    return path


def photo_1066x800(workdir: Path) -> Path:
    from PIL import Image

    image = Image.open(REPO / "assets" / "samples" / "astronaut.png").convert("RGB").resize((1066, 800))
    path = workdir / "astronaut_1066x800.jpg"
    image.save(path, quality=92)
    return path


def reference(model_name: str, checkpoint: Path | None, data: bytes):
    """The core's analysis of the image (what the page must show) and the threshold: the model's
    default, or for random weights the fifth-best score rounded down to the slider's 0.01. Random
    weights score every query alike (about 0.03), so that admits all 100 queries, whose boxes are
    nearly the same: the heaviest Detect and Decoder pages a person can ask for (threshold 0)."""
    from detr_core import load_model, load_own_model
    from detr_core.analysis.pipeline import analyze
    from detr_core.models.zoo import MODELS

    if checkpoint is None:
        analysis = analyze(load_model(model_name, device="cpu"), data, model_name)
        return analysis, MODELS[model_name].default_threshold
    own = load_own_model(checkpoint, name=R50_NAME)
    analysis = analyze(own.model, data, own.spec)
    scores = sorted((d.score for d in analysis.detections(0.0)), reverse=True)
    return analysis, int(scores[4] * 100) / 100


# ------------------------------------------------------------------------------------------------


def run_model(browser, server, model: str, reps: int, workdir: Path, checkpoint: Path | None) -> Recorder:
    SERVER_PID[:] = [server.proc.pid]
    context, page = traced_page(browser)
    if checkpoint is None:
        from ui.caches import scene_png

        data = scene_png(0)
        analysis, threshold = reference(model, None, data)
        page.goto(f"{server.url}/?model={model}&src=scene&scene=0&thr={threshold:.2f}")
    else:
        photo = photo_1066x800(workdir)
        data = photo.read_bytes()
        analysis, threshold = reference(model, checkpoint, data)
        page.goto(f"{server.url}/?src=upload&thr={threshold:.2f}")
        page.locator('[data-testid="stSidebar"] input[type=file]').set_input_files(str(photo))
    geometry, detections = analysis.geometry, analysis.detections(threshold)
    wait_shown(page, ["detections" if detections else "Nothing above"])
    wait_idle(page)
    session = Session(page, geometry, detections, reps)
    recorder = Recorder(reps)
    record = recorder.record
    record("threshold change", session.threshold([round(threshold - 0.01, 2), threshold]))
    switch = "page switch (cached analysis)"
    record(switch, session.page_switch())
    recorder.notes.append(f"{model}, {switch}, medians by page: " + session.by_page(recorder.results[switch],
                                                                                     recorder.cpu[switch]))  # fmt: skip
    go_to(page, "Encoder attention")
    wait_shown(page, ["Selected cell:"])
    wait_idle(page)
    record("encoder: click a cell", session.encoder_click)
    layers = [str(i) for i in range(1, analysis.enc_layers + 1)] + ["mean"]
    record("encoder: change layer", session.encoder_option("Encoder layer", layers, lambda o: f"layer {o} ·"))
    heads = [str(i) for i in range(1, analysis.nheads + 1)] + ["mean"]
    record("encoder: change head", session.encoder_option("Head", heads, lambda o: f"head {o}"))
    directions = ["what looks at this location", "where this location looks"]
    record("encoder: switch direction", session.encoder_option("Direction", directions, lambda o: f"· {o} ·"))
    if detections:
        go_to(page, "Decoder attention")
        wait_shown(page, ["Selected detection:"])
        wait_idle(page)
        record("decoder: pick a detection", session.decoder_pick)
        dec_layers = [str(i) for i in range(1, analysis.dec_layers + 1)] + ["mean"]
        record(
            "decoder: change layer", session.encoder_option("Decoder layer", dec_layers, lambda o: f"layer {o}, head")
        )
        record("decoder: change head", session.encoder_option("Head", heads, lambda o: f", head {o}"))
    context.close()
    return recorder


def run_floor(browser, server, reps: int) -> Recorder:
    """The same encoder and decoder interactions on benchmarks/floor_app.py: what Streamlit and the browser
    spend on a fragment's rerun with these widgets and this clickable photo, doing nothing else."""
    from types import SimpleNamespace

    sys.path.insert(0, str(REPO / "benchmarks"))
    from floor_app import DIRECTIONS, GEOMETRY, QUERIES

    SERVER_PID[:] = [server.proc.pid]
    context, page = traced_page(browser)
    page.goto(server.url)
    wait_shown(page, ["Selected cell:"])
    photo_box(page)
    wait_idle(page)
    session = Session(page, GEOMETRY, [SimpleNamespace(query=q) for q in QUERIES], reps)
    recorder = Recorder(reps)
    recorder.record("encoder: click a cell", session.encoder_click)
    for name, label, options, shown in [
        ("encoder: change layer", "Encoder layer", ["1", "2", "3", "4", "5", "6", "mean"], lambda o: f"layer {o} ·"),
        ("encoder: change head", "Head", [str(h) for h in range(1, 9)] + ["mean"], lambda o: f"head {o}"),
        ("encoder: switch direction", "Direction", DIRECTIONS, lambda o: f"· {o} ·"),
    ]:
        recorder.record(name, session.encoder_option(label, options, shown))
    recorder.record("decoder: pick a detection", session.decoder_pick)
    recorder.polling = polling_cost(page)
    context.close()
    return recorder


def markdown_rows(columns: dict[str, dict], cell: Callable[[str, list], str], target: bool) -> list[str]:
    """The header and one row per interaction (TARGETS_MS) of a table with one column per model: `cell`
    turns the interaction's name and that model's values for it into the cell's text ("n/a" where it has
    none); `target` adds the target column."""
    lines = [
        "| interaction | " + " | ".join(columns) + (" | target (p95) |" if target else " |"),
        "|---|" + "---|" * len(columns) + ("---|" if target else ""),
    ]
    for name, ms in TARGETS_MS.items():
        cells = [cell(name, values[name]) if values.get(name) else "n/a" for values in columns.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + (f" | <= {ms} |" if target else " |"))
    return lines


def table(all_results: dict[str, dict[str, list[float]]], reps: int, speed: str = "") -> str:
    def cell(name: str, values: list[float]) -> str:
        p95 = percentile(values, 0.95)
        mark = "met" if p95 <= TARGETS_MS[name] else "not met"
        return f"{statistics.median(values):.0f} / {p95:.0f} ({mark})"

    header = [
        f"Interaction latency, input event -> new map visible, p50 / p95 over {reps} repetitions (ms); "
        f"CPU: {cpu_description()}, browser and server on the same cores{speed}",
        "",
    ]
    return "\n".join(header + markdown_rows(all_results, cell, target=True))


def median_seen(values: list[float]) -> float:
    """The median of the values that are not nan (nan if none is)."""
    seen = [v for v in values if v == v]
    return statistics.median(seen) if seen else float("nan")


def phase_table(all_where: dict[str, dict[str, list[tuple[float, float, float]]]]) -> str:
    """Where each interaction's time went, medians (ms): the browser until it sent the rerun request, the
    server until the run's end reached the page, the browser from there until the new map was shown
    (negative: shown before the run's end arrived, e.g. while the last elements were still coming)."""

    def cell(_name: str, rows: list[tuple[float, float, float]]) -> str:
        return " + ".join(f"{median_seen([r[i] for r in rows]):.0f}" for i in range(3))

    header = ["Where the time goes, medians (ms): " + " + ".join(PHASES), ""]
    return "\n".join(header + markdown_rows(all_where, cell, target=False))


def polling_cost(page, seconds: float = 2.0) -> tuple[float, float]:
    """Chromium's CPU (ms per second) on an idle page, and while the benchmark polls it every animation
    frame for a caption that never comes (`wait_shown`'s own cost, inside every timing's Chromium CPU)."""

    def browser_ms() -> float:
        return sum(cpu_ms()[1].values())

    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    start = browser_ms()
    page.wait_for_timeout(seconds * 1000)
    idle = browser_ms()
    with contextlib.suppress(PlaywrightTimeout):
        page.wait_for_function(SHOWN_JS, arg=["a caption no page shows"], timeout=seconds * 1000, polling="raf")
    return (idle - start) / seconds, (browser_ms() - idle) / seconds


def cpu_table(all_cpu: dict[str, dict[str, list[tuple[float, float, float]]]]) -> str:
    """The CPU each interaction took, means (ms): the server process, Chromium's processes, and half
    their sum: with two cores, the least time in which that work can be done even if it all ran in
    parallel."""

    def cell(_name: str, rows: list[tuple[float, float, float]]) -> str:
        server, browser, stolen = (statistics.fmean(r[i] for r in rows) for i in range(3))
        return f"{server:.0f} + {browser:.0f} (/ 2 = {(server + browser) / 2:.0f}; stolen {stolen:.0f})"

    header = [
        "CPU per interaction, means (ms): server + Chromium (/ 2 cores = the least time it can take; stolen: "
        "CPU the hypervisor gave other machines meanwhile, /proc/stat)",
        "",
    ]
    return "\n".join(header + markdown_rows(all_cpu, cell, target=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--models", nargs="+", default=["detr_shapes", "detr_resnet50", FLOOR],
                        help=f"{FLOOR!r}: Streamlit alone (benchmarks/floor_app.py)")  # fmt: skip
    parser.add_argument("--out", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is not installed (apt-get install chromium)", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    recorders: dict[str, Recorder] = {}
    models = [m for m in args.models if m != FLOOR]
    before_ms = python_loop_ms()
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        workdir = Path(tmp)
        browser = launch_chromium(p)
        if models:
            checkpoint = random_r50(workdir) if "detr_resnet50" in models else None
            env = {"TORCH_HOME": str(workdir / "torch_home"), "DETR_WEIGHTS_DIR": ""}
            if checkpoint is not None:
                env["DETR_OWN_MODELS"] = json.dumps([{"checkpoint": str(checkpoint), "name": R50_NAME}])
            server = StreamlitServer(workdir / "streamlit.log", env=env).start()
            try:
                for model in models:
                    ckpt = checkpoint if model == "detr_resnet50" else None
                    label = f"{model} (random weights, 800x1066)" if ckpt else model
                    recorders[label] = run_model(browser, server, model if not ckpt else R50_NAME, args.reps, workdir,
                                                 ckpt)  # fmt: skip
                    print(table({label: recorders[label].results}, args.reps), file=sys.stderr, flush=True)
            finally:
                server.stop()
        if FLOOR in args.models:
            server = StreamlitServer(workdir / "floor.log", script="benchmarks/floor_app.py").start()
            try:
                recorders[FLOOR_LABEL] = run_floor(browser, server, args.reps)
            finally:
                server.stop()
        browser.close()
    after_ms = python_loop_ms()
    speed = f"; a fixed Python loop took {before_ms:.0f} ms before and {after_ms:.0f} ms after (machine.python_loop_ms)"
    columns = {label: r.results for label, r in recorders.items()}
    where = {label: r.where for label, r in recorders.items()}
    cpu = {label: r.cpu for label, r in recorders.items()}
    text = "\n\n".join([table(columns, args.reps, speed), phase_table(where), cpu_table(cpu)])
    for label, r in recorders.items():
        for note in r.notes:
            text += "\n\n" + note
        if r.polling is not None:
            text += (f"\n\nChromium's CPU on the idle {label} page: {r.polling[0]:.0f} ms/s; while the benchmark polls "
                     f"it every frame (inside each timing above): {r.polling[1]:.0f} ms/s")  # fmt: skip
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps({"timings": columns, "phases": where, "cpu": cpu}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
