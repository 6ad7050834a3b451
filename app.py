"""DETR Attention Explorer: the Streamlit entry point (placeholder until the dashboard lands)."""

import streamlit as st

st.set_page_config(page_title="DETR Attention Explorer", layout="wide")
st.title("DETR Attention Explorer")
st.write("The dashboard is being built: see README.md.")
