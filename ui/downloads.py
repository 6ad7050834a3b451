"""Downloads of what the pages show: pictures as PNG (one picture, or several tiles with their
captions composed into one figure), raw maps as .npy and CSV.

Every builder is cheap to call and meant to be handed to `st.download_button` inside a lambda
(`data=lambda: ...`, `on_click="ignore"`): the bytes are made only when someone downloads.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import streamlit as st
from PIL import Image

from detr_core.io import render


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def grid_png(tiles: Sequence[tuple[Image.Image, str]], per_row: int | Sequence[int]) -> bytes:
    """Tiles (picture, caption) composed into one figure (`render.grid`), as PNG."""
    return png(render.grid(tiles, per_row))


def npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array, dtype=np.float32))
    return buf.getvalue()


def csv(array) -> str:
    """A 2-D map as CSV: one line per feature-cell row, one value per column (full float32 precision)."""
    m = np.asarray(array, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"a map has 2 dimensions, not {m.ndim}")
    return "\n".join(",".join(f"{v:.9g}" for v in row) for row in m) + "\n"


def buttons(items: Sequence[tuple[str, object, str, str]], key: str) -> None:
    """One row of download buttons: (label, a callable giving the data, file name, mime type) each."""
    with st.container(horizontal=True, gap="small"):  # wraps in a narrow column instead of cutting labels
        for label, data, name, mime in items:
            st.download_button(label, data=data, file_name=name, mime=mime, on_click="ignore", key=f"{key}_{name}")
