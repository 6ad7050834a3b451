"""Model: the selected model's architecture, its parameters per part, the shapes of one pass on the
current image, and DETRdemo (the paper's minimal DETR) built for any number of classes."""

import streamlit as st

from ui import caches, compute, frame, precision, state
from ui.text import plain

CHECKPOINT_HELP = """
Official checkpoints download on first use. On a server without internet, copy the file (its name is
in the picker's message and in the README's model table, e.g. `detr-r50-e632da11.pth`, from
`https://dl.fbaipublicfiles.com/detr/`) into a folder and start the server with `DETR_WEIGHTS_DIR`
set to that folder, or put it in the torch hub cache (`$TORCH_HOME/hub/checkpoints`, by default
`~/.cache/torch/hub/checkpoints` of the user running the server). The file is checked against the
hash in its name before it is read; restart is not needed: pick the model again.
"""


COMPARED = "_precision_compared"  # session key: the analysis key whose comparison was asked for


@frame.safe_callback
def _ask_comparison() -> None:
    view = state.current_view()
    if view is not None and view.analysis is not None:
        st.session_state[COMPARED] = view.key


def _precision(view) -> None:
    """Which precision runs, whether a fast one is offered here (and why not), and on demand whether
    the fast one finds the exact pass's detections on the current image."""
    st.subheader("Precision")
    device = precision.device_of(view.model)
    reason = precision.why_absent(device)
    if reason:
        st.markdown(f"The analysis runs in exact float32 on {device.type}. {reason}")
        return
    fast_label = precision.label(precision.FAST, device)
    st.markdown(
        f"This {device.type} runs {fast_label} natively, so the sidebar offers it beside exact float32; now: "
        f"**{precision.label(view.precision, device)}**. Relevance always runs in float32."
    )
    if view.analysis is None:
        return
    if st.session_state.get(COMPARED) != view.key:
        st.button(
            f"Compare {fast_label} with exact float32 on this image", key="model_compare", on_click=_ask_comparison
        )
        return
    with st.spinner("Running the other precision on this image (once)..."):
        result = caches.precision_agreement(view.key, view.threshold, view.image)
    (st.success if result.same else st.warning)(f"At threshold {view.threshold:.2f}, {result.summary()}.")


def render() -> None:
    st.header("Model", help=CHECKPOINT_HELP)
    with st.expander("Where to put a checkpoint file"):
        st.markdown(CHECKPOINT_HELP)
    view = state.current_view()
    if view is None or view.model is None:
        st.info("No model is loaded: pick one in the sidebar.")
        return
    spec = view.spec
    ap = f" · COCO val box AP {spec.box_ap}" if spec.box_ap is not None else ""
    st.markdown(
        f"**{plain(spec.title)}** (`{spec.name}`){ap} · checkpoint `{spec.checkpoint.filename}` · "
        f"{len(spec.class_names)} class ids · preprocessing: shorter side {spec.min_size} px, "
        f"longer at most {spec.max_size} px"
    )
    if spec.notes:
        st.caption(plain(spec.notes))  # your own model's notes name its files

    _precision(view)

    arch = compute.architecture(spec.name)
    st.subheader("Parameters per part")
    st.dataframe(arch["parts"], hide_index=True, width="stretch")

    st.subheader("Architecture")
    with st.expander("print(model)", expanded=False):
        st.code(arch["tree"], language="text")
    st.code(repr(spec.config), language="python", wrap_lines=True)

    st.subheader("One pass on the current image")
    if view.analysis is None:
        st.info(view.error or "Pick an image in the sidebar to see the shapes of one pass.")
    else:
        num_classes = getattr(spec.config, "num_classes", len(spec.class_names))
        st.dataframe(compute.pass_shapes(view.analysis, num_classes), hide_index=True, width="stretch")

    st.subheader("DETRdemo for your own classes")
    st.markdown(
        "The paper's appendix builds a complete DETR in about 50 lines: a ResNet-50, a 1x1 convolution, "
        "`nn.Transformer`, learned row/column positions and queries, and two linear heads. Only the class "
        "head depends on the number of classes (`num_classes + 1` outputs, the last one is 'no object')."
    )
    with st.expander("DETRdemo source", expanded=view.model_name == "detr_demo"):
        st.code(compute.detr_demo_source(), language="python")
    num_classes_asked = st.number_input(
        "num_classes", min_value=1, max_value=10_000, value=91, step=1, key="p_model_classes"
    )
    if st.button("Build a random DETRdemo with this many classes", key="model_build") or (
        st.session_state.get("_demo_built") == num_classes_asked
    ):
        st.session_state["_demo_built"] = num_classes_asked
        with st.spinner("Building a random DETRdemo (a ResNet-50 and a transformer)..."):
            facts = compute.detr_demo_facts(int(num_classes_asked))
        st.code(f"DETRdemo({facts['config']})", language="python", wrap_lines=True)
        st.dataframe(facts["parts"], hide_index=True, width="stretch")


frame.page_main(render, "the Model page")
