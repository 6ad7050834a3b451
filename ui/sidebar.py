"""The sidebar every page shares: the model picker, the image source, the threshold, preprocessing.

It declares the shared URL fields (ui/view.py) and builds this run's `View` (ui/state.py).

Picking a model that cannot be had (offline, no file, a damaged file) changes nothing else: the
picker goes back to the model the session had (detr_shapes for a fresh link), and the image (an
upload included), threshold, page, points and query stay. A model's defaults (threshold,
preprocessing sizes) are applied only once it has loaded.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any
from urllib.parse import urlsplit

import streamlit as st

from detr_core import MODELS, CheckpointError, DETRError
from detr_core.io import fetch
from detr_core.models import weights
from detr_core.models.zoo import ModelSpec, model_status

from . import caches, collector, frame, model_upload, own_models, precision, server_options, view
from .caches import SCENE_COUNT, SHAPES
from .state import (
    SOURCE_LABELS,
    SOURCE_SAMPLE,
    SOURCE_SCENE,
    SOURCE_UPLOAD,
    SOURCE_URL,
    View,
    current_view,
    keep_valid,
)
from .text import plain

log = logging.getLogger("detr_explorer")

DEFAULT_SAMPLE = "coffee.png"
OFFICIAL_PREFERENCE = ("detr_resnet50", "detr_resnet50_dc5", "detr_resnet101", "detr_resnet101_dc5", "detr_demo")


def _model_name(text: str) -> str:
    if text not in MODELS:
        raise ValueError(text)
    return text


def _sample_name(text: str) -> str:
    if text not in caches.sample_names():
        raise ValueError(text)
    return text


def _image_url(text: str) -> str:
    fetch.check_url(text)  # http(s) with a host, no credentials (the address is checked when fetched)
    return text


# The shared URL fields (pages declare their own).
MODEL = view.field("model", key="w_model", parse=_model_name)
SOURCE = view.field("src", key="w_source", parse=view.choice(list(SOURCE_LABELS)))
SCENE = view.field("scene", key="w_scene", parse=view.bounded_int(0, SCENE_COUNT - 1))
SAMPLE = view.field("sample", key="w_sample", parse=_sample_name)
IMAGE_URL = view.field("url", key="w_url", parse=_image_url)
THRESHOLD = view.field("thr", key="w_threshold", parse=view.bounded_float(0.0, 1.0), fmt=lambda v: f"{v:.2f}")
MIN_SIZE = view.field("min", key="w_min", parse=view.bounded_int(64, 1600))
MAX_SIZE = view.field("max", key="w_max", parse=view.bounded_int(64, 2666))
PRECISION = view.field("prec", key="w_precision", parse=view.choice([precision.EXACT, precision.FAST]))
_SOURCE_FIELDS = {SOURCE_SCENE: SCENE.name, SOURCE_SAMPLE: SAMPLE.name, SOURCE_URL: IMAGE_URL.name}


def default_threshold(spec: ModelSpec) -> float:
    return round(float(spec.default_threshold), 2)


def _default_model() -> tuple[str, str | None]:
    """The first official model whose checkpoint is here; else detr_shapes and why. Your own first, if any."""
    if own_models.MODELS_OWN:
        return next(iter(own_models.MODELS_OWN)), None
    for name in OFFICIAL_PREFERENCE:
        if name in MODELS and model_status(MODELS[name]) == "available":
            return name, None
    if server_options.options().no_downloads:
        then = "this server does not download checkpoints: its operator can add them"
    else:
        then = "pick an official model to download its weights"
    return SHAPES, (
        "No official DETR checkpoint is on this machine, so the explorer opened on the bundled "
        f"detr_shapes model ({then})."
    )


def _on_model_pick() -> None:
    """The visitor picked another model: its defaults are applied once it has loaded (see sidebar)."""
    st.session_state["_model_switched"] = True
    st.session_state.pop("_notice", None)


def _apply_model_defaults(name: str) -> None:
    """A newly loaded model: its threshold and preprocessing sizes, and an image source it can use."""
    ss = st.session_state
    spec = MODELS[name]
    ss["w_threshold"] = default_threshold(spec)
    ss["w_min"], ss["w_max"] = spec.min_size, spec.max_size
    if name == SHAPES and caches.scenes_available() and ss.get("w_source") == SOURCE_SAMPLE:
        ss["w_source"] = SOURCE_SCENE
    elif name != SHAPES and ss.get("w_source") == SOURCE_SCENE:
        ss["w_source"] = SOURCE_SAMPLE


def model_label(name: str) -> str:
    """The picker's entry: the model and whether it can be used here, as far as is known before a pick."""
    spec = MODELS[name]
    if own_models.is_own(name):
        return spec.title  # "NAME (your model: ...)"
    status = model_status(spec)
    if status == "available":
        mark = "available"
    elif status == "downloadable":
        reachable = caches.checkpoint_host(spec.checkpoint.url)
        if reachable:
            mark = f"downloadable, {spec.checkpoint.size_mb:.0f} MB"
        elif reachable is None:
            mark = f"needs a {spec.checkpoint.size_mb:.0f} MB download, checking the host"
        else:
            mark = "needs download, host unreachable"
    else:
        mark = "needs a file"
    return f"{spec.title} ({mark})"


