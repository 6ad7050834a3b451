"""Streamlit's own floor for the dashboard's interactions: `benchmarks/interaction.py --floor` times this
app with the same clicks as the Encoder attention and Decoder attention pages.

It has what those pages' fragments have that Streamlit itself must handle (the same widgets by the same
labels, the same kept, finished, clickable photo figure of an 800x1066 input with its 25 x 34 feature
cells, the same collector freeze) and a caption naming what was picked, and does nothing else: no map,
no image, no sidebar, no model. What an interaction costs here is what Streamlit and the browser spend
on a fragment's rerun on this machine, which no change to the dashboard's own code can take away.

    streamlit run benchmarks/floor_app.py
"""

from pathlib import Path

import streamlit as st
from PIL import Image

from detr_core.io.image import Geometry
from ui import collector, figures

# The 800x1066 input of benchmarks/interaction.py's R50 rows (a 1066x800 photo; stride 32).
GEOMETRY = Geometry(orig_h=800, orig_w=1066, input_h=800, input_w=1066, feat_h=25, feat_w=34, stride=32)
DIRECTIONS = ["where this location looks", "what looks at this location"]
QUERIES = [7, 19, 42, 63, 88]
HEIGHT = 490  # the encoder page's photo at 1440 px wide

st.set_page_config(page_title="Streamlit floor", layout="wide")
collector.after_imports()


def photo_figure():
    ss = st.session_state
    if "floor_figure" not in ss:
        photo = Image.open(Path(__file__).resolve().parent.parent / "assets" / "samples" / "astronaut.png")
        photo = photo.convert("RGB").resize((GEOMETRY.orig_w, GEOMETRY.orig_h))
        photo.thumbnail((900, 900))
        ss["floor_figure"] = figures.finished(figures.cells_figure(photo, GEOMETRY, HEIGHT, figures.rgb(0)))
    return ss["floor_figure"]


@st.fragment
def explore() -> None:
    direction = st.radio("Direction", DIRECTIONS, horizontal=True)
    layer = st.segmented_control("Encoder layer", ["1", "2", "3", "4", "5", "6", "mean"], default="6", required=True)
    head = st.segmented_control("Head", ["mean"] + [str(h) for h in range(1, 9)], default="mean", required=True)
    event = st.plotly_chart(
        photo_figure(), key="floor_plot", on_select="rerun", selection_mode="points", theme=None,
        config={"displayModeBar": False},
    )  # fmt: skip
    picked = [p for p in event["selection"]["points"] if p.get("customdata") is not None]
    row, col = (int(v) for v in picked[0]["customdata"][:2]) if picked else (12, 17)
    st.markdown(f"Selected cell: **({row}, {col})** · {direction} · layer {layer} · head {head}")
    detection = st.selectbox("Detection", [f"query {q}: class {q % 7}" for q in QUERIES])
    st.markdown(f"Selected detection: {detection.split(':')[0]} (score 0.50)")


explore()
