"""Session plumbing: cached models and analyses, the sidebar every page shares, and the URL.

Caching (what runs the model, and when):

- `_model(name, checkpoint)`: one `st.cache_resource` model per name, shared by every session. It is
  only read (capture and relevance never edit it and are thread-safe).
- `cached_analysis(key, image)`: one `Analysis` per `AnalysisKey` (model name, weights, image bytes hash,
  preprocessing settings) in `ANALYSES`, a process-wide LRU bounded by entries and bytes (ui/lru.py). This is
  the only place the dashboard runs the model forward for an image, and it counts its runs in
  `MODEL_RUNS` (shown in the sidebar as "model runs: N"; only a cache miss runs the model, once
  however many sessions ask for the same image at once). Switching pages, moving a slider,
  clicking a pixel or picking a query reads the cached analysis and never runs the model again; a
  new image or model does.
- `decoded_image(...)`: the decoded RGB image per image bytes hash, in `IMAGES` (bounded the same way);
  the analysis and relevance take this decoded image: user bytes are decoded once.
- `relevance_map(...)`: Chefer et al. relevance (a forward + backward pass) per (model, image,
  query), on demand, counted in `RELEVANCE_RUNS`.

The URL: the model, the image (synthetic scene or sample photo), the threshold, the page, the
clicked encoder points and the picked decoder query live in `st.query_params`; a session that
opens such a link starts on the same view (`_init_session`), and every run writes the current view
back (`sync_url`).
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import runpy
import threading
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import streamlit as st
from PIL import Image

from detr_core import MODELS, CheckpointError, DETRError, load_image, load_model
from detr_core.analysis import pipeline
from detr_core.analysis.capture import Analysis
from detr_core.io.image import Geometry
from detr_core.io.postprocess import Detection
from detr_core.models import weights
from detr_core.models.fast import optimize_for_inference
from detr_core.models.zoo import SHAPES_MODEL, ModelSpec, model_status

from . import own_models
from .lru import MB, BoundedLRU
from .model_upload import checkpoint_upload  # issue 14: the browser checkpoint upload (off by default)
from .text import plain  # user-given names in Markdown (issue 12)

log = logging.getLogger("detr_explorer")

SHAPES = SHAPES_MODEL
OFFICIAL_PREFERENCE = ("detr_resnet50", "detr_resnet50_dc5", "detr_resnet101", "detr_resnet101_dc5", "detr_demo")
ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = ROOT / "assets" / "samples"
SAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SCENE_SIZE = 256  # synthetic scenes are drawn at 256 px (detr_shapes resizes them to 128)
SCENE_COUNT = 100  # scene numbers 0..99, drawn from the held-out seeds (never seen in training)
# Process-wide caches, bounded by entries AND bytes (ui/lru.py), so a server's memory stays flat
# however many distinct images its users send. An R50-DC5 analysis at 800x1333 (50x84 = 4200 cells)
# holds about 80 MB (encoder q and k, cross-attention k: 3 x 6 layers x 8 heads x 4200 x 32 floats),
# a plain R50 one about 22 MB, detr_shapes' a few hundred kB: 512 MB keeps 6 DC5 analyses, all 16
# R50 ones. A decoded 24-megapixel phone photo holds 96 MB (Pillow keeps RGB as 4 bytes a pixel):
# 256 MB keeps 2 of those, 16 of up to 4 megapixels. Worst case, both full: 768 MB, plus what live
# sessions still hold (each session's current view keeps its own analysis and image alive after an
# eviction; the upload's bytes are Streamlit's, per session). (MB here is 2^20 bytes.)
ANALYSIS_CACHE_ENTRIES = 16
ANALYSIS_CACHE_BYTES = 512 * MB
IMAGE_CACHE_ENTRIES = 16
IMAGE_CACHE_BYTES = 256 * MB
DISPLAY_MAX_SIDE = 900  # photos are shown (not analyzed) at most this large

SOURCE_SCENE, SOURCE_SAMPLE, SOURCE_UPLOAD, SOURCE_CAMERA = "scene", "sample", "upload", "camera"
SOURCE_LABELS = {
    SOURCE_SCENE: "Synthetic scene",
    SOURCE_SAMPLE: "Sample photo",
    SOURCE_UPLOAD: "Upload",
    SOURCE_CAMERA: "Camera",
}

# Relevance (Chefer et al.) rebuilds each layer's attention block by block in its backward pass and
# keeps one [cells x cells] float32 Ā per encoder layer (detr_core/analysis/relevance.py). Peak resident
# memory above a captured pass (`python benchmarks/bench.py`, row "relevance: peak memory"): R50 0.56 GB
# at 850 cells, R50-DC5 1.28 GB at 3,350; about 0.5 GB + 7e-8 GB x cells^2. The server runs one at a
# time (_relevance_lock) and refuses more than RELEVANCE_MAX_TOKENS cells (about 1.7 GB): every model
# in the zoo, DC5 ones included, at the default 800/1333 sizes (<= 50 x 84 = 4,200 cells) passes.
RELEVANCE_MAX_TOKENS = 4200


def relevance_gb(tokens: int) -> float:
    """Estimated peak memory of one relevance pass, GB (the fit above)."""
    return 0.5 + 7e-8 * tokens**2


_relevance_lock = threading.Lock()

# ------------------------------------------------------------------------------------------------
# Counters (process-wide: the caches they count are process-wide too)

_counter_lock = threading.Lock()
MODEL_RUNS = 0  # forward passes run by `cached_analysis` (cache misses)
RELEVANCE_RUNS = 0  # forward + backward passes run by `relevance_map`


def _count(kind: str) -> None:
    global MODEL_RUNS, RELEVANCE_RUNS
    with _counter_lock:
        if kind == "model":
            MODEL_RUNS += 1
        else:
            RELEVANCE_RUNS += 1


def model_runs() -> int:
    return MODEL_RUNS


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


def _image_nbytes(image: Image.Image) -> int:
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
IMAGES: BoundedLRU[Image.Image] = BoundedLRU("decoded image", IMAGE_CACHE_ENTRIES, IMAGE_CACHE_BYTES, _image_nbytes)


def clear_caches() -> None:
    """Forget every cached analysis and decoded image (and Streamlit's own caches)."""
    ANALYSES.clear()
    IMAGES.clear()
    st.cache_data.clear()
    _display_copy.clear()


class AnalysisKey(NamedTuple):
    """What identifies one analysis (and the relevance maps computed beside it)."""

    model_name: str
    weights_id: str  # the checkpoint's file name (it carries the file's hash)
    image_hash: str  # SHA-256 of the image bytes
    min_size: int
    max_size: int


def cached_analysis(key: AnalysisKey, image: Image.Image) -> Analysis:
    """ONE forward pass with every attention map recorded; the only place the UI runs the model.

    Cached in ANALYSES: the model runs (and MODEL_RUNS counts) only on a miss, once for all the
    sessions that ask for the same key at the same time. A bad image raises (nothing is cached)."""

    def compute() -> Analysis:
        model = get_model(key.model_name, key.weights_id)
        result = pipeline.analyze(model, image, key.model_name, key.min_size, key.max_size)
        _count("model")
        return result

    return ANALYSES.get_or_compute(key, compute)


@st.cache_data(max_entries=64, show_spinner=False)
def relevance_map(key: AnalysisKey, query: int, _image: Image.Image):
    """Chefer et al. relevance of `query` over the image ([h, w]), computed once per key and query.
    One at a time in the whole server (see RELEVANCE_MAX_TOKENS); callers check `relevance_refusal`."""
    from detr_core.analysis.relevance import relevance

    model = get_model(key.model_name, key.weights_id)
    prepared = pipeline.prepare(model, _image, key.model_name, key.min_size, key.max_size)
    with _relevance_lock:
        result = relevance(model, prepared, query)
    _count("relevance")
    return result


def relevance_refusal(analysis: Analysis) -> str | None:
    """Why relevance is not offered for this analysis (too many feature cells), or None."""
    tokens = analysis.geometry.tokens
    if tokens <= RELEVANCE_MAX_TOKENS:
        return None
    gb = relevance_gb(tokens)
    return (
        f"Relevance is not offered at this size: it runs a forward and a backward pass that keep one cells x cells "
        f"matrix per encoder layer, which grows with the square of the feature cells: {tokens:,} cells here "
        f"(about {gb:.1f} GB), at most {RELEVANCE_MAX_TOKENS:,} on this server. Lower the shorter side in the "
        "sidebar, or use raw attention, which works at any size."
    )


def decoded_image(image_hash: str, image_bytes: bytes) -> Image.Image:
    """The RGB image (shared, read-only; cached in IMAGES); raises ImageError for bad bytes (not cached)."""
    return IMAGES.get_or_compute(image_hash, lambda: load_image(image_bytes))


@st.cache_resource(show_spinner=False, max_entries=16)
def _display_copy(image_hash: str, max_side: int, _image: Image.Image) -> Image.Image:
    img = _image.copy()
    img.thumbnail((max_side, max_side), Image.LANCZOS)
    return img


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


# ------------------------------------------------------------------------------------------------
# The view: what every page reads


@dataclass
class View:
    """The current model, image and analysis of this session's run (built by `sidebar`)."""

    model_name: str
    spec: ModelSpec
    weights_id: str  # the checkpoint's file name (it carries the file's hash)
    threshold: float
    min_size: int
    max_size: int
    source: str
    image_label: str = ""
    image_bytes: bytes | None = None
    image_hash: str | None = None
    image: Image.Image | None = None
    analysis: Analysis | None = None
    error: str | None = None  # why there is no analysis (bad file, no model, ...)
    model: Any = None

    @property
    def key(self) -> AnalysisKey:
        assert self.image_hash is not None
        return AnalysisKey(self.model_name, self.weights_id, self.image_hash, self.min_size, self.max_size)

    @property
    def geometry(self) -> Geometry:
        assert self.analysis is not None
        return self.analysis.geometry

    def detections(self, threshold: float | None = None) -> list[Detection]:
        assert self.analysis is not None
        return self.analysis.detections(self.threshold if threshold is None else threshold)

    def display_image(self, max_side: int = DISPLAY_MAX_SIDE) -> Image.Image:
        """The photo, at most `max_side` px, for showing (coordinates stay in original pixels)."""
        assert self.image is not None and self.image_hash is not None
        if max(self.image.size) <= max_side:
            return self.image
        return _display_copy(self.image_hash, max_side, self.image)

    def display_geometry(self, image: Image.Image) -> Geometry:
        """The pass's geometry with the 'original' size replaced by `image`'s (for drawing on it)."""
        return replace(self.geometry, orig_w=image.width, orig_h=image.height)


def current_view() -> View | None:
    return st.session_state.get("_view")


def require_analysis() -> View | None:
    """The view if it has an analysis; otherwise shows why not (in the page) and returns None."""
    view = current_view()
    if view is None:
        if st.session_state.get("_model_error"):
            st.error(st.session_state["_model_error"])
        else:
            st.info("Pick a model and an image in the sidebar.")
        return None
    if view.error:
        st.error(view.error)
        return None
    if view.analysis is None:
        if view.source == SOURCE_UPLOAD:
            st.info("Upload a photo in the sidebar (JPEG, PNG, WebP, GIF, BMP or TIFF; at most 25 MB).")
        elif view.source == SOURCE_CAMERA:
            st.info("Take a photo with the camera in the sidebar.")
        else:
            st.info("Pick an image in the sidebar.")
        return None
    return view


def keep_valid(key: str, options: Sequence, default) -> None:
    """Before creating a widget: reset its stored value if it is no longer one of `options`."""
    if key in st.session_state and st.session_state[key] not in options:
        st.session_state[key] = default


# Sidebar widgets whose value the server re-sends on every run (see persist_page_widgets).
PINNED_SIDEBAR_KEYS = ("w_model", "w_source", "w_threshold", "w_scene", "w_sample")


def persist_page_widgets() -> None:
    """Keep page widgets' values when their page is not shown (Streamlit drops unrendered widgets).

    The sidebar's session-initialized widgets are pinned the same way: their value is then sent to
    the browser with every run. Without it, a browser that lost a widget's value (seen under load:
    a busy server, several sessions at once) sent back the widget's default instead, the model
    picker's first entry, DETR R50: the session switched model by itself, tried a 159 MB download,
    and lost its image source to the fallback.
    """
    for key in list(st.session_state.keys()):
        if isinstance(key, str) and (key.startswith("p_") or key in PINNED_SIDEBAR_KEYS):
            st.session_state[key] = st.session_state[key]


# ------------------------------------------------------------------------------------------------
# The session's first run: defaults and deep links


def default_threshold(spec: ModelSpec) -> float:
    return float(spec.default_threshold)


def _default_model() -> tuple[str, str | None]:
    """The first official model whose checkpoint is here; else detr_shapes and why. Your own first, if any."""
    if own_models.MODELS_OWN:
        return next(iter(own_models.MODELS_OWN)), None
    for name in OFFICIAL_PREFERENCE:
        if name in MODELS and model_status(MODELS[name]) == "available":
            return name, None
    return SHAPES, (
        "No official DETR checkpoint is on this machine, so the explorer opened on the bundled "
        "detr_shapes model (pick an official model to download its weights)."
    )


def parse_points(text: str | None) -> list[tuple[float, float]] | None:
    """'x,y;x,y' (original pixels) -> [(x, y), ...] (at most 4), or None."""
    if not text:
        return None
    points = []
    for part in text.split(";"):
        try:
            x, y = (float(v) for v in part.split(","))
        except ValueError:
            continue
        if x == x and y == y and abs(x) < 1e6 and abs(y) < 1e6:  # finite, sane
            points.append((x, y))
    return points[:4] or None


def format_points(points: list[tuple[float, float]]) -> str:
    return ";".join(f"{x:g},{y:g}" for x, y in points)


def _init_session(page_slugs: Sequence[str]) -> str | None:
    """On a session's first run, read the URL into the session state. Returns the page it names."""
    ss = st.session_state
    if ss.get("_initialized"):
        return None
    ss["_initialized"] = True
    qp = st.query_params.to_dict()
    model = qp.get("model")
    if model not in MODELS:
        model, notice = _default_model()
        ss["_notice"] = notice
    ss["w_model"] = model
    spec = MODELS[model]
    try:
        threshold = float(qp.get("thr", ""))
        if not 0.0 <= threshold <= 1.0:
            raise ValueError
    except ValueError:
        threshold = default_threshold(spec)
    ss["w_threshold"] = round(threshold, 2)
    source = qp.get("src")
    if source not in SOURCE_LABELS or (source == SOURCE_SCENE and model != SHAPES):
        source = SOURCE_SCENE if model == SHAPES and scenes_available() else SOURCE_SAMPLE
    ss["w_source"] = source
    try:
        ss["w_scene"] = min(max(int(qp.get("scene", "0")), 0), SCENE_COUNT - 1)
    except ValueError:
        ss["w_scene"] = 0
    samples = sample_names()
    if qp.get("sample") in samples:
        ss["w_sample"] = qp["sample"]
    elif samples:
        ss["w_sample"] = "coffee.png" if "coffee.png" in samples else samples[0]
    points = parse_points(qp.get("pts"))
    if points:
        ss["enc_points"] = points
        ss["enc_points_for"] = None  # accept them for the first image this session shows
    try:
        ss["dec_query"] = int(qp["q"]) if "q" in qp else None
        ss["dec_query_for"] = None
    except ValueError:
        ss["dec_query"] = None
    page = qp.get("page")
    return page if page in page_slugs else None


def _on_model_change() -> None:
    """The user picked another model: its default threshold, a fitting image source, no old notices."""
    ss = st.session_state
    name = ss["w_model"]
    ss["w_threshold"] = round(default_threshold(MODELS[name]), 2)
    ss.pop("_fallback", None)
    ss.pop("_notice", None)
    if name == SHAPES and scenes_available():
        ss["w_source"] = SOURCE_SCENE
    elif ss.get("w_source") == SOURCE_SCENE:
        ss["w_source"] = SOURCE_SAMPLE


def _model_label(name: str) -> str:
    spec = MODELS[name]
    if own_models.is_own(name):
        return spec.title  # "NAME (your model: ...)"
    status = model_status(spec)
    if status == "available":
        mark = "available"
    elif status == "downloadable":
        mark = f"downloadable, {spec.checkpoint.size_mb:.0f} MB"
    else:
        mark = "needs a file"
    return f"{spec.title} ({mark})"


# ------------------------------------------------------------------------------------------------
# The sidebar


def _ensure_model(name: str, progress_area) -> tuple[Any, str]:
    """Make the model's checkpoint available (downloading it with a progress bar) and load it.

    Returns (model, weights_id). Raises CheckpointError when it cannot be had.
    """
    spec = MODELS[name]
    if own_models.is_own(name):
        return own_models.own_model(name), f"own:{spec.checkpoint.filename}"
    status = model_status(spec)
    info = spec.checkpoint
    if status != "available":
        if status == "downloadable":
            bar = progress_area.progress(0.0, text=f"Downloading {info.filename} (about {info.size_mb:.0f} MB)...")

            def report(done: int, total: int) -> None:
                if total:
                    bar.progress(
                        min(done / total, 1.0),
                        text=f"Downloading {info.filename}: {done / 1e6:.0f} of {total / 1e6:.0f} MB",
                    )
                else:
                    bar.progress(0.0, text=f"Downloading {info.filename}: {done / 1e6:.0f} MB")

            try:
                weights.resolve_checkpoint(info, progress=report)
            finally:
                bar.empty()
        else:
            weights.resolve_checkpoint(info)  # raises CheckpointError: where it looked, what to do
    with progress_area, st.spinner(f"Loading {spec.title}..."):
        model = _model(name, info.filename)
    return model, info.filename


def _image_input(ss, source: str) -> tuple[bytes | None, str]:
    """The sidebar's image widgets for `source` -> (bytes or None, a label)."""
    if source == SOURCE_SCENE:
        number = st.number_input(
            "Scene number",
            min_value=0,
            max_value=SCENE_COUNT - 1,
            step=1,
            key="w_scene",
            help="Synthetic shape scenes from the held-out seeds: detr_shapes never saw them in training.",
        )
        return scene_png(int(number)), f"synthetic scene {int(number)}"
    if source == SOURCE_SAMPLE:
        names = sample_names()
        keep_valid("w_sample", names, names[0] if names else None)
        name = st.selectbox("Sample photo", names, key="w_sample")
        if name is None:
            return None, ""
        return sample_bytes(name), name
    if source == SOURCE_UPLOAD:
        upload = st.file_uploader(
            "Photo",
            key="w_upload",
            help="JPEG, PNG, WebP, GIF, BMP or TIFF, at most 25 MB. It stays in this session's memory only.",
        )
        if upload is None:
            return None, ""
        return upload.getvalue(), upload.name
    shot = st.camera_input("Take a photo", key="w_camera")
    if shot is None:
        return None, ""
    return shot.getvalue(), "camera photo"


def sidebar(page_slugs: Sequence[str]) -> tuple[View | None, str | None]:
    """Build the shared sidebar and this run's `View` (stored for the pages). Returns (view, page to open)."""
    ss = st.session_state
    ss["_view"] = None  # until this run has built a new one
    own_models.ensure_registered()  # the models configured on the server (once per process)
    deep_link_page = _init_session(page_slugs)
    if "_pending_model" in ss:  # a failed pick of another model falls back here, before the widget exists
        ss["w_model"] = ss.pop("_pending_model")
        _on_model_change_keep_fallback()

    with st.sidebar:
        checkpoint_upload()  # issue 14 (ui/model_upload.py): only with --allow-checkpoint-upload; before the picker
        st.selectbox(
            "Model",
            list(MODELS),
            key="w_model",
            format_func=_model_label,
            on_change=safe_callback(_on_model_change),
            help="The model zoo. Official checkpoints download on first use (torch hub cache).",
        )
        name = ss["w_model"]
        spec = MODELS[name]
        for problem in own_models.ERRORS:
            st.warning(f"Your model was not loaded: {problem}")
        if ss.get("_fallback"):
            failed, message = ss["_fallback"]
            st.error(f"{MODELS[failed].title} is not available here (detr_shapes is shown instead): {message}")
        elif ss.get("_notice") and name == SHAPES:
            st.info(ss["_notice"])
        progress_area = st.container()
        try:
            model, weights_id = _ensure_model(name, progress_area)
        except CheckpointError as e:
            if name != SHAPES:
                log.warning("model %s unavailable: %s", name, e)
                ss["_fallback"] = (name, str(e))
                ss["_pending_model"] = SHAPES
                st.rerun()
            ss["_model_error"] = f"The bundled model detr_shapes cannot be loaded: {e}"
            st.error(ss["_model_error"])
            return None, deep_link_page
        ss.pop("_model_error", None)

        options = [s for s in SOURCE_LABELS if s != SOURCE_SCENE or (name == SHAPES and scenes_available())]
        keep_valid("w_source", options, options[0])
        source = st.radio("Image", options, key="w_source", format_func=SOURCE_LABELS.get, horizontal=True)
        if name == SHAPES and source != SOURCE_SCENE:
            st.caption("detr_shapes only knows synthetic shapes: its detections on photos mean little.")
        image_bytes, label = _image_input(ss, source)
        threshold = st.slider(
            "Detection threshold",
            min_value=0.0,
            max_value=1.0,
            step=0.01,
            key="w_threshold",
            help="A query is a detection when its best class probability is above this.",
        )
        with st.expander("Preprocessing"):
            min_size = st.number_input(
                "Shorter side (px)", min_value=64, max_value=1600, step=32, value=spec.min_size, key=f"w_min_{name}"
            )
            max_size = st.number_input(
                "Longer side at most (px)",
                min_value=64,
                max_value=2666,
                step=32,
                value=spec.max_size,
                key=f"w_max_{name}",
            )

    view = View(
        model_name=name,
        spec=spec,
        weights_id=weights_id,
        threshold=float(threshold),
        min_size=int(min_size),
        max_size=int(max_size),
        source=source,
        image_label=label,
        model=model,
    )
    if image_bytes is not None:
        view.image_bytes = image_bytes
        view.image_hash = hashlib.sha256(image_bytes).hexdigest()
        try:
            view.image = decoded_image(view.image_hash, image_bytes)
            with st.spinner(f"Running {plain(spec.title)} on {plain(label)} (once per image and model)..."):
                view.analysis = cached_analysis(view.key, view.image)
        except DETRError as e:
            view.error = f"{plain(label) if label else 'This image'} cannot be analyzed: {e}"
            view.image = None
    _reset_stale_selections(view)
    ss["_view"] = view
    return view, deep_link_page


def _on_model_change_keep_fallback() -> None:
    ss = st.session_state
    fallback = ss.get("_fallback")
    _on_model_change()
    if fallback:
        ss["_fallback"] = fallback


def _reset_stale_selections(view: View) -> None:
    """Clicked points and the picked query belong to one image and model: drop them when those change."""
    ss = st.session_state
    ident = (view.model_name, view.image_hash)
    if view.analysis is None:
        return
    for what in ("enc_points", "dec_query"):
        owner = ss.get(f"{what}_for", ident)
        if owner is None:  # from a deep link: accept for the first image shown
            ss[f"{what}_for"] = ident
        elif owner != ident:
            ss[what] = None
            ss[f"{what}_for"] = ident
        else:
            ss[f"{what}_for"] = ident


def sync_url(view: View | None, page_slug: str) -> None:
    """Write the current view into the URL, so the link reopens it."""
    ss = st.session_state
    params: dict[str, str] = {"page": page_slug}
    if view is not None:
        params["model"] = view.model_name
        params["src"] = view.source
        if view.source == SOURCE_SCENE:
            params["scene"] = str(int(ss.get("w_scene", 0)))
        elif view.source == SOURCE_SAMPLE and ss.get("w_sample"):
            params["sample"] = str(ss["w_sample"])
        params["thr"] = f"{view.threshold:.2f}"
        if ss.get("enc_points"):
            params["pts"] = format_points(ss["enc_points"])
        if ss.get("dec_query") is not None:
            params["q"] = str(ss["dec_query"])
    if st.query_params.to_dict() != params:
        st.query_params.from_dict(params)


_frame = threading.local()


@contextmanager
def page_frame():
    """app.py runs the navigation's page inside this: the page knows the sidebar and view exist."""
    _frame.active = True
    try:
        yield
    finally:
        _frame.active = False


def page_main(render: Callable[[], None], what: str) -> None:
    """The body of every script in pages/: render the page, inside the frame app.py builds.

    Streamlit 1.67 still treats a folder named pages/ as an old-style multipage app until the first
    run that calls st.navigation (every run, under AppTest), and then runs pages/<name>.py directly
    for a URL naming it, without app.py: no sidebar, no model, no image. Such a direct run executes
    app.py instead, which calls st.navigation (switching that mode off) and runs this page through it.
    """
    if getattr(_frame, "active", False):
        run_safely(render, what)
    else:
        runpy.run_path(str(ROOT / "app.py"), run_name="__main__")


def safe_callback(callback: Callable[[], None]) -> Callable[[], None]:
    """A widget callback that never shows a traceback: an error is logged and shown on the next run."""

    @functools.wraps(callback)
    def wrapper() -> None:
        try:
            callback()
        except Exception:
            log.exception("callback %s failed", callback.__name__)
            st.session_state["_callback_error"] = "That action failed; the details were logged on the server."

    return wrapper


def show_callback_error() -> None:
    message = st.session_state.pop("_callback_error", None)
    if message:
        st.error(message)


def run_safely(body: Callable[[], None], what: str) -> None:
    """Run `body`; a DETRError becomes its message, anything else a friendly error (traceback logged)."""
    try:
        body()
    except DETRError as e:
        st.error(str(e))
    except Exception:
        log.exception("%s failed", what)
        st.error(
            f"Something went wrong while drawing {what}. The details were logged on the server; "
            "try another image or setting, or reload the page."
        )
