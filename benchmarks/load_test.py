"""Many users at once, then one user for a long time: the real dashboard under load.

    python benchmarks/load_test.py [--sessions 8] [--uploads 3] [--soak 200] [--soak-size 1024] [--burst 3]
                                   [--json FILE]

Starts `python -m streamlit run app.py` on 127.0.0.1 (a free port; nothing leaves the machine), with
an empty torch hub cache so it opens on the bundled detr_shapes model, and waits for
/_stcore/health. Then, in one Chromium (Debian's /usr/bin/chromium through Playwright; never
`playwright install`):

1. Sessions: --sessions browser contexts (separate Streamlit sessions) at once. Each uploads
   --uploads different synthetic scenes (detr_core.training.synthetic.make_scene, held-out seeds), and for
   each one checks that the page names its own file, that the heading counts the detections a
   serial run of the core finds on the same bytes (`analyze(model, bytes, "detr_shapes")
   .detections(threshold)`), and that the "Detections JSON" download holds exactly those
   detections (classes, queries, scores, boxes). Between uploads, even sessions open the encoder
   page and click a feature cell (the page must select the clicked cell), odd sessions open the
   decoder page (it must select the first detection). No page may show an exception or an error.
2. Soak: one session uploads --soak distinct scenes (--soak-size px JPEGs) one after another. The
   server's resident memory after the first 10 uploads and after the last are printed; the growth
   must stay below --rss-bound-mb (150 MB by default: the analysis caches hold at most 16 entries,
   so after they fill nothing should grow; a leak of one decoded 1024 px image per upload would
   add about 3 MB x 190 = 570 MB over the default soak).

0. Burst (--burst N sessions, before the others): N sessions at once each upload large and hostile
   files: two distinct 24-megapixel photos of their own (96 MB each once decoded), tests/hostile.py's
   header bomb and text-chunk zlib bomb, and a progressive-JPEG scan bomb. The server's resident
   memory is read before the burst, when every upload has been answered (sessions still open), and
   after the sessions close: polled until it is within --burst-bound-mb (300 MB) of its value before
   the burst, for at most --settle-seconds (150 s: Streamlit keeps a closed session, and what it
   holds, for server.disconnectedSessionTTL, 120 s by default; ui/collector.py reaps it within 5 s
   after that. Should the memory still be above the bound then, one more visitor opens the page and
   it is read again, and the report says so). What stays is the process-wide caches of ui/caches.py
   (decoded images at most 64 MB).

Prints p50/p95 latency per action (seconds, wall clock seen by the browser) and the server's peak
memory (RSS of its process tree, sampled every 0.2 s, and the kernel's VmHWM). Exits 1 if any
check failed. `tests/test_load.py` runs a reduced size of the same code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests"))  # tests/hostile.py (the hostile files), tests/_server.py

from _server import CHROMIUM, StreamlitServer, launch_chromium  # noqa: E402

MODEL = "detr_shapes"
WAIT_MS = 180_000  # the longest any single expected change may take (2 busy cores)
WARMUP_UPLOADS = 10
SCENE_SIZE = 256
SCORE_TOL = 2e-3  # the server runs torch with its own thread count: float sums differ in the last bits
BOX_TOL = 0.5  # px
BORDERLINE = 0.01  # scenes with a score this close to the threshold are skipped (a flip is not a bug)
SHOTS: Path | None = None  # where a failing session leaves a screenshot (the --workdir)
ERROR_SELECTOR = '[data-testid="stException"], [data-testid="stAlertContentError"]'


# ------------------------------------------------------------------------------------------------
# The server and its memory


def _children(pid: int) -> list[int]:
    kids = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return kids


def process_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += _children(p)
    return out


def status_kb(pid: int, field_name: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mb(pid: int) -> float:
    return sum(status_kb(p, "VmRSS") for p in process_tree(pid)) / 1024


def tree_hwm_mb(pid: int) -> float:
    return sum(status_kb(p, "VmHWM") for p in process_tree(pid)) / 1024


class Server(StreamlitServer):
    """The test suite's server (tests/_server.py: `streamlit run app.py` on 127.0.0.1:<free port>),
    offline, started at once, with its process tree's resident memory sampled every 0.2 s."""

    def __init__(self, workdir: Path, startup_timeout: float = 180.0):
        env = {"TORCH_HOME": str(workdir / "torch_home"), "DETR_WEIGHTS_DIR": ""}
        super().__init__(workdir / "streamlit.log", env, startup_timeout)
        self.start()
        self.pid = self.proc.pid
        self.peak_rss_mb = 0.0
        self._sampling = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._sampling.wait(0.2):
            self.peak_rss_mb = max(self.peak_rss_mb, tree_rss_mb(self.pid))

    def rss_mb(self) -> float:
        return tree_rss_mb(self.pid)

    def hwm_mb(self) -> float:
        return tree_hwm_mb(self.pid)

    def breakdown(self) -> str:
        """The server process's resident memory by kind, and its workers' (the rest of the tree)."""
        kinds = {k: status_kb(self.pid, k) / 1024 for k in ("RssAnon", "RssShmem", "RssFile")}
        rest = sum(status_kb(p, "VmRSS") for p in process_tree(self.pid)[1:]) / 1024
        return (f"server anon {kinds['RssAnon']:.0f} + shared {kinds['RssShmem']:.0f} + files "
                f"{kinds['RssFile']:.0f} MB, children {rest:.0f} MB")  # fmt: skip

    def log(self) -> str:
        """The whole log (tracebacks are counted in it)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        self._sampling.set()
        super().stop()


# ------------------------------------------------------------------------------------------------
# Images and what the core says about them


@dataclass
class Picture:
    path: Path
    detections: list  # the serial run's detections (detr_core.io.postprocess.Detection)
    geometry: object  # detr_core.io.image.Geometry of the pass


class Reference:
    """The core, run serially in this process: what each session must see."""

    def __init__(self):
        import torch

        from detr_core import MODELS, load_model
        from detr_core.models.zoo import model_status

        torch.set_num_threads(1)
        if model_status(MODEL) != "available":
            raise RuntimeError(f"{MODEL}'s checkpoint is missing: the load test compares real detections")
        self.model = load_model(MODEL, device="cpu")
        self.threshold = float(getattr(MODELS[MODEL], "default_threshold", 0.9))

    def picture(self, path: Path) -> Picture | None:
        """What the page must show for the image at `path`; None if a score is too near the threshold."""
        from detr_core.analysis.pipeline import analyze

        analysis = analyze(self.model, path.read_bytes(), MODEL)
        scores = analysis.pred_logits[-1].softmax(-1)[:, :-1].max(-1).values
        if ((scores - self.threshold).abs() < BORDERLINE).any():
            return None
        return Picture(path, analysis.detections(self.threshold), analysis.geometry)


def scene_files(ref: Reference, folder: Path, count: int, first: int, size: int, fmt: str) -> list[Picture]:
    """`count` distinct held-out scenes, none with a score near the threshold, written to `folder`."""
    from detr_core.training.synthetic import HELDOUT_FIRST_SEED, make_scene

    folder.mkdir(parents=True, exist_ok=True)
    pictures, seed = [], HELDOUT_FIRST_SEED + first
    while len(pictures) < count:
        image, _ = make_scene(seed, size)
        path = folder / f"scene_{seed - HELDOUT_FIRST_SEED}.{fmt.lower().replace('jpeg', 'jpg')}"
        image.save(path, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        seed += 1
        picture = ref.picture(path)
        if picture is None:
            path.unlink()
            continue
        pictures.append(picture)
    return pictures


# ------------------------------------------------------------------------------------------------
# One browser session


@dataclass
class SessionResult:
    name: str
    uploads: int = 0
    correct: int = 0
    problems: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)  # transient failures that worked on a second try


class Timings:
    def __init__(self):
        self.by_action: dict[str, list[float]] = {}

    def add(self, action: str, seconds: float) -> None:
        self.by_action.setdefault(action, []).append(seconds)

    def table(self) -> list[dict]:
        rows = []
        for action, values in self.by_action.items():
            v = np.asarray(values)
            rows.append({"action": action, "count": len(v), "p50_s": float(np.percentile(v, 50)),
                         "p95_s": float(np.percentile(v, 95)), "max_s": float(v.max())})  # fmt: skip
        return rows


async def _idle(page) -> None:
    """Wait until the script run the last action started has finished (the status widget is gone)."""
    await page.wait_for_timeout(250)
    await page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=WAIT_MS, polling=100
    )


async def _errors(page) -> list[str]:
    return [t.strip()[:300] for t in await page.locator(ERROR_SELECTOR).all_inner_texts()]


class Session:
    def __init__(self, browser, url: str, name: str, timings: Timings):
        self.browser, self.url, self.name, self.timings = browser, url, name, timings
        self.result = SessionResult(name)

    async def __aenter__(self):
        self.context = await self.browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        self.page = await self.context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.media_errors: list[tuple[str, int]] = []
        self.page.on("response", self._on_response)
        return self

    def _on_response(self, response) -> None:
        if "/media/" in response.url and response.status >= 400:
            self.media_errors.append((response.url, response.status))

    async def __aexit__(self, exc_type, exc, tb):
        """A failed step ends the session: recorded with what the page showed, not raised."""
        if exc is not None and isinstance(exc, Exception):
            try:
                shown = (await self.page.locator("body").inner_text(timeout=5000))[:600]
            except Exception:  # the page itself is gone
                shown = "(unreadable)"
            self.result.problems.append(f"{type(exc).__name__}: {str(exc)[:400]} | the page shows: {shown!r}")
            if SHOTS is not None:
                name = re.sub(r"\W+", "_", self.name)
                with contextlib.suppress(Exception):
                    await self.page.screenshot(path=str(SHOTS / f"failure_{name}.png"), full_page=True)
        await self.context.close()
        return exc is not None and isinstance(exc, Exception)

    async def timed(self, action: str, coro):
        start = time.perf_counter()
        out = await coro
        self.timings.add(action, time.perf_counter() - start)
        errors = await _errors(self.page)
        if errors:
            self.result.problems.append(f"{action}: the page shows an error: {errors}")
        return out

    async def open(self) -> None:
        from playwright.async_api import expect

        async def go():
            await self.page.goto(self.url)
            await expect(self.page.get_by_text(re.compile(r"^model runs \(this session\): \d+$"))).to_be_visible()
            await _idle(self.page)

        await self.timed("open", go())

    async def nav(self, title: str, action: str) -> None:
        from playwright.async_api import expect

        async def go():
            await self.page.locator('[data-testid="stSidebarNav"] a').filter(has_text=title).first.click()
            await expect(self.page.get_by_role("heading", name=title, exact=True)).to_be_visible()
            await _idle(self.page)

        await self.timed(action, go())

    async def choose_upload(self) -> None:
        radio = self.page.locator('[data-testid="stSidebar"] [data-testid="stRadio"] label').filter(has_text="Upload")
        await radio.click()
        await _idle(self.page)

    async def upload(self, picture: Picture, check_download: bool = True, action: str = "upload+analysis") -> None:
        """Upload `picture` on the Detect page and check what the page and its JSON download say."""
        from playwright.async_api import expect

        page, name = self.page, picture.path.name
        self.result.uploads += 1

        async def go():
            await page.locator('[data-testid="stSidebar"] input[type=file]').set_input_files(str(picture.path))
            await expect(page.get_by_text(re.compile(re.escape(f" on {name} · ")))).to_be_visible()
            await _idle(page)

        await self.timed(action, go())
        n = len(picture.detections)
        ok = True
        if n:
            heading = page.get_by_role("heading", name=re.compile(rf"^{n} of {n} detections at threshold "))
        else:
            heading = page.get_by_text("Nothing above the threshold")
        try:
            await expect(heading).to_be_visible(timeout=10_000)
        except AssertionError:
            headings = await page.get_by_role("heading").all_inner_texts()
            self.result.problems.append(f"{name}: expected {n} detections; headings: {headings}")
            ok = False
        if n and check_download:
            ok = await self.check_json(picture) and ok
        self.result.correct += ok

    async def check_json(self, picture: Picture) -> bool:
        page, name = self.page, picture.path.name

        async def go():
            async with page.expect_download() as info:
                await page.get_by_role("button", name="Detections JSON").click()
            download = await info.value
            failure = await download.failure()
            if failure is not None:
                return failure
            return json.loads(Path(await download.path()).read_text())

        got = await self.timed("download JSON", go())
        if isinstance(got, str):  # the browser gave up on the download: say why, and try once more
            media = [f"{status} {url.split('?')[0]}" for url, status in self.media_errors]
            self.result.retried.append(f"{name}: the JSON download failed ({got}); /media answers: {media}")
            got = await self.timed("download JSON", go())
            if isinstance(got, str):
                self.result.problems.append(f"{name}: the JSON download failed twice ({got})")
                return False
        problems = []
        if got.get("image") != name:
            problems.append(f"the JSON is about {got.get('image')!r}")
        shown = sorted(got.get("detections", []), key=lambda d: d["query"])
        expected = sorted(picture.detections, key=lambda d: d.query)
        if [(d["query"], d["class_name"]) for d in shown] != [(d.query, d.class_name) for d in expected]:
            problems.append(f"detections {[(d['query'], d['class_name']) for d in shown]} != "
                            f"{[(d.query, d.class_name) for d in expected]}")  # fmt: skip
        else:
            for d, e in zip(shown, expected):
                box_error = max(abs(a - b) for a, b in zip(d["box_xyxy"], e.box))
                if abs(d["score"] - e.score) > SCORE_TOL or box_error > BOX_TOL:
                    problems.append(f"query {e.query}: {d['score']:.4f} {d['box_xyxy']} != {e.score:.4f} {list(e.box)}")
        self.result.problems += [f"{name}: {p}" for p in problems]
        return not problems

    async def click_a_cell(self, picture: Picture, fx: float, fy: float) -> None:
        """On the encoder page: click near (fx, fy) of the photo; the page must select that cell."""
        from playwright.async_api import expect

        page, g = self.page, picture.geometry
        chart = page.locator('[data-testid="stPlotlyChart"]').first
        image = chart.locator(".imagelayer image")  # the photo: a Plotly layout image
        await chart.scroll_into_view_if_needed()
        await page.wait_for_timeout(300)
        box = await image.bounding_box()
        sx, sy = _away_from_borders(g, box, fx, fy)
        x = (sx - box["x"]) / box["width"] * g.orig_w
        y = (sy - box["y"]) / box["height"] * g.orig_h
        row, col = g.pixel_to_cell(x, y)

        async def go():
            await page.mouse.move(sx - 4, sy - 4)
            await page.mouse.move(sx, sy, steps=4)
            await page.mouse.click(sx, sy)
            await expect(page.get_by_text(re.compile(rf"^Selected cell: \({row}, {col}\)"))).to_be_visible()
            await _idle(page)

        try:
            await self.timed("encoder click", go())
        except AssertionError as e:
            self.result.problems.append(f"{picture.path.name}: clicking cell ({row}, {col}) failed: {e}")

    async def check_decoder(self, picture: Picture) -> None:
        from playwright.async_api import expect

        if not picture.detections:
            return
        first = picture.detections[0]
        text = f"Selected detection: query {first.query} · {first.class_name}"
        try:
            await expect(self.page.get_by_text(text)).to_be_visible(timeout=10_000)
        except AssertionError:
            self.result.problems.append(f"{picture.path.name}: the decoder page does not show {text!r}")


def _away_from_borders(g, box: dict, fx: float, fy: float) -> tuple[float, float]:
    """A screen point near (fx, fy) of the photo at least 3 screen px from any feature-cell border."""
    cell_w = g.stride * box["width"] / g.input_w
    cell_h = g.stride * box["height"] / g.input_h
    sx, sy = box["x"] + fx * box["width"], box["y"] + fy * box["height"]
    for _ in range(20):
        dx, dy = (sx - box["x"]) % cell_w, (sy - box["y"]) % cell_h
        if 3 < dx < cell_w - 3 and 3 < dy < cell_h - 3:
            break
        sx += 2.5 if not 3 < dx < cell_w - 3 else 0
        sy += 2.5 if not 3 < dy < cell_h - 3 else 0
    return sx, sy


async def one_user(browser, url: str, index: int, pictures: list[Picture], timings: Timings) -> SessionResult:
    """A session: open, upload each picture, check it, and look around (encoder or decoder page)."""
    async with Session(browser, url, f"session {index}", timings) as s:
        await s.open()
        await s.choose_upload()
        for k, picture in enumerate(pictures):
            if k:
                await s.nav("Detect", "Detect page")
            await s.upload(picture)
            if index % 2 == 0:
                await s.nav("Encoder attention", "encoder page")
                await s.click_a_cell(picture, 0.3 + (0.15 * k) % 0.45, 0.6)
            else:
                await s.nav("Decoder attention", "decoder page")
                await s.check_decoder(picture)
    return s.result


def burst_files(folder: Path, sessions: int) -> list[list[Path]]:
    """Per burst session: two distinct 24-megapixel JPEGs of its own, the header bomb, the zlib bomb in
    a text chunk and a scan bomb (the same three hostile files for everyone: each is refused or
    decoded on its own merits, the cache holds no refusal)."""
    import hostile
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    cases = {c.name: c for c in hostile.corpus(include_huge=False)}
    shared = [folder / "bomb.png", folder / "text_bomb.png", folder / "scan_bomb.jpg"]
    shared[0].write_bytes(cases["png_bomb"].data)
    shared[1].write_bytes(cases["ztxt_bomb"].data)
    shared[2].write_bytes(scan_bomb())
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:4000, 0:6000]
    out = []
    for i in range(sessions):
        mine = []
        for k in range(2):
            base = np.stack([(x // (5 + i)) % 256, (y // (3 + k)) % 256, (x + y) // 40 % 256], -1)
            pixels = np.clip(base + rng.integers(0, 16, (4000, 6000, 3)), 0, 255).astype(np.uint8)
            path = folder / f"burst{i}_photo{k}.jpg"
            Image.fromarray(pixels).save(path, "JPEG", quality=85)
            mine.append(path)
        out.append([mine[0], *shared, mine[1]])
    return out


def scan_bomb(scans: int = 5000) -> bytes:
    """A progressive JPEG whose last scan is repeated 5000 times (refused by its structure, < 1 MB)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (2000, 2000), (128, 128, 128)).save(buf, "JPEG", progressive=True, quality=80)
    data = buf.getvalue()
    sos = data.rindex(b"\xff\xda")
    last = data[sos:-2]  # the last scan, to the end-of-image marker
    return data[:-2] + last * scans + data[-2:]


