"""Models the user brings, configured on the server side and listed in the model picker as theirs.

    streamlit run app.py -- --checkpoint PATH [--classes FILE] [--name NAME] [--dilation|--no-dilation]
                            [--nheads N] [--checkpoint PATH2 ...]

Each ``--checkpoint`` starts a model; the options after it, up to the next ``--checkpoint``, are
its own. The same list may be given as JSON in the environment variable ``DETR_OWN_MODELS``
(``[{"checkpoint": PATH, "classes": FILE, "name": NAME}, ...]``). They are loaded once per server
process (`ensure_registered`), added to the zoo's registry under their name (never replacing a zoo
model), and served with batch norm folded like the zoo's. A checkpoint that cannot be loaded is
left out, and why is shown in the sidebar (`ERRORS`).

Uploading a checkpoint in the browser is off unless the server is started with
``--allow-checkpoint-upload`` (ui/model_upload.py); server options: ui/server_options.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from dataclasses import replace
from typing import Any

from detr_core import DETRError
from detr_core.models.fast import optimize_for_inference
from detr_core.models.own import load_own_model
from detr_core.models.zoo import MODELS, register

from . import server_options

__all__ = ["ENV", "ERRORS", "MODELS_OWN", "ensure_registered", "is_own", "own_model", "parse_args"]

ENV = "DETR_OWN_MODELS"
MODELS_OWN: dict[str, Any] = {}  # name -> the served model
ERRORS: list[str] = []  # one line per checkpoint that could not be loaded
_lock = threading.Lock()
_done = False
log = logging.getLogger("detr_explorer")


def parse_args(argv: list[str]) -> list[dict[str, Any]]:
    """The server's own arguments (after ``--``) -> one dict per ``--checkpoint``."""
    entries: list[dict[str, Any]] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--checkpoint":
            end = next((j for j in range(i + 1, len(argv)) if argv[j] == "--checkpoint"), len(argv))
            parser = argparse.ArgumentParser(prog="app.py --", add_help=False)
            parser.add_argument("--checkpoint", required=True)
            parser.add_argument("--classes")
            parser.add_argument("--name")
            parser.add_argument("--dilation", action=argparse.BooleanOptionalAction)
            parser.add_argument("--nheads", type=int)
            known, _ = parser.parse_known_args(argv[i:end])
            entries.append({k: v for k, v in vars(known).items() if v is not None})
            i = end
        else:
            i += 1
    return entries


def _configured() -> list[dict[str, Any]]:
    entries = parse_args(sys.argv[1:])
    text = os.environ.get(ENV)
    if text:
        try:
            extra = json.loads(text)
            entries += [dict(e) for e in extra if isinstance(e, dict) and "checkpoint" in e]
        except (json.JSONDecodeError, TypeError):
            ERRORS.append(f"{ENV} is not a JSON list of {{'checkpoint': ..., 'classes': ..., 'name': ...}}")
    return entries


def ensure_registered() -> None:
    """Load the configured models once per process and add them to the registry."""
    global _done
    with _lock:
        if _done:
            return
        _done = True
        server_options.apply()  # --no-downloads and the other server options (ui/server_options.py)
        for entry in _configured():
            try:
                own = load_own_model(
                    entry["checkpoint"],
                    entry.get("classes"),
                    name=entry.get("name"),
                    dilation=entry.get("dilation"),
                    nheads=entry.get("nheads"),
                )
            except DETRError as e:
                ERRORS.append(str(e))  # the message names the file; the path is in the server log only
                log.warning("own model %s not loaded: %s", entry["checkpoint"], e)
                continue
            spec = own.spec
            while spec.name in MODELS:  # never shadow a zoo model or another of yours
                spec = replace(spec, name=f"{spec.name} (yours)")
            register(spec)  # checked against the model contract
            MODELS_OWN[spec.name] = optimize_for_inference(own.model) if spec.foldable else own.model


def is_own(name: str) -> bool:
    return name in MODELS_OWN


def own_model(name: str):
    return MODELS_OWN[name]
