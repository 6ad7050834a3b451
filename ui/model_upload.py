"""Uploading your own DETR checkpoint in the browser (issue 14), for someone running the app on their
own machine. Off unless the server is started with ``--allow-checkpoint-upload``
(ui/server_options.py); the sidebar calls `checkpoint_upload()` once per run.

- Formats: an official ``main.py`` checkpoint (``.pth``/``.pt``/``.bin``, read with
  ``torch.load(weights_only=True)`` and the allowlist ``detr_core.load_own_model`` uses: no code
  runs) or ``.safetensors``; optionally a class-names file (one name a line, a JSON list or map, or a
  COCO annotation file). Hugging Face folders are not uploadable (configure them with
  ``--checkpoint``).
- Size: at most `CAP_MB` (600 MB) and at most ``server.maxUploadSize``, which Streamlit's server
  enforces for every upload (25 MB in .streamlit/config.toml; start the server with
  ``--server.maxUploadSize 600`` to upload full-size DETRs).
- Disk: the bytes are written only into a ``tempfile.TemporaryDirectory``, which is deleted as soon
  as the model is loaded (or refused).
- Memory: at most `HELD` (2) uploaded models are kept, process-wide, least recently used first out;
  an evicted model leaves the picker, and a session showing it falls back to detr_shapes.
- Names: a model is named after its file (letters, digits, ``._-`` only) and the first digits of the
  SHA-256 of its bytes (and of its class file), so a different file is never served under a cached
  name; the same files uploaded again reuse the loaded model.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import streamlit as st

from detr_core import DETRError
from detr_core.models.fast import optimize_for_inference
from detr_core.models.own import load_own_model
from detr_core.models.zoo import MODELS, SHAPES_MODEL, register

from . import own_models, server_options
from .text import plain

__all__ = ["CAP_MB", "CHECKPOINT_TYPES", "CLASS_TYPES", "HELD", "checkpoint_upload", "held", "upload_cap_mb"]

log = logging.getLogger("detr_explorer")

# The largest checkpoint accepted: an R50 main.py checkpoint is about 160 MB of weights, and with
# AdamW's two moments per weight (its optimizer state) about three times that.
CAP_MB = 600
HELD = 2  # uploaded models kept in memory at once (an R101 one is about 240 MB)
CHECKPOINT_TYPES = ["pth", "pt", "bin", "safetensors"]
CLASS_TYPES = ["txt", "json"]

_lock = threading.Lock()
_HELD: OrderedDict[str, str] = OrderedDict()  # content digest -> registered model name, oldest first
_EVER_HELD: set[str] = set()  # every name an upload was registered under (to tell an eviction from a bad link)


def held() -> list[str]:
    """The names of the uploaded models in memory, least recently used first."""
    with _lock:
        return list(_HELD.values())


def upload_cap_mb() -> int:
    """What an upload may weigh here: `CAP_MB`, or less where server.maxUploadSize is lower."""
    from streamlit import config

    return min(CAP_MB, int(config.get_option("server.maxUploadSize")))


def _safe_stem(file_name: str) -> str:
    stem = Path(file_name.replace("\\", "/")).name.rsplit(".", 1)[0]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._-")[:40] or "upload"


def _suffix(file_name: str) -> str:
    suffix = Path(file_name).suffix.lower()
    return suffix if suffix.lstrip(".") in CHECKPOINT_TYPES else ".pth"


def _load(data: bytes, file_name: str, classes: bytes | None, classes_name: str | None) -> str:
    """Load the uploaded files (through a temporary folder) and register the model. Returns its name."""
    digest = hashlib.sha256(data)
    digest.update(b"\0classes\0" + (classes or b""))
    key = digest.hexdigest()
    with _lock:
        if key in _HELD:
            _HELD.move_to_end(key)
            return _HELD[key]
    stem = _safe_stem(file_name)
    name = f"{stem}-{key[:8]}"
    with tempfile.TemporaryDirectory(prefix="detr-upload-") as folder:
        path = Path(folder) / f"{stem}{_suffix(file_name)}"  # messages name it as the user did (made safe)
        path.write_bytes(data)
        classes_path = None
        if classes is not None:
            is_json = (classes_name or "").lower().endswith(".json")
            classes_path = Path(folder) / f"{_safe_stem(classes_name or 'classes')}{'.json' if is_json else '.txt'}"
            classes_path.write_bytes(classes)
        own = load_own_model(path, classes_path, name=name)
    model = optimize_for_inference(own.model) if own.spec.foldable else own.model
    with _lock:
        if key in _HELD:  # another session loaded the same files meanwhile
            return _HELD[key]
        if name in MODELS:
            raise DETRError(f"a model named {name} is already listed")
        register(own.spec)  # checked against the model contract
        own_models.MODELS_OWN[name] = model
        _HELD[key] = name
        _EVER_HELD.add(name)
        while len(_HELD) > HELD:
            _, old = _HELD.popitem(last=False)
            MODELS.pop(old, None)
            own_models.MODELS_OWN.pop(old, None)
            log.info("uploaded model %s evicted (at most %d held)", old, HELD)
    log.info("uploaded model %s loaded (%.1f MB)", name, len(data) / 2**20)
    return name


def forget_evicted() -> None:
    """A session whose model was an upload evicted meanwhile goes back to detr_shapes and is told why.
    Call it at the start of the sidebar, before the session's model is checked."""
    if not server_options.options().allow_checkpoint_upload:
        return
    ss = st.session_state
    if ss.get("w_model") is not None and ss["w_model"] not in MODELS and ss["w_model"] in _EVER_HELD:
        gone = (f"{plain(ss['w_model'])} was removed from memory (at most {HELD} uploaded models are kept); "
                "upload it again to see it.")  # fmt: skip
        kind, text = ss.get("_upload_notice") or ("info", "")
        ss["_upload_notice"] = (kind, f"{text} {gone}".strip())
        ss["w_model"] = SHAPES_MODEL