async def burst_user(browser, url: str, index: int, files: list[Path], timings: Timings, answered: asyncio.Event,
                     counter: list[int], total: int, release: asyncio.Event) -> SessionResult:  # fmt: skip
    """A burst session: upload each file, wait for its analysis or its error message (any; a large
    photo may also be refused by the server's budget, which is a message too, never an exception);
    then wait, session open, until the driver has read the memory (`release`)."""
    from playwright.async_api import expect

    async with Session(browser, url, f"burst {index}", timings) as s:
        page = s.page
        await s.open()
        uploader = page.locator('[data-testid="stSidebar"] input[type=file]')
        for attempt in range(3):  # a rerun under load may put the source back (seen once): pick it again
            await s.choose_upload()
            try:
                await expect(uploader).to_be_attached(timeout=20_000)
                break
            except AssertionError:
                if attempt == 2:
                    raise
                s.result.retried.append("the Upload source was not kept; picked again")
        for path in files:
            start = time.perf_counter()
            await page.locator('[data-testid="stSidebar"] input[type=file]').set_input_files(str(path))
            shown = page.get_by_text(re.compile(re.escape(f" on {path.name} · "))).or_(
                page.locator('[data-testid="stMain"] [data-testid="stAlertContentError"]').filter(has_text=path.name)
            )
            await expect(shown.first).to_be_visible()
            await _idle(page)
            timings.add("burst upload", time.perf_counter() - start)
            exceptions = await page.locator('[data-testid="stException"]').all_inner_texts()
            if exceptions:
                s.result.problems.append(f"{path.name}: an exception is shown: {exceptions}")
            s.result.uploads += 1
        counter[0] += 1
        if counter[0] == total:
            answered.set()
        await asyncio.wait_for(release.wait(), WAIT_MS / 1000)
    return s.result


