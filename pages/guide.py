"""Guide: what encoder self-attention and decoder cross-attention are and how they differ, each claim
shown with numbers measured on the current image."""

import streamlit as st

from ui import caches, compute, figures, frame, state


def render() -> None:
    st.header("Guide: two kinds of attention")
    st.markdown(
        """
DETR turns an image into a set of boxes with a transformer. Its attention comes in two kinds:

- **Encoder self-attention** (image to image). The backbone's feature map is cut into cells, one
  token each; in every encoder layer each token attends to *every* token of the image. Its scope
  is **global context**: a location can gather evidence from anywhere, which helps separate
  instances. Direction: a row of the map says *where this location looks*; a column says *what
  looks at this location* (both on the Encoder attention page).
- **Decoder cross-attention** (queries to image). A fixed set of learned *object queries* attend
  to the encoded image; each query that ends up as a detection reads a few **object-specific
  regions**, typically the extremities of its object (its edges, a head, feet). Direction: from one
  query to the image; the image never looks back at the queries.

The numbers below are measured on the current image (entropy: 1 = spread evenly over all cells,
0 = a single cell).
"""
    )
    view = state.require_analysis()
    if view is None:
        return
    analysis = view.analysis
    refusal = caches.work_refusal("entropy", analysis, view.min_size, view.max_size)
    if refusal:
        st.info(refusal)
        return
    with st.spinner("Measuring attention statistics (once per image, model and threshold)..."):
        image_stats = compute.guide_stats(view.key, view.threshold, analysis)
    dets = image_stats.detections
    enc_last = image_stats.encoder_entropy[-1]
    st.subheader("Scope: global context vs object-specific regions")
    c1, c2, c3 = st.columns(3)
    c1.metric("encoder entropy (last layer, mean over locations)", f"{enc_last:.3f}")
    if dets:
        dec_mean = sum(d.entropy for d in dets) / len(dets)
        c2.metric("decoder entropy (mean over detections)", f"{dec_mean:.3f}")
        c3.metric("detections measured", str(len(dets)))
        if abs(enc_last - dec_mean) < 0.01:
            verdict = "about as broad as"
        else:
            verdict = "broader than" if enc_last > dec_mean else "narrower than"
        st.markdown(
            f"On this image the encoder's maps are **{verdict}** the detections' cross-attention maps: "
            f"normalized entropy {enc_last:.3f} vs {dec_mean:.3f}."
        )
    else:
        c2.metric("decoder entropy", "n/a")
        st.info(f"No detection above the threshold {view.threshold:.2f}: the decoder statistics need one.")

    st.subheader("Encoder: how far each location looks, layer by layer")
    rows = [
        {"layer": i + 1, "mean attention distance (px)": round(dist, 1),
         "share of the image diagonal": f"{100 * dist / image_stats.diagonal:.1f}%", "entropy": round(ent, 3)}
        for i, (dist, ent) in enumerate(zip(image_stats.encoder_distance, image_stats.encoder_entropy, strict=True))
    ]  # fmt: skip
    col1, col2 = st.columns(2)
    col1.plotly_chart(
        figures.layers_figure(image_stats.encoder_distance, "mean attention distance", "original px"),
        key="plot_guide_distance",
    )
    col2.plotly_chart(
        figures.layers_figure(
            image_stats.encoder_entropy, "entropy of where each location looks", "normalized entropy"
        ),
        key="plot_guide_entropy",
    )
    st.dataframe(rows, hide_index=True, width="stretch")
    st.caption(
        f"Mean attention distance: for every location, the attention-weighted distance (original pixels) to the "
        f"locations it looks at, averaged over all {analysis.geometry.tokens} locations. The image diagonal is "
        f"{image_stats.diagonal:.0f} px; for scale, two random points of a square image are on average about "
        "0.37 of its diagonal apart (what a map spread evenly would give)."
    )

    if dets:
        st.subheader("Decoder: attention inside each detection's own box, vs chance")
        share = sum(d.share_in_box for d in dets) / len(dets)
        chance = sum(d.chance for d in dets) / len(dets)
        st.markdown(
            f"On average **{100 * share:.1f}%** of a detection's cross-attention (last decoder layer, mean over "
            f"heads) falls inside its own box, where a uniform map would put **{100 * chance:.1f}%** "
            f"(the box's share of the image)."
        )
        st.plotly_chart(figures.share_figure(dets), key="plot_guide_share")
        st.dataframe(
            [
                {
                    "query": d.query,
                    "class": d.class_name,
                    "score": round(d.score, 3),
                    "inside box": f"{100 * d.share_in_box:.1f}%",
                    "chance": f"{100 * d.chance:.1f}%",
                    "x chance": round(d.ratio, 2),
                    "entropy": round(d.entropy, 3),
                }
                for d in dets
            ],
            hide_index=True,
            width="stretch",
        )


frame.page_main(render, "the Guide page")