def checkpoint_upload() -> None:
    """The sidebar's checkpoint upload (when the server allows it); call it before the model picker."""
    if not server_options.options().allow_checkpoint_upload:
        return
    ss = st.session_state
    cap = upload_cap_mb()
    generation = ss.setdefault("_upload_generation", 0)
    notice = ss.get("_upload_notice")
    with st.expander("Upload your own DETR checkpoint", expanded=notice is not None):
        with st.form(f"upload_form_{generation}", clear_on_submit=False, border=False):
            checkpoint = st.file_uploader(
                "Checkpoint",
                type=CHECKPOINT_TYPES,
                key=f"w_ckpt_upload_{generation}",
                max_upload_size=cap,
                help=f"An official main.py checkpoint (.pth) or .safetensors, at most {cap} MB. Read without "
                "running code; written only to a temporary folder, deleted after loading.",
            )
            classes = st.file_uploader(
                "Class names (optional)",
                type=CLASS_TYPES,
                key=f"w_classes_upload_{generation}",
                max_upload_size=16,
                help="One name a line, a JSON list or id->name map, or a COCO annotation file.",
            )
            submitted = st.form_submit_button("Load checkpoint")
        st.caption(f"At most {cap} MB; the last {HELD} uploaded models are kept in memory.")
        if submitted:
            try:
                ss["_upload_notice"] = _process(checkpoint, classes, cap)
            finally:
                _forget(checkpoint, classes)
            ss["_upload_generation"] = generation + 1  # new, empty uploaders for the next files
            st.rerun()
        if notice is not None:
            kind, text = ss.pop("_upload_notice")
            {"success": st.success, "error": st.error}.get(kind, st.info)(text)


def _forget(*uploads) -> None:
    """Drop the uploaded bytes from Streamlit's upload manager now (it would keep them until the
    session ends: a new, empty uploader does not release them)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    if ctx is None:
        return
    for upload in uploads:
        if upload is not None:
            ctx.uploaded_file_mgr.remove_file(session_id=ctx.session_id, file_id=upload.file_id)


def _process(checkpoint, classes, cap: int) -> tuple[str, str]:
    """(kind, message) for the files submitted."""
    if checkpoint is None:
        return "error", "Choose a checkpoint file first."
    shown = plain(checkpoint.name)
    if checkpoint.size > cap * 2**20:
        return "error", f"{shown} is {checkpoint.size / 2**20:.0f} MB; at most {cap} MB are accepted here."
    if Path(checkpoint.name).suffix.lower().lstrip(".") not in CHECKPOINT_TYPES:
        return "error", f"{shown}: only .pth, .pt, .bin (official main.py format) and .safetensors files are read."
    try:
        name = _load(
            checkpoint.getvalue(),
            checkpoint.name,
            None if classes is None else classes.getvalue(),
            None if classes is None else classes.name,
        )
    except (DETRError, ValueError) as e:
        log.warning("uploaded checkpoint refused: %s", e)
        return "error", f"{shown} was not loaded: {plain(e)}"
    except Exception:
        log.exception("uploaded checkpoint failed")
        return "error", f"{shown} was not loaded; the details were logged on the server."
    spec = MODELS.get(name)
    return "success", f"Loaded as {plain(spec.title if spec else name)}: pick it in the Model list."