async def prankster(browser, url: str, corpus_dir: Path, good: Picture, timings: Timings) -> SessionResult:
    """A session that uploads every hostile file of tests/hostile.py while the others work: each one
    must give its analysis or a message naming the file and the reason; never an exception. A good
    scene after them must work."""
    import hostile
    from playwright.async_api import expect

    async with Session(browser, url, "prankster", timings) as s:
        page = s.page
        await s.open()
        await s.choose_upload()
        for case in hostile.corpus():
            path = corpus_dir / case.filename
            start = time.perf_counter()
            await page.locator('[data-testid="stSidebar"] input[type=file]').set_input_files(str(path))
            try:
                if case.ok:
                    await expect(page.get_by_text(re.compile(re.escape(f" on {case.filename} · ")))).to_be_visible()
                else:
                    alert = page.locator('[data-testid="stMain"] [data-testid="stAlertContentError"]')
                    alert = alert.filter(has_text=case.filename).filter(has_text=case.message)
                    await expect(alert).to_be_visible()
                await _idle(page)
            except AssertionError:
                shown = await page.locator('[data-testid="stMain"]').inner_text()
                s.result.problems.append(f"{case.name}: expected {'an analysis' if case.ok else case.message!r}; "
                                         f"the page says {shown[:300]!r}")  # fmt: skip
            timings.add("hostile upload", time.perf_counter() - start)
            exceptions = await page.locator('[data-testid="stException"]').all_inner_texts()
            if exceptions:
                s.result.problems.append(f"{case.name}: an exception is shown: {exceptions}")
            if case.ok:
                unexpected = await _errors(page)
                if unexpected:
                    s.result.problems.append(f"{case.name}: unexpected error {unexpected}")
        await s.upload(good)  # and the next good upload works
    return s.result


