"""User-given names are shown as plain text (issue 12): upload names in the Detect caption and in
error messages cannot inject a picture, a link, bold text, a colour or LaTeX."""

from __future__ import annotations

import re
import string
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

from ui import caches  # noqa: E402
from ui.text import JOINER, plain  # noqa: E402

APP = str(REPO_ROOT / "app.py")
HOSTILE = [
    "![b](http://127.0.0.1:9/b.png).png", "**bold**.png", "www.example.com a@b.org https://x.png", ":red[x].png",
    "$x$.png", "1. <b>list</b>\n# h.png",
]  # fmt: skip


def _unescape(text: str) -> str:
    """CommonMark's reading of backslash escapes (every escaped ASCII punctuation is that character)."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in string.punctuation:
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


@pytest.mark.parametrize("name", [*HOSTILE, "plain name.png", "a\\b_c`d`~e~|f|", "_x_.png", "- a", "12) b"])
def test_plain_escapes_every_markdown_character_and_reads_back_as_the_name(name):
    escaped = plain(name)
    assert _unescape(escaped).replace(JOINER, "") == name.replace("\n", " ")
    for i, c in enumerate(escaped):  # no character that starts a construct is left unescaped
        if c in "![]*:$<>`#~|&" or (c == "_" and not (escaped[i - 1].isalnum() and escaped[i + 1 : i + 2].isalnum())):
            assert escaped[i - 1] == "\\", (name, escaped, i)
    assert not re.match(r"\s*([-+=]|\d+[.)])", escaped)  # nor a list item or rule at the start
    assert "\n" not in escaped
    for word in ("https", "www", "@"):  # Streamlit's link detection is broken off by a word joiner
        assert word not in name or (word + JOINER in escaped or JOINER + word in escaped), escaped


def test_upload_names_reach_the_page_escaped(offline):
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params = {"model": "detr_shapes", "src": "upload"}
    at.run()
    good, bad = HOSTILE[0], HOSTILE[1]
    at.file_uploader(key="w_upload").set_value((good, caches.scene_png(3), "image/png")).run()
    assert not at.exception, [e.value for e in at.exception]
    caption = next(c.value for c in at.caption if "inference:" in c.value)
    assert plain(good) in caption and good not in caption, caption
    at.file_uploader(key="w_upload").set_value((bad, b"not an image", "application/octet-stream")).run()
    errors = [e.value for e in at.error]
    assert any(plain(bad) in e and "cannot be analyzed" in e for e in errors), errors
    assert not any(bad in e for e in errors), errors


PLOTLY_HOSTILE = '<a href="http://127.0.0.1:9/x">cat</a> <b>&amp;</b><br><span style="font-size:90px">x</span>'


def _plotly_strings(fig) -> list[str]:
    """Every label Plotly renders as its HTML subset: (hover) texts, trace names, annotations, tick labels."""
    out = [a.text for a in fig.layout.annotations]
    for trace in fig.data:
        out.append(trace.name or "")
        for attr in ("text", "hovertext"):
            text = getattr(trace, attr, None)
            out.extend([text] if isinstance(text, str) else list(text or ()))
        out.extend(str(x) for x in (getattr(trace, "x", None) or ()) if isinstance(x, str))
    return [s for s in out if s]


def test_class_names_reach_plotly_labels_as_text():
    """A class name from a user's model (its config's id2label) can hold Plotly's HTML subset: a link,
    bold, a line break, a style. Every label carrying it has the name with `&`, `<`, `>` as entities
    (Plotly decodes them between tags only), and nothing else of the name is a tag."""
    from PIL import Image

    from detr_core.analysis.stats import DetectionStats
    from detr_core.io.image import Geometry
    from detr_core.io.postprocess import Detection
    from ui import figures
    from ui.text import plotly_text

    escaped = plotly_text(PLOTLY_HOSTILE)
    assert "<" not in escaped and ">" not in escaped and "&amp;amp;" in escaped
    det = Detection(query=3, class_id=1, class_name=PLOTLY_HOSTILE, score=0.9, box=(10.0, 10.0, 50.0, 40.0))
    geometry = Geometry(orig_h=64, orig_w=64, input_h=64, input_w=64, feat_h=2, feat_w=2, stride=32)
    photo = Image.new("RGB", (64, 64))
    figs = [figures.detections_figure(photo, geometry, [det], clickable=clickable) for clickable in (False, True)] + [
        figures.share_figure([DetectionStats(0.5, 0.1, 2.0, query=3, class_name=PLOTLY_HOSTILE, score=0.9)])
    ]
    for fig in figs:
        labels = [s for s in _plotly_strings(fig) if "cat" in s]
        assert labels, "the class name reaches no label"
        for label in labels:
            assert escaped in label, label
            assert "<a" not in label and "<span" not in label and "&amp;<" not in label, label
