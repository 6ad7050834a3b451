"""What the dashboard keeps between runs: models, analyses, decoded images, relevance, image bytes, counters.

- `get_model(name, weights_id)`: one `st.cache_resource` model per name, shared by every session. It is
  only read (capture and relevance never edit it and are thread-safe).
- `cached_analysis(key, image)`: one `Analysis` per `AnalysisKey` (model name, weights, image bytes hash,
  preprocessing settings) in `ANALYSES`, a process-wide LRU bounded by entries and bytes (ui/lru.py). This is
  the only place the dashboard runs the model forward for an image. It counts its runs twice: for the
  server (`model_runs()`) and for the session that caused them (`session_model_runs()`, shown in the
  sidebar as "model runs (this session): N"); only a cache miss runs the model, once however many
  sessions ask for the same image at once. Switching pages, moving a slider, clicking a pixel or
  picking a query reads the cached analysis and never runs the model again; a new image or model does.
- `decoded_image(...)`: the decoded RGB image per image bytes hash, in `IMAGES` (bounded the same way,
  tighter, and found again while a session still holds it); the analysis and relevance take this
  decoded image: a session's image is decoded once however often it reruns.
- `release_freed_memory()`: after work that freed large buffers (a cache miss), malloc gives the
  free memory back to the system (glibc's `malloc_trim`), so that a burst of large photos does not
  leave the server hundreds of MB larger.
- `relevance_map(...)`: Chefer et al. relevance (a forward + backward pass) per (model, image,
  query), on demand, counted in `relevance_runs()`.
- `scene_png`, `sample_bytes`, `url_bytes`: the bytes of the image sources (synthetic scenes, the
  bundled sample photos, an image URL fetched by detr_core.io.fetch).
- `checkpoint_host(url)`: whether a checkpoint's host answers, checked once per server process in a
  background thread (the model picker's labels say what is true before a pick).
- `start_decode_workers()`: the budgeted decode workers (detr_core.io.decode_budget), started once
  per server process in a background thread, so that the first upload is not the one that waits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import logging
import threading
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import streamlit as st
from PIL import Image

from detr_core import MODELS, DETRError, load_image, load_model
from detr_core.analysis import agreement, budget, pipeline
from detr_core.analysis.capture import Analysis
from detr_core.io import decode_budget, fetch
from detr_core.io.image import thumbnail
from detr_core.models.fast import optimize_for_inference
from detr_core.models.zoo import SHAPES_MODEL

from . import own_models, precision
from .lru import MB, BoundedLRU

log = logging.getLogger("detr_explorer")

SHAPES = SHAPES_MODEL
ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = ROOT / "assets" / "samples"
SAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SCENE_SIZE = 256  # synthetic scenes are drawn at 256 px (detr_shapes resizes them to 128)
SCENE_COUNT = 100  # scene numbers 0..99, drawn from the held-out seeds (never seen in training)
# Process-wide caches, bounded by entries AND bytes (ui/lru.py), so a server's memory stays flat
# however many distinct images its users send. An R50-DC5 analysis at 800x1333 (50x84 = 4200 cells)
# holds about 80 MB (encoder q and k, cross-attention k: 3 x 6 layers x 8 heads x 4200 x 32 floats),
# a plain R50 one about 22 MB, detr_shapes' a few hundred kB: 512 MB keeps 6 DC5 analyses, all 16
# R50 ones. A decoded 24-megapixel phone photo holds 96 MB (Pillow keeps RGB as 4 bytes a pixel),
# a 12-megapixel one 48 MB, a scene or sample photo at most about 1 MB. The decoded images are kept
# for 64 MB at most: all 16 small ones, one photo of up to 16 megapixels, never a 24-megapixel one
# (256 MB kept two of those: +183 MB that stayed after every visitor had left, issue #12's burst).
# What a session's current view holds (its image, and its analysis after an eviction) stays alive
# anyway, and IMAGES finds it there (`while_referenced`): a session's reruns never decode its image
# again, however big; once no session holds it, its memory goes (a mapping of the decode worker's
# shared memory, unmapped). Everything the analysis needs is cached apart (ANALYSES, the display
# copies): a decoded original is read again only for a new analysis, relevance or download. Worst
# case, after every visitor left: 512 + 64 MB. (MB here is 2^20 bytes.)
ANALYSIS_CACHE_ENTRIES = 16
ANALYSIS_CACHE_BYTES = 512 * MB
IMAGE_CACHE_ENTRIES = 16
IMAGE_CACHE_BYTES = 64 * MB
DISPLAY_MAX_SIDE = 900  # photos are shown (not analyzed) at most this large

# Work whose cost grows with the square of the feature cells (relevance, rollout, every layer's
# entropy) is refused above detr_core.analysis.budget's limits, with a message that says what to
# lower (`work_refusal`). Relevance runs one at a time in the whole server (_relevance_lock): it keeps
# one [cells x cells] matrix per encoder layer (about 0.5 GB + 7e-8 GB x cells^2). Every model in the
# zoo, DC5 ones included, at the default 800/1333 sizes (<= 50 x 84 = 4,200 cells) fits every budget.
_relevance_lock = threading.Lock()

# ------------------------------------------------------------------------------------------------
# Counters (process-wide: the caches they count are process-wide too)

_counter_lock = threading.Lock()
MODEL_RUNS = 0  # forward passes run by `cached_analysis` (cache misses), all sessions
RELEVANCE_RUNS = 0  # forward + backward passes run by `relevance_map`, all sessions
SESSION_RUNS_KEY = "_model_runs_here"  # this session's share of MODEL_RUNS (in its session state)


def _count(kind: str) -> None:
    global MODEL_RUNS, RELEVANCE_RUNS
    with _counter_lock:
        if kind == "model":
            MODEL_RUNS += 1
        else:
            RELEVANCE_RUNS += 1


def model_runs() -> int:
    """Forward passes the server has run for analyses (every session's)."""
    return MODEL_RUNS


def session_model_runs() -> int:
    """Forward passes this session caused (a cached analysis another session asked for first is free)."""
    return int(st.session_state.get(SESSION_RUNS_KEY, 0))


def relevance_runs() -> int:
    return RELEVANCE_RUNS


# ------------------------------------------------------------------------------------------------
# Cached models, images and analyses


@st.cache_resource(show_spinner=False, max_entries=4)
def _model(name: str, weights_id: str):
    """The named model with its verified checkpoint, one per (name, checkpoint file), shared by every
    session. `weights_id` is the checkpoint's file name, which carries its hash: a replaced
    checkpoint is a new entry, never the old weights under the new name. The served copy has batch
    norm folded into the backbone's convolutions (exact, faster; see detr_core.models.fast)."""
    model = load_model(name)
    return optimize_for_inference(model) if MODELS[name].foldable else model


def get_model(name: str, weights_id: str):
    """The model for `name` (cached)."""
    if own_models.is_own(name):
        return own_models.own_model(name)
    return _model(name, weights_id)


def image_nbytes(image: Image.Image) -> int:
    """Bytes Pillow holds for the pixels: it stores every multi-band 8-bit mode in 4 bytes a pixel
    (RGB is padded to RGBX; a soak of 3072 px uploads grows the server by about 40 MB per kept image,
    not 27 MB), "I" and "F" in 4, "I;16" in 2, "L", "P" and "1" in 1."""
    if len(image.getbands()) > 1 or image.mode in ("I", "F"):
        per_pixel = 4
    else:
        per_pixel = 2 if image.mode.startswith("I;16") else 1
    return image.width * image.height * per_pixel


# One Analysis object is shared by every session that shows its image (st.cache_data used to hand
# each run its own unpickled copy). Nothing mutates it: detr_core.analysis.attention/stats and ui/compute only
# read its tensors (checked: no in-place op, no attribute assignment in pages/ or ui/).
# Likewise the decoded images are only read (render.* and the display copy
# draw on copies).
ANALYSES: BoundedLRU[Analysis] = BoundedLRU(
    "analysis", ANALYSIS_CACHE_ENTRIES, ANALYSIS_CACHE_BYTES, sizeof=lambda a: a.nbytes()
)
IMAGES: BoundedLRU[Image.Image] = BoundedLRU(
    "decoded image", IMAGE_CACHE_ENTRIES, IMAGE_CACHE_BYTES, image_nbytes, while_referenced=True
)


def _malloc_trim():
    """glibc's `malloc_trim(size_t pad) -> int`, or None (another C library: nothing to call)."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Give the memory malloc keeps after large frees back to the system (glibc: `malloc_trim(0)`;
    elsewhere nothing). Called after a cache miss, never per rerun (about 0.1 ms, a few ms when
    there is much to return).

    Why: Pillow allocates images in 16 MB blocks, below glibc's largest mmap threshold, so once
    one has been freed glibc serves the next from its heaps (one arena per script thread), and
    keeps what is freed there. In the load test's burst (six 24-megapixel photos from three
    sessions at once) that was 346 MB of free memory the server still held after every visitor
    had left, all of it returned by one `malloc_trim(0)`."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def clear_caches() -> None:
    """Forget every cached analysis and decoded image (and Streamlit's own caches)."""
    ANALYSES.clear()
    IMAGES.clear()
    st.cache_data.clear()
    display_copy.clear()


class AnalysisKey(NamedTuple):
    """What identifies one analysis (and the relevance maps computed beside it)."""

    model_name: str
    weights_id: str  # the checkpoint's file name (it carries the file's hash)
    image_hash: str  # SHA-256 of the image bytes
    min_size: int
    max_size: int
    precision: str = "exact"  # ui/precision: EXACT, or FAST (the device's native reduced precision)


def cached_analysis(key: AnalysisKey, image: Image.Image) -> Analysis:
    """ONE forward pass with every attention map recorded; the only place the UI runs the model.

    Cached in ANALYSES: the model runs (and MODEL_RUNS counts) only on a miss, once for all the
    sessions that ask for the same key at the same time. A bad image raises (nothing is cached)."""

    ran = []

    def compute() -> Analysis:
        model = get_model(key.model_name, key.weights_id)
        dtype = precision.autocast_dtype(key.precision, precision.device_of(model))
        result = pipeline.analyze(model, image, key.model_name, key.min_size, key.max_size, autocast_dtype=dtype)
        _count("model")
        ran.append(True)
        release_freed_memory()  # the pass's activations and the resized input are gone
        return result

    result = ANALYSES.get_or_compute(key, compute)
    if ran:  # this session's call ran the pass (compute runs in the caller's thread)
        st.session_state[SESSION_RUNS_KEY] = session_model_runs() + 1
    return result


@st.cache_data(max_entries=64, show_spinner=False)
def relevance_map(key: AnalysisKey, query: int, _image: Image.Image):
    """Chefer et al. relevance of `query` over the image ([h, w]), computed once per key and query.
    One at a time in the whole server; callers check `relevance_refusal`."""
    from detr_core.analysis.relevance import relevance

    model = get_model(key.model_name, key.weights_id)
    prepared = pipeline.prepare(model, _image, key.model_name, key.min_size, key.max_size)
    with _relevance_lock:
        result = relevance(model, prepared, query)
    _count("relevance")
    del prepared
    release_freed_memory()  # the forward and backward passes' buffers are gone
    return result


def work_refusal(request: budget.Request, analysis: Analysis, min_size: int | None = None,
                 max_size: int | None = None) -> str | None:
    """Why `request` ("relevance", "rollout" or "entropy") is not offered for this analysis (its cost
    at this many feature cells is over the server's budget, detr_core.analysis.budget), or None."""
    verdict = budget.check_budget(
        request, analysis.geometry.tokens, layers=analysis.enc_layers, heads=analysis.nheads,
        min_size=min_size, max_size=max_size,
    )  # fmt: skip
    return None if verdict.ok else f"Not offered at this size: {verdict.message}"


def relevance_refusal(analysis: Analysis, min_size: int | None = None, max_size: int | None = None) -> str | None:
    """Why relevance is not offered for this analysis, or None (see `work_refusal`)."""
    return work_refusal("relevance", analysis, min_size, max_size)


def precision_agreement(key: AnalysisKey, threshold: float, image: Image.Image) -> agreement.Agreement:
    """Whether the fast precision finds the exact pass's detections on this image (both analyses
    cached like any other; computed when the Model page asks)."""
    margin = agreement.SCORE_MARGIN
    exact = cached_analysis(key._replace(precision=precision.EXACT), image).detections(max(threshold - margin, 0.0))
    fast = cached_analysis(key._replace(precision=precision.FAST), image).detections(max(threshold - margin, 0.0))
    return agreement.compare(exact, fast, threshold, margin)


@st.cache_resource(show_spinner=False)
def start_decode_workers() -> threading.Thread | None:
    """Start the decode workers in the background, once per server process (nothing when the
    budget is off, $DETR_DECODE_BUDGET=0). Every upload, camera photo and fetched URL is decoded
    there (`load_image`); a decode that comes first starts them itself."""
    from detr_core.io.image import budget_on

    if not budget_on():
        return None

    def warm() -> None:
        try:
            decode_budget.warm_up()
        except Exception:  # the first decode will try again, and say what fails
            log.exception("the decode workers did not start")

    thread = threading.Thread(target=warm, name="decode warm-up", daemon=True)
    thread.start()
    return thread


def decoded_image(image_hash: str, image_bytes: bytes) -> Image.Image:
    """The RGB image (shared, read-only; cached in IMAGES); raises ImageError for bad bytes (not cached)."""

    def decode() -> Image.Image:
        try:
            return load_image(image_bytes)
        finally:
            release_freed_memory()  # what the decode (or its refusal) freed in this process

    return IMAGES.get_or_compute(image_hash, decode)


@st.cache_resource(show_spinner=False, max_entries=16)
def display_copy(image_hash: str, max_side: int, _image: Image.Image) -> Image.Image:
    """`_image` at most `max_side` px a side (Pillow's thumbnail, LANCZOS), made without copying the
    original first (detr_core.io.image.thumbnail)."""
    small = thumbnail(_image, max_side, Image.LANCZOS)
    release_freed_memory()  # the thumbnail's intermediate reduction
    return small


@st.cache_data(show_spinner=False, max_entries=256)
def scene_png(number: int, size: int = SCENE_SIZE) -> bytes:
    """Synthetic scene `number` (a held-out seed) as PNG bytes."""
    from detr_core.training import synthetic

    image, _ = synthetic.make_scene(synthetic.HELDOUT_FIRST_SEED + number, size)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def scenes_available() -> bool:
    try:
        from detr_core.training import synthetic  # noqa: F401
    except ImportError:
        return False
    return True


@st.cache_data(show_spinner=False)
def sample_names() -> list[str]:
    return sorted(p.name for p in SAMPLES_DIR.iterdir() if p.suffix.lower() in SAMPLE_SUFFIXES)


@st.cache_data(show_spinner=False, max_entries=32)
def sample_bytes(name: str) -> bytes:
    if name not in sample_names():
        raise DETRError(f"no sample photo named {name!r}")
    return (SAMPLES_DIR / name).read_bytes()


def url_bytes(url: str) -> bytes:
    """The bytes behind an image URL (detr_core.io.fetch: public hosts only, bounded size and time);
    cached for ten minutes per URL. Raises FetchError (a DETRError) with a message for visitors."""
    return _fetched(url, fetch.private_allowed())


@st.cache_data(show_spinner=False, max_entries=16, ttl=600)
def _fetched(url: str, private_allowed: bool) -> bytes:  # the setting is part of the key
    return fetch.fetch_bytes(url)


# ------------------------------------------------------------------------------------------------
# Is the checkpoint host reachable? (once per server process, off the page's critical path)

HOST_CHECK_TIMEOUT_S = 3.0


class _HostCheck:
    """One background probe per host: `status(url)` is None while it runs, then True or False."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._results: dict[str, bool | None] = {}
        self._threads: dict[str, threading.Thread] = {}

    def status(self, url: str) -> bool | None:
        host = urlsplit(url).netloc
        with self._lock:
            if host not in self._results:
                self._results[host] = None
                thread = threading.Thread(target=self._probe, args=(url, host), name=f"probe {host}", daemon=True)
                self._threads[host] = thread
                thread.start()
            return self._results[host]

    def _probe(self, url: str, host: str) -> None:
        ok = fetch.host_answers(url, timeout=HOST_CHECK_TIMEOUT_S)
        log.info("checkpoint host %s %s", host, "answers" if ok else "does not answer (downloads will fail)")
        with self._lock:
            self._results[host] = ok

    def wait(self, timeout: float = 10.0) -> None:
        """Wait for the probes started so far (tests)."""
        for thread in list(self._threads.values()):
            thread.join(timeout)

    def reset(self) -> None:
        """Forget every result (tests; a server checks once per process)."""
        with self._lock:
            self._results.clear()
            self._threads.clear()


HOST_CHECK = _HostCheck()


def checkpoint_host(url: str) -> bool | None:
    """Whether the host of `url` answered (True), did not (False), or is still being asked (None)."""
    return HOST_CHECK.status(url)