# ------------------------------------------------------------------------------------------------
# The run


@dataclass
class Report:
    sessions: int
    uploads_per_session: int
    soak_uploads: int
    latency: list[dict] = field(default_factory=list)
    session_results: list[dict] = field(default_factory=list)
    sessions_correct: int = 0
    peak_rss_mb: float = 0.0
    vm_hwm_mb: float = 0.0
    rss_start_mb: float = 0.0
    rss_after_sessions_mb: float = 0.0
    soak_rss_after_warmup_mb: float | None = None
    soak_rss_end_mb: float | None = None
    soak_rss_curve_mb: list[float] = field(default_factory=list)
    soak_problems: list[str] = field(default_factory=list)
    hostile_result: dict | None = None
    transient: list[str] = field(default_factory=list)  # failed once, worked when tried again
    rss_bound_mb: float = 150.0
    burst_sessions: int = 0
    burst_uploads: int = 0
    burst_rss_before_mb: float | None = None
    burst_rss_answered_mb: float | None = None
    burst_rss_closed_mb: float | None = None
    burst_settle_s: float | None = None
    burst_bound_mb: float = 300.0
    burst_problems: list[str] = field(default_factory=list)
    burst_breakdown: list[str] = field(default_factory=list)  # before, answered, (settled,) closed
    burst_visited: bool = False  # the last reading came after a new visitor's page load
    server_tracebacks: int = 0
    wall_s: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def soak_growth_mb(self) -> float | None:
        if self.soak_rss_after_warmup_mb is None or self.soak_rss_end_mb is None:
            return None
        return self.soak_rss_end_mb - self.soak_rss_after_warmup_mb

    def summary(self) -> str:
        lines = [f"Load test: {self.sessions} concurrent sessions x {self.uploads_per_session} uploads, "
                 f"then a soak of {self.soak_uploads} sequential uploads ({self.wall_s:.0f} s in all)", "",
                 "| action | count | p50 (s) | p95 (s) | max (s) |", "|---|---:|---:|---:|---:|"]  # fmt: skip
        for r in self.latency:
            lines.append(f"| {r['action']} | {r['count']} | {r['p50_s']:.2f} | {r['p95_s']:.2f} | {r['max_s']:.2f} |")
        lines += [
            "",
            f"sessions that saw exactly their own detections: {self.sessions_correct}/{self.sessions}",
            f"server memory (process tree): RSS at start {self.rss_start_mb:.0f} MB, after the sessions "
            f"{self.rss_after_sessions_mb:.0f} MB, peak (sampled) {self.peak_rss_mb:.0f} MB, "
            f"VmHWM {self.vm_hwm_mb:.0f} MB",
        ]
        if self.burst_rss_closed_mb is not None:
            lines.append(
                f"burst: {self.burst_sessions} sessions at once, {self.burst_uploads} large or hostile uploads: "
                f"RSS before {self.burst_rss_before_mb:.0f} MB, when all were answered "
                f"{self.burst_rss_answered_mb:.0f} MB, after the sessions closed {self.burst_rss_closed_mb:.0f} MB "
                f"({self.burst_rss_closed_mb - self.burst_rss_before_mb:+.0f} MB, bound {self.burst_bound_mb:.0f} MB; "
                f"read {self.burst_settle_s:.0f} s after they closed"
                f"{', after a new visitor opened the page' if self.burst_visited else ''})"
            )
            whens = ("before", "answered", *(("settled, no visitor yet",) if self.burst_visited else ()), "closed")
            lines += [f"  {when}: {what}" for when, what in zip(whens, self.burst_breakdown)]
        if self.soak_rss_end_mb is not None:
            lines.append(
                f"soak: RSS after {min(WARMUP_UPLOADS, self.soak_uploads)} uploads "
                f"{self.soak_rss_after_warmup_mb:.0f} MB, after "
                f"{self.soak_uploads} uploads {self.soak_rss_end_mb:.0f} MB, growth {self.soak_growth_mb:+.0f} MB "
                f"(bound {self.rss_bound_mb:.0f} MB)"
            )
        if self.hostile_result is not None:
            bad = len(self.hostile_result["problems"])
            lines.append(f"hostile files uploaded meanwhile by one more session: "
                         f"{'all handled' if not bad else f'{bad} problem(s)'}")  # fmt: skip
        lines.append(f"tracebacks in the server log: {self.server_tracebacks}")
        if self.transient:
            lines.append(f"failed once, worked on a second try ({len(self.transient)}):")
            lines += [f"  {t}" for t in self.transient]
        lines.append("RESULT: " + ("PASS" if not self.failures else "FAIL\n  " + "\n  ".join(self.failures)))
        return "\n".join(lines)


