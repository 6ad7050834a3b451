"""UI helpers of the dashboard (Streamlit only; every number comes from detr_core).

- `ui.state`: cached models and analyses, the shared sidebar, the URL (query params), page guards.
- `ui.compute`: cached, display-ready results of detr_core functions (maps as numpy arrays, statistics).
- `ui.figures`: Plotly figure builders (clickable photos, boxes, charts).
"""
