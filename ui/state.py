"""This run's model, image and analysis (`View`, built by ui/sidebar.py) and the guards pages use to read it.

`current_view()` is what the sidebar built for this run; `require_analysis()` returns it when it has
an analysis, or shows in the page why not. `keep_valid` and `persist_page_widgets` keep widget values
meaningful across image changes and across pages that are not shown; `kept` keeps one built object
(a page's figure) per session for as long as what it shows is the same.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import streamlit as st
from PIL import Image

from detr_core.analysis.capture import Analysis
from detr_core.io.image import Geometry
from detr_core.io.postprocess import Detection
from detr_core.models.zoo import ModelSpec

from .caches import DISPLAY_MAX_SIDE, AnalysisKey, display_copy

T = TypeVar("T")

SOURCE_SCENE, SOURCE_SAMPLE, SOURCE_UPLOAD, SOURCE_CAMERA, SOURCE_URL = "scene", "sample", "upload", "camera", "url"
SOURCE_LABELS = {
    SOURCE_SCENE: "Synthetic scene",
    SOURCE_SAMPLE: "Sample photo",
    SOURCE_URL: "Image URL",
    SOURCE_UPLOAD: "Upload",
    SOURCE_CAMERA: "Camera",
}


@dataclass
class View:
    """The current model, image and analysis of this session's run (built by `ui.sidebar.sidebar`)."""

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
    precision: str = "exact"  # ui/precision.EXACT or FAST

    @property
    def key(self) -> AnalysisKey:
        assert self.image_hash is not None
        return AnalysisKey(
            self.model_name, self.weights_id, self.image_hash, self.min_size, self.max_size, self.precision
        )

    @property
    def geometry(self) -> Geometry:
        assert self.analysis is not None
        return self.analysis.geometry

    def detections(self) -> list[Detection]:
        """The detections at `self.threshold`: the threshold the sidebar shows in this same run."""
        assert self.analysis is not None
        return self.analysis.detections(self.threshold)

    def display_image(self, max_side: int = DISPLAY_MAX_SIDE) -> Image.Image:
        """The photo, at most `max_side` px, for showing (coordinates stay in original pixels)."""
        assert self.image is not None and self.image_hash is not None
        if max(self.image.size) <= max_side:
            return self.image
        return display_copy(self.image_hash, max_side, self.image)

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
        elif view.source == SOURCE_URL:
            st.info("Paste the address of an image (http or https) in the sidebar.")
        else:
            st.info("Pick an image in the sidebar.")
        return None
    return view


def kept(key: str, tag: Hashable, make: Callable[[], T]) -> T:
    """`make()`, kept in this session's state under `key` and returned again while `tag` (what it shows)
    is the same. A page keeps its Plotly figure so: building one, which Plotly validates property by
    property, took 18-170 ms of a run, and re-sending the same figure lets the browser keep its chart."""
    found = st.session_state.get(key)
    if found is None or found[0] != tag:
        found = st.session_state[key] = (tag, make())
    return found[1]


def keep_valid(key: str, options: Sequence, default) -> None:
    """Before creating a widget: reset its stored value if it is no longer one of `options`."""
    if key in st.session_state and st.session_state[key] not in options:
        st.session_state[key] = default


# Sidebar widgets whose value the server re-sends on every run (see persist_page_widgets).
PINNED_SIDEBAR_KEYS = ("w_model", "w_source", "w_threshold", "w_scene", "w_sample", "w_url", "w_min", "w_max")


def persist_page_widgets() -> None:
    """Keep page widgets' values when their page is not shown (Streamlit drops unrendered widgets).

    The sidebar's session-initialized widgets are pinned the same way: their value is then sent to
    the browser with every run. Without it, a browser that lost a widget's value (seen under load:
    a busy server, several sessions at once) sent back the widget's default instead, the model
    picker's first entry, DETR R50: the session switched model by itself, tried a 159 MB download,
    and lost its image source to the fallback.

    A stepped control (a slider, a number input: `STEPPED_KEYS`) the visitor changed since the last
    run is not pinned in this run: its value comes from the browser already, and re-sending it
    resets the control in use. A slider moved by a burst of key presses commits once while the run
    it started is drawing; that run's re-sent value put the slider back, and the rest of the burst
    was lost (tests/test_browser.py, the threshold burst). Every other widget is pinned in every run,
    the one its visitor just changed included: re-sending it corrects the browser when a message of
    a run that was still drawing arrived after the visitor's pick (seen: a picked "Upload" source
    put back to the scene by such a late message, its file chooser gone).
    """
    ss = st.session_state
    last = ss.get(_PINNED_VALUES, {})
    pinned = {}
    for key in list(ss.keys()):
        if isinstance(key, str) and (key.startswith("p_") or key in PINNED_SIDEBAR_KEYS):
            value = ss[key]
            pinned[key] = value
            if key in STEPPED_KEYS and key in last and not _same(last[key], value):
                continue  # stepped in the browser since the last run
            ss[key] = value
    ss[_PINNED_VALUES] = pinned


# Sliders and number inputs (sidebar and pages): a burst of steps commits while runs are drawing.
STEPPED_KEYS = frozenset({"w_threshold", "w_min", "w_max", "w_scene", "p_model_classes"})
_PINNED_VALUES = "_pinned_values"  # session key: {widget key: value} as the last run pinned them


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # e.g. arrays, whose == is elementwise
        return a is b