async def _drive(url: str, sessions: list[list[Picture]], soak: list[Picture], server: Server, report: Report,
                 max_seconds: float, hostile_dir: Path | None, hostile_good: Picture | None,
                 burst: list[list[Path]] | None = None, settle_s: float = 150.0) -> None:  # fmt: skip
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=WAIT_MS)  # every expected change, not only page actions, may take this long
    timings = Timings()
    async with async_playwright() as p:
        browser = await launch_chromium(p)
        try:
            # the first page load starts the model and imports the pages: timed apart from the warm ones
            async with Session(browser, url, "cold start", timings) as first:
                start = time.perf_counter()
                await first.page.goto(url)
                await expect(first.page.get_by_text(re.compile(r"^model runs \(this session\): \d+$"))).to_be_visible()
                await _idle(first.page)
                timings.add("first open (cold start)", time.perf_counter() - start)
            if first.result.problems:
                report.failures.append(f"the first page load failed: {first.result.problems}")
            if burst:
                await asyncio.wait_for(_burst(browser, url, burst, server, report, timings, settle_s), max_seconds)
            if sessions or hostile_dir:
                users = [one_user(browser, url, i, pics, timings) for i, pics in enumerate(sessions)]
                if hostile_dir is not None:
                    users.append(prankster(browser, url, hostile_dir, hostile_good, timings))
                results = await asyncio.wait_for(asyncio.gather(*users, return_exceptions=True), max_seconds)
                if hostile_dir is not None:
                    r = results.pop()
                    if isinstance(r, BaseException):
                        r = SessionResult("prankster", problems=[f"{type(r).__name__}: {str(r)[:500]}"])
                    report.hostile_result = asdict(r)
                for i, r in enumerate(results):
                    if isinstance(r, BaseException):
                        r = SessionResult(f"session {i}", problems=[f"{type(r).__name__}: {str(r)[:500]}"])
                    report.session_results.append(asdict(r))
                    report.sessions_correct += not r.problems and r.correct == r.uploads == len(sessions[i])
            report.rss_after_sessions_mb = server.rss_mb()
            if soak:
                await asyncio.wait_for(_soak(browser, url, soak, server, report, timings), max_seconds)
        finally:
            await browser.close()
    report.latency = timings.table()


