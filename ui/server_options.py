"""The dashboard's own server options (after ``--`` on the command line, or in the environment).

    streamlit run app.py -- [--no-downloads] [--allow-checkpoint-upload] [--checkpoint PATH ...]

- ``--no-downloads`` (or ``DETR_NO_DOWNLOADS=1``): the server never downloads an official
  checkpoint; models whose checkpoint is not installed are listed as needing a file, and a deep link
  naming one (``?model=detr_resnet101_dc5``) falls back to detr_shapes with a message. For a team
  demo: a visitor's link cannot make the server fetch 232 MB. (detr_core.models.weights enforces it.)
- ``--allow-checkpoint-upload`` (or ``DETR_ALLOW_CHECKPOINT_UPLOAD=1``): offer a checkpoint upload in
  the sidebar (ui/model_upload.py). Off by default: it is for someone running the app on their own
  machine.

``--checkpoint`` and its options are ui/own_models.py's. Unknown options are ignored here.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from detr_core.models.weights import NO_DOWNLOADS_ENV

__all__ = ["ALLOW_UPLOAD_ENV", "ServerOptions", "apply", "options"]

ALLOW_UPLOAD_ENV = "DETR_ALLOW_CHECKPOINT_UPLOAD"
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class ServerOptions:
    no_downloads: bool = False
    allow_checkpoint_upload: bool = False


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def options(argv: list[str] | None = None) -> ServerOptions:
    """The options given after ``--`` (``sys.argv[1:]`` by default) and in the environment."""
    args = sys.argv[1:] if argv is None else argv
    return ServerOptions(
        no_downloads="--no-downloads" in args or _env_flag(NO_DOWNLOADS_ENV),
        allow_checkpoint_upload="--allow-checkpoint-upload" in args or _env_flag(ALLOW_UPLOAD_ENV),
    )


def apply(argv: list[str] | None = None) -> ServerOptions:
    """Make the options take effect in this process (``--no-downloads`` sets DETR_NO_DOWNLOADS=1,
    which the core reads at every download)."""
    opts = options(argv)
    if opts.no_downloads:
        os.environ[NO_DOWNLOADS_ENV] = "1"
    return opts
