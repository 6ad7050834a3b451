"""UI helpers of the dashboard (Streamlit only; every number comes from detr_core).

- `ui.view`: the view (every control that changes what is shown) as typed URL fields, read and written in one place.
- `ui.caches`: cached models, analyses, decoded images, relevance, image bytes; the model-run counters.
- `ui.sidebar`: the sidebar every page shares (model, image source, threshold, preprocessing).
- `ui.state`: this run's model, image and analysis (`View`) and the page guards that read it.
- `ui.frame`: the frame around pages: safe runs and callbacks, messages about one attempt.
- `ui.compute`: cached, display-ready results of detr_core functions (maps as numpy arrays, statistics).
- `ui.figures`: Plotly figure builders (clickable photos, boxes, charts).
"""
