"""No user input ever becomes a server file path.

The dashboard reads exactly one kind of file chosen by a user: a sample photo, whose name (from the
sidebar or the URL's `sample=`) must be one of the names listed in assets/samples. Every other URL
parameter is parsed into a number or matched against a fixed list, and uploads stay in memory.
These tests open the real app (Streamlit's AppTest, in-process) with hostile query parameters and
upload names, and record every file the process opens or lists meanwhile (a `sys.addaudithook`):
nothing outside the repository and the installed libraries may be touched, a canary file outside
the repository is never opened, and the page falls back to its defaults instead of failing.
"""

from __future__ import annotations

import os
import site
import sys
import threading
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

from detr_core import MODELS  # noqa: E402
from ui import caches, state  # noqa: E402

APP = str(REPO_ROOT / "app.py")
TIMEOUT = 180  # seconds per script run: the first one loads the model on a busy 2-core CPU
DEFAULT_SAMPLE = "coffee.png"

# ------------------------------------------------------------------------------------------------
# Recording the files the process opens (audit hooks cannot be removed: this one is switched on
# and off by a flag, and records nothing while off)

_recording = threading.Event()
_opened: list[str] = []
_AUDITED = ("open", "os.listdir", "os.scandir", "os.open")


def _hook(event: str, args: tuple) -> None:
    if not _recording.is_set() or event not in _AUDITED or not args:
        return
    path = args[0]
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if isinstance(path, (str, os.PathLike)):
        _opened.append(os.fspath(path))


sys.addaudithook(_hook)


def _allowed_roots(tmp_path: Path) -> list[Path]:
    """Where the app may read: the repository, Python and its packages, the system's shared data and
    pseudo-files, and this test's own temporary torch home."""
    roots = {REPO_ROOT, Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix), tmp_path / "torch_home"}
    roots |= {Path(p) for p in [*site.getsitepackages(), site.getusersitepackages()]}
    roots |= {Path(p) for p in ("/usr", "/proc", "/sys", "/dev", "/etc/mime.types", "/etc/localtime", "/etc/ssl")}
    return [r.resolve() for r in roots]


def _outside(paths: list[str], roots: list[Path]) -> list[str]:
    bad = []
    for p in paths:
        if p.startswith("<") or p in ("", "."):
            continue
        resolved = Path(p).resolve() if os.path.isabs(p) else (Path.cwd() / p).resolve()
        if not any(resolved == r or resolved.is_relative_to(r) for r in roots):
            bad.append(f"{p} -> {resolved}")
    return bad


# ------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(autouse=True)
def _offline(offline):
    """Every test here runs on an offline machine (tests/conftest.py)."""


@pytest.fixture
def canary(tmp_path) -> Path:
    """A file outside the repository that no request may ever make the server open."""
    folder = tmp_path / "secret"
    folder.mkdir()
    path = folder / "canary.png"
    path.write_bytes(caches.scene_png(0))  # a valid image: reading it would "work" and go unnoticed
    return path


