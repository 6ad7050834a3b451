"""Model: the selected model's architecture, its parameters per part, the shapes of one pass on the
current image, and DETRdemo (the paper's minimal DETR) built for any number of classes."""

import streamlit as st

from ui import compute, state
from ui.text import plain


def render() -> None:
    st.header("Model")
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


state.page_main(render, "the Model page")