async def _burst(browser, url: str, files: list[list[Path]], server: Server, report: Report, timings: Timings,
                 settle_s: float) -> None:  # fmt: skip
    report.burst_sessions = len(files)
    report.burst_rss_before_mb = server.rss_mb()
    report.burst_breakdown.append(server.breakdown())
    answered, release, counter = asyncio.Event(), asyncio.Event(), [0]
    users = [asyncio.ensure_future(burst_user(browser, url, i, f, timings, answered, counter, len(files), release))
             for i, f in enumerate(files)]  # fmt: skip
    done = asyncio.ensure_future(answered.wait())
    await asyncio.wait([done, *users], return_when=asyncio.FIRST_COMPLETED)  # all answered, or one failed
    report.burst_rss_answered_mb = server.rss_mb()
    report.burst_breakdown.append(server.breakdown())
    release.set()
    results = await asyncio.gather(*users, return_exceptions=True)
    done.cancel()
    for i, r in enumerate(results):
        if isinstance(r, BaseException):
            report.burst_problems.append(f"burst {i}: {type(r).__name__}: {str(r)[:300]}")
            continue
        report.burst_uploads += r.uploads
        report.burst_problems += [f"{r.name}: {p}" for p in r.problems]
        report.transient += [f"{r.name}: {t}" for t in r.retried]
    closed = time.perf_counter()  # every context is closed: the server drops the sessions in its own time
    visited = False
    while True:
        report.burst_rss_closed_mb = server.rss_mb()
        report.burst_settle_s = time.perf_counter() - closed
        if report.burst_rss_closed_mb - report.burst_rss_before_mb <= report.burst_bound_mb:
            break
        if report.burst_settle_s > settle_s:
            if visited:
                break
            # Streamlit forgets a closed session once its TTL has passed, but only when its session store
            # is next used (cachetools' TTLCache expires lazily): by the next visitor. One comes.
            report.burst_breakdown.append(server.breakdown())
            async with Session(browser, url, "visitor after the burst", timings) as v:
                await v.open()
            visited = True
            report.burst_visited = True
            continue
        await asyncio.sleep(2.0)
    report.burst_breakdown.append(server.breakdown())


