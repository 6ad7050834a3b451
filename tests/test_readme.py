"""The README's library example runs as printed, on the bundled model, offline."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_library_example_runs(monkeypatch):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Use the library") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "from detr_core import analyze" in code  # the example shows the front door, not internals
    monkeypatch.chdir(ROOT)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    printed = out.getvalue()
    # coffee.png at detr_shapes' 128 px: an 8 x 12 grid of feature cells (stride 16, 128 x 192 input)
    assert "torch.Size([8, 12]) feature cells; clicked cell" in printed, printed
    assert os.path.exists(ROOT / "assets/samples/coffee.png")