def start_host_checks() -> None:
    """Ask the checkpoint hosts once per server process, in the background, before anyone picks."""
    if server_options.options().no_downloads:  # the operator turned downloads off: ask no host either
        return
    for spec in MODELS.values():
        if spec.checkpoint.url:
            caches.checkpoint_host(spec.checkpoint.url)


def _unavailable_text(spec: ModelSpec, shown: ModelSpec, status: str) -> str:
    """At most three lines, no path: what failed, what is shown instead, where to read more."""
    name = spec.checkpoint.filename
    if status == "downloadable":
        why = f"its checkpoint {name} could not be downloaded on this server"
    elif status == "missing":
        why = f"its checkpoint file {name} is not on this server"
    else:
        why = f"its checkpoint file {name} could not be read"
    return (
        f"{spec.title} is not available: {why}. Still showing {shown.title}.\n"
        "Where to put a checkpoint file: see the help on the Model page."
    )


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
            weights.resolve_checkpoint(info)  # raises CheckpointError
    with progress_area, st.spinner(f"Loading {spec.title}..."):
        model = caches.get_model(name, info.filename)
    return model, info.filename


def _url_label(url: str) -> str:
    parts = urlsplit(url)
    tail = parts.path.rstrip("/").rsplit("/", 1)[-1]
    return f"{parts.hostname}/{tail}"[:80] if tail else str(parts.hostname)[:80]


def _image_input(source: str) -> tuple[bytes | None, str]:
    """The sidebar's image widgets for `source` -> (bytes or None, a label). Raises DETRError."""
    if source == SOURCE_SCENE:
        number = st.number_input(
            "Scene number",
            min_value=0,
            max_value=SCENE_COUNT - 1,
            step=1,
            key="w_scene",
            help="Synthetic shape scenes from the held-out seeds: detr_shapes never saw them in training.",
        )
        return caches.scene_png(int(number)), f"synthetic scene {int(number)}"
    if source == SOURCE_SAMPLE:
        names = caches.sample_names()
        default = DEFAULT_SAMPLE if DEFAULT_SAMPLE in names else (names[0] if names else None)
        keep_valid("w_sample", names, default)
        if "w_sample" not in st.session_state:
            st.session_state["w_sample"] = default
        name = st.selectbox("Sample photo", names, key="w_sample")
        if name is None:
            return None, ""
        return caches.sample_bytes(name), name
    if source == SOURCE_URL:
        url = st.text_input(
            "Image URL",
            key="w_url",
            placeholder="https://...",
            help="An http or https address of a JPEG, PNG, WebP, GIF, BMP or TIFF image of at most 25 MB. "
            "The server fetches it (public addresses only) and keeps it for ten minutes.",
        ).strip()
        if not url:
            return None, ""
        label = _url_label(url) if url.startswith(("http://", "https://")) else "the URL"
        try:
            return caches.url_bytes(url), label
        except DETRError as e:
            raise DETRError(f"{label}: {e}") from None
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