async def _soak(browser, url: str, pictures: list[Picture], server: Server, report: Report, timings: Timings):
    async with Session(browser, url, "soak", timings) as s:
        await s.open()
        await s.choose_upload()
        for i, picture in enumerate(pictures):
            await s.upload(picture, check_download=i % 20 == 0, action="soak upload")  # every 20th: the JSON too
            report.soak_rss_curve_mb.append(round(server.rss_mb(), 1))
            if i + 1 == min(WARMUP_UPLOADS, len(pictures)):
                report.soak_rss_after_warmup_mb = report.soak_rss_curve_mb[-1]
        report.soak_rss_end_mb = report.soak_rss_curve_mb[-1]
    report.soak_problems = s.result.problems
    report.transient += s.result.retried
    if len(report.soak_rss_curve_mb) < len(pictures):
        report.soak_problems.append(f"the soak stopped after {len(report.soak_rss_curve_mb)} uploads")


def run(
    sessions: int = 8,
    uploads: int = 3,
    soak: int = 200,
    soak_size: int = 1024,
    rss_bound_mb: float = 150.0,
    max_seconds: float = 1800.0,
    workdir: Path | None = None,
    hostile_files: bool = True,
    log=print,
    burst: int = 0,
    burst_bound_mb: float = 300.0,
    settle_s: float = 150.0,
) -> Report:
    """Run the whole load test; returns the `Report` (its `failures` list is empty when all is well)."""
    start = time.perf_counter()
    report = Report(sessions, uploads, soak, rss_bound_mb=rss_bound_mb, burst_bound_mb=burst_bound_mb)
    with tempfile.TemporaryDirectory(prefix="detr_load_") as tmp:
        work = Path(workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        global SHOTS
        SHOTS = work if workdir else None
        log("preparing images and the serial reference run...")
        ref = Reference()
        per_session = [
            scene_files(ref, work / f"session_{i}", uploads, first=1000 + 50 * i, size=SCENE_SIZE, fmt="PNG")
            for i in range(sessions)
        ]
        soak_pictures = scene_files(ref, work / "soak", soak, first=5000, size=soak_size, fmt="JPEG") if soak else []
        hostile_dir = hostile_good = None
        if hostile_files:
            import hostile

            hostile_dir = work / "hostile"
            hostile.write_corpus(hostile_dir)
            hostile_good = scene_files(ref, work / "after_hostile", 1, first=900, size=SCENE_SIZE, fmt="PNG")[0]
        burst_paths = burst_files(work / "burst", burst) if burst else None
        log(f"starting the server ({len(per_session) * uploads} + {len(soak_pictures)} images ready)...")
        server = Server(work)
        try:
            report.rss_start_mb = server.rss_mb()
            log(f"server pid {server.pid} on {server.url}; driving the browser sessions...")
            asyncio.run(_drive(server.url, per_session, soak_pictures, server, report, max_seconds, hostile_dir,
                               hostile_good, burst_paths, settle_s))  # fmt: skip
            report.peak_rss_mb = max(server.peak_rss_mb, server.rss_mb())
            report.vm_hwm_mb = server.hwm_mb()
        finally:
            server.stop()
            report.server_tracebacks = server.log().count("Traceback")
            if report.server_tracebacks:
                log(server.log()[-4000:])
    report.wall_s = time.perf_counter() - start

    for r in [*report.session_results, *([report.hostile_result] if report.hostile_result else [])]:
        report.transient += [f"{r['name']}: {t}" for t in r["retried"]]
    for r in report.session_results:
        if r["problems"] or r["correct"] != r["uploads"]:
            report.failures.append(f"{r['name']}: {r['correct']}/{r['uploads']} uploads correct; {r['problems'][:5]}")
    if report.hostile_result is not None and report.hostile_result["problems"]:
        report.failures.append(f"hostile files: {report.hostile_result['problems'][:10]}")
    if report.sessions_correct != sessions:
        report.failures.append(f"only {report.sessions_correct} of {sessions} sessions saw exactly their own results")
    if soak:
        report.failures += [f"soak: {p}" for p in report.soak_problems[:10]]
        growth = report.soak_growth_mb
        if growth is None or growth > rss_bound_mb:
            report.failures.append(f"soak: RSS grew by {growth} MB after warm-up (bound {rss_bound_mb} MB)")
    if burst:
        report.failures += [f"burst: {p}" for p in report.burst_problems[:10]]
        if report.burst_rss_closed_mb is None:
            report.failures.append("burst: the memory after the sessions closed was not read")
        elif report.burst_rss_closed_mb - report.burst_rss_before_mb > burst_bound_mb:
            grown = report.burst_rss_closed_mb - report.burst_rss_before_mb
            report.failures.append(f"burst: RSS after the sessions closed is {grown:+.0f} MB from before the burst "
                                   f"(bound {burst_bound_mb:.0f} MB, after {settle_s:.0f} s)")  # fmt: skip
    if report.server_tracebacks:
        report.failures.append(f"the server logged {report.server_tracebacks} traceback(s)")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=8, help="browser sessions at once (default 8)")
    parser.add_argument("--uploads", type=int, default=3, help="images each session uploads (default 3)")
    parser.add_argument("--soak", type=int, default=200, help="sequential uploads of the soak (default 200; 0: none)")
    parser.add_argument("--soak-size", type=int, default=1024, help="side of the soak's images in px (default 1024)")
    parser.add_argument("--rss-bound-mb", type=float, default=150.0, help="allowed RSS growth after warm-up")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="time limit of each phase")
    parser.add_argument("--no-hostile", action="store_true", help="no extra session uploading tests/hostile.py's files")
    parser.add_argument("--burst", type=int, default=3, help="sessions of the large/hostile burst (default 3; 0: none)")
    parser.add_argument("--burst-bound-mb", type=float, default=300.0, help="RSS bound after the burst")
    parser.add_argument("--settle-seconds", type=float, default=150.0, help="longest wait for that (default 150)")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    parser.add_argument("--workdir", type=Path, help="keep the images and the server log here (default: a temp dir)")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is not installed", file=sys.stderr)
        return 2
    report = run(args.sessions, args.uploads, args.soak, args.soak_size, args.rss_bound_mb, args.max_seconds,
                 workdir=args.workdir, hostile_files=not args.no_hostile, burst=args.burst,
                 burst_bound_mb=args.burst_bound_mb, settle_s=args.settle_seconds)  # fmt: skip
    print(report.summary())
    if args.json:
        args.json.write_text(json.dumps({**asdict(report), "soak_growth_mb": report.soak_growth_mb}, indent=2))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