def run_app(tmp_path: Path, query: dict[str, str], forbidden: list[Path]) -> AppTest:
    """Run the app once with `query` as its URL parameters, recording every file it opens."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params = dict(query)
    _opened.clear()
    _recording.set()
    try:
        at.run()
    finally:
        _recording.clear()
    check_files(tmp_path, forbidden)
    assert not at.exception, [e.value for e in at.exception]
    return at


def check_files(tmp_path: Path, forbidden: list[Path]) -> None:
    opened = list(_opened)
    resolved = {Path(p).resolve() for p in opened if not p.startswith("<")}
    for path in forbidden:
        assert path.resolve() not in resolved, f"{path} was opened"
    outside = _outside(opened, _allowed_roots(tmp_path))
    assert not outside, f"files opened outside the repository and the libraries: {outside}"


def test_the_recorder_sees_what_the_process_opens(tmp_path, canary):
    _opened.clear()
    _recording.set()
    try:
        canary.read_bytes()
        list(tmp_path.iterdir())
    finally:
        _recording.clear()
    assert str(canary) in _opened and str(tmp_path) in _opened
    with pytest.raises(AssertionError, match="was opened"):
        check_files(tmp_path, [canary])


def traversal_to(target: Path) -> str:
    """`target` as a path relative to the samples folder (what `SAMPLES_DIR / name` would resolve)."""
    return os.path.relpath(target, caches.SAMPLES_DIR)


# ------------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize(
    "sample",
    ["../../etc/passwd", "/etc/passwd", "CANARY_ABS", "CANARY_REL", "..", "", "coffee.png/../../../etc/passwd",
     "coffee.png\0.txt", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "README.md", "../app.py"],
    ids=["dotdot-passwd", "abs-passwd", "canary-abs", "canary-rel", "dotdot", "empty", "through-a-sample", "nul",
         "url-encoded", "not-a-photo", "app-source"],
)  # fmt: skip
def test_a_hostile_sample_parameter_opens_the_default_sample(tmp_path, canary, sample):
    sample = {"CANARY_ABS": str(canary), "CANARY_REL": traversal_to(canary)}.get(sample, sample)
    at = run_app(tmp_path, {"src": "sample", "sample": sample}, [canary, Path("/etc/passwd")])
    assert at.session_state["w_source"] == "sample"
    assert at.session_state["w_sample"] == DEFAULT_SAMPLE
    assert at.query_params["sample"] == DEFAULT_SAMPLE  # the URL is rewritten to what is shown
    assert not at.error, [e.value for e in at.error]
    assert DEFAULT_SAMPLE in " ".join(c.value for c in at.caption)  # the Detect page says what it analyzed


def test_sample_bytes_refuses_any_name_that_is_not_a_listed_sample(canary):
    for name in ("../../etc/passwd", str(canary), traversal_to(canary), "README.md", ""):
        with pytest.raises(caches.DETRError, match="no sample photo"):
            caches.sample_bytes(name)
    assert caches.sample_bytes(DEFAULT_SAMPLE) == (caches.SAMPLES_DIR / DEFAULT_SAMPLE).read_bytes()


@pytest.mark.parametrize(
    "model", ["../x", "../../detr_core/weights/detr_shapes.pth", "/etc/passwd", "DETR_SHAPES", "detr_shapes/../x", ""]
)
def test_a_hostile_model_parameter_opens_a_known_model(tmp_path, canary, model):
    at = run_app(tmp_path, {"model": model}, [canary, Path("/etc/passwd")])
    assert at.session_state["w_model"] in MODELS
    assert at.query_params["model"] in MODELS
    assert not at.error, [e.value for e in at.error]


@pytest.mark.parametrize(
    "query",
    [
        {"thr": "1e308"}, {"thr": "nan"}, {"thr": "-inf"}, {"thr": "-5"}, {"thr": "0x10"}, {"thr": "abc"},
        {"scene": "-5"}, {"scene": "1e9"}, {"scene": "99999999999999999999999999"}, {"scene": "abc"},
        {"pts": "nan,nan;inf,1;abc;1e400,3;,"}, {"pts": ";".join(f"{i},{i}" for i in range(5000))},
        {"pts": "-1e5,-1e5;1e5,1e5"}, {"q": "-1"}, {"q": "abc"}, {"q": str(10**30)},
        {"page": "../../app"}, {"page": "<script>alert(1)</script>"}, {"src": "../upload"}, {"src": "file"},
        {"foo": "../../etc/passwd", "thr": "0.5", "scene": "3"},
    ],
    ids=lambda q: "&".join(f"{k}={v[:24]}" for k, v in q.items()),
)  # fmt: skip
def test_absurd_numbers_and_names_in_the_url_fall_back_to_defaults(tmp_path, canary, query):
    at = run_app(tmp_path, {"model": "detr_shapes", **query}, [canary])
    assert not at.error, [e.value for e in at.error]
    ss = at.session_state
    assert 0.0 <= ss["w_threshold"] <= 1.0
    assert ss["w_source"] in state.SOURCE_LABELS
    assert 0 <= ss["w_scene"] < caches.SCENE_COUNT
    assert at.header and at.header[0].value in ("Detect", "Encoder attention", "Decoder attention", "Model", "Guide")
    for key, value in dict(at.query_params).items():  # what the URL now says is sane
        assert "passwd" not in value and "<" not in value and len(value) < 200, (key, value)


@pytest.mark.parametrize(
    "name",
    ["../../etc/passwd", "/tmp/../etc/shadow.png", "..\\..\\windows\\win.ini", "a/b/c.png", "<img src=x>.png",
     "x" * 300 + ".png", "scene\0.png"],
    ids=["dotdot", "absolute", "backslashes", "folders", "html", "long", "nul"],
)  # fmt: skip
def test_an_upload_s_name_is_only_a_label(tmp_path, canary, name):
    at = run_app(tmp_path, {"model": "detr_shapes", "scene": "1"}, [canary])
    at.radio(key="w_source").set_value("upload").run()
    _opened.clear()
    _recording.set()
    try:
        at.file_uploader(key="w_upload").set_value((name, caches.scene_png(2), "image/png")).run()
    finally:
        _recording.clear()
    check_files(tmp_path, [canary, Path("/etc/passwd")])
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert at.dataframe or any("Nothing above the threshold" in i.value for i in at.info)