def sidebar() -> View | None:
    """Build the shared sidebar and this run's `View` (stored for the pages, `state.current_view()`)."""
    ss = st.session_state
    ss["_view"] = None  # until this run has built a new one
    own_models.ensure_registered()  # the models configured on the server (once per process)
    view.adopt_all()  # a link's values, the session's first run
    if "_pending_model" in ss:  # a failed pick goes back here, before the widget exists
        ss["w_model"] = ss.pop("_pending_model")
    model_upload.forget_evicted()  # the session's uploaded model was evicted: detr_shapes, and why
    if ss.get("w_model") not in MODELS:
        ss["w_model"], ss["_notice"] = _default_model()

    with st.sidebar:
        model_upload.checkpoint_upload()  # only with --allow-checkpoint-upload; before the picker
        st.selectbox(
            "Model",
            list(MODELS),
            key="w_model",
            format_func=model_label,
            on_change=frame.safe_callback(_on_model_pick),
            help="The model zoo. Official checkpoints download on first use; the Model page says where "
            "checkpoint files go on a server without internet.",
        )
        name = ss["w_model"]
        spec = MODELS[name]
        for problem in own_models.ERRORS:
            st.warning(f"Your model was not loaded: {frame.visitor_text(problem)}")
        if ss.get("_notice") and name == SHAPES:
            st.info(ss["_notice"])
        progress_area = st.container()
        try:
            model, weights_id = _ensure_model(name, progress_area)
        except CheckpointError as e:
            log.warning("model %s unavailable: %s", name, e)
            back = ss.get("_good_model")
            if back not in MODELS or back == name:
                back = SHAPES
            if name != SHAPES:
                frame.notify(_unavailable_text(spec, MODELS[back], model_status(spec)))
                ss["_pending_model"] = back
                ss.pop("_model_switched", None)
                st.rerun()
            ss["_model_error"] = "The bundled model detr_shapes cannot be loaded (the details are in the server log)."
            st.error(ss["_model_error"])
            return None
        ss.pop("_model_error", None)
        ss["_good_model"] = name
        if ss.pop("_model_switched", False):
            _apply_model_defaults(name)
        ss.setdefault("w_threshold", default_threshold(spec))
        ss.setdefault("w_min", spec.min_size)
        ss.setdefault("w_max", spec.max_size)

        options = [s for s in SOURCE_LABELS if s != SOURCE_SCENE or (name == SHAPES and caches.scenes_available())]
        if "w_source" not in ss:
            ss["w_source"] = SOURCE_SCENE if SOURCE_SCENE in options else SOURCE_SAMPLE
        keep_valid("w_source", options, SOURCE_SAMPLE)
        source = st.radio("Image", options, key="w_source", format_func=SOURCE_LABELS.get, horizontal=True)
        if name == SHAPES and source != SOURCE_SCENE:
            st.caption("detr_shapes only knows synthetic shapes: its detections on photos mean little.")
        error = None
        try:
            image_bytes, label = _image_input(source)
        except DETRError as e:
            image_bytes, label, error = None, "", frame.visitor_text(f"This image cannot be fetched: {e}")
        threshold = st.slider(
            "Detection threshold",
            min_value=0.0,
            max_value=1.0,
            step=0.01,
            key="w_threshold",
            help="A query is a detection when its best class probability is above this.",
        )
        device = precision.device_of(model)
        precisions = precision.options(device)  # [exact], or [exact, fast] where the device has it natively
        keep_valid("w_precision", precisions, precision.EXACT)
        chosen = precision.EXACT
        if len(precisions) > 1:
            chosen = st.radio(
                "Precision",
                precisions,
                key="w_precision",
                format_func=lambda option: precision.label(option, device),
                horizontal=True,
                help="Exact float32, or this device's native reduced precision (faster; the Model page "
                "compares its detections with exact ones on the current image).",
            )
        with st.expander("Preprocessing"):
            min_size = st.number_input("Shorter side (px)", min_value=64, max_value=1600, step=32, key="w_min")
            max_size = st.number_input("Longer side at most (px)", min_value=64, max_value=2666, step=32, key="w_max")

    run = View(
        model_name=name,
        spec=spec,
        weights_id=weights_id,
        threshold=float(threshold),
        min_size=int(min_size),
        max_size=int(max_size),
        source=source,
        image_label=label,
        model=model,
        error=error,
        precision=chosen,
    )
    if image_bytes is not None:
        run.image_bytes = image_bytes
        run.image_hash = hashlib.sha256(image_bytes).hexdigest()
        try:
            run.image = caches.decoded_image(run.image_hash, image_bytes)
            with st.spinner(f"Running {plain(spec.title)} on {plain(label)} (once per image and model)..."):
                run.analysis = caches.cached_analysis(run.key, run.image)
        except DETRError as e:
            run.error = frame.visitor_text(f"{plain(label) if label else 'This image'} cannot be analyzed: {e}")
            run.image = None
    if run.analysis is not None:
        view.bind_to_image((run.model_name, run.image_hash))
    ss["_view"] = run
    return run


def _inactive(f: view.Field) -> bool:
    """Fields of the image sources not in use (a scene number means nothing for an upload)."""
    source = st.session_state.get("w_source")
    return f.name in _SOURCE_FIELDS.values() and _SOURCE_FIELDS.get(source) != f.name


def fragment_done(page_slug: str) -> None:
    """End of a page fragment (`st.fragment`). In its own rerun (an input inside it: app.py does not run)
    write the view into the URL as app.py does after a whole run, and when a message about an attempt is
    new or belongs to the view before this input, rerun the whole app: app.py draws and drops them."""
    if frame.in_page_frame():
        return  # a whole run: app.py syncs the URL and draws the messages after the page
    collector.note_fragment_run()
    params = sync_url(page_slug)
    run = current_view()
    if frame.notes_outdated(frame.notes_view(params, run.image_hash if run else None)):
        st.rerun()


def sync_url(page_slug: str) -> dict[str, str]:
    """Write the current view into the URL, so the link reopens it; returns what the URL says."""
    return view.sync_url(view.current(page_slug, skip=_inactive))
