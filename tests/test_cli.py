"""`python -m detr_core`: real files in, detections and pictures out, bad files reported and skipped."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from detr_core.cli import main
from detr_core.io.names import NAME_MAX_BYTES, printable, safe_name
from detr_core.training.synthetic import make_scene

REPO = Path(__file__).resolve().parent.parent


def test_cli_analyses_good_files_and_reports_bad_ones(tmp_path, samples_dir):
    scene, target = make_scene(7, 256)
    scene.save(tmp_path / "scene.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not a photo")
    out = tmp_path / "out"
    args = [str(tmp_path / "empty.jpg"), str(tmp_path / "scene.png"), str(tmp_path / "notes.jpg"),
            str(samples_dir / "chelsea.png")]
    proc = subprocess.run(
        [sys.executable, "-m", "detr_core", *args, "--model", "detr_shapes", "--points", "64,64", "200,40",
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr  # two bad files
    assert "empty.jpg: error: the file is empty" in proc.stderr
    assert "notes.jpg: error: this file is not an image" in proc.stderr
    assert "4/4" in proc.stderr  # the progress bar reached the end

    result = json.loads((out / "scene" / "detections.json").read_text())
    assert result["size"] == [256, 256]
    found = sorted(d["class_name"] for d in result["detections"])
    expected = sorted(("ellipse", "rectangle", "triangle", "ring")[int(c)] for c in target["labels"])
    assert found == expected
    for det in result["detections"]:
        x0, y0, x1, y1 = det["box_xyxy"]
        assert 0 <= x0 < x1 <= 256.5 and 0 <= y0 < y1 <= 256.5
        assert (out / "scene" / f"decoder_q{det['query']}_{det['class_name']}.png").exists()
    assert Image.open(out / "scene" / "boxes.png").size == (256, 256)
    assert Image.open(out / "scene" / "encoder_x64_y64.png").size == (256, 256)
    assert (out / "chelsea" / "encoder_x200_y40.png").exists()
    assert not (out / "empty").exists() and not (out / "notes").exists()


# ------------------------------------------------------------------------------------------------
# hostile options: refused before anything is loaded, one line, exit code 2 (argparse's usage error)

def _refused(argv: list[str], capsys) -> str:
    """Run the CLI in this process; it must refuse to start with exit code 2 and one line, no traceback."""
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's usage errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if "error: " in ln]
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1], err  # after argparse's usage, if any
    return errors[0]


@pytest.mark.parametrize("point", ["nan,nan", "inf,0", "1e308,1e308", "-inf,5", "5,-1"])
def test_a_non_finite_or_impossible_point_is_refused_at_start(tmp_path, capsys, point):
    (tmp_path / "a.png").write_bytes(b"")
    argv = [str(tmp_path / "a.png"), "--model", "detr_shapes", f"--points={point}", "--out", str(tmp_path / "out")]
    err = _refused(argv, capsys)
    assert "argument --points" in err and point in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "high"])
def test_a_non_finite_threshold_is_refused_at_start(tmp_path, capsys, value):
    err = _refused(["x.png", "--model", "detr_shapes", "--threshold", value, "--out", str(tmp_path / "o")], capsys)
    assert "argument --threshold" in err


def _cuda_cases() -> list:
    cases = ["banana", "meta", "cuda:7", "cuda:-1", ""]
    if not torch.cuda.is_available():
        cases.append("cuda")
    return cases


@pytest.mark.parametrize("device", _cuda_cases())
def test_a_device_this_machine_cannot_use_is_refused_at_start(tmp_path, capsys, device):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    err = _refused(["x.png", "--model", "detr_shapes", "--device", device, "--out", str(tmp_path / "o")], capsys)
    assert err.startswith("error: ") and repr(device) in err, err
    if device in ("cuda", "cuda:7") and not torch.cuda.is_available():
        assert "no CUDA GPU is available" in err
    elif device == "cuda:7":
        assert "GPU(s), cuda:0 to" in err
    assert not (tmp_path / "o").exists()  # refused before anything was made


def _unwritable() -> str:
    """A folder nobody may write into, root included (/sys is read-only for everyone)."""
    import tempfile

    try:
        fd, name = tempfile.mkstemp(dir="/sys")
    except OSError:
        return "/sys"
    os.close(fd)
    os.unlink(name)
    pytest.skip("/sys is writable here")


@pytest.mark.parametrize("where", ["a file", "under a file", "unwritable", "300 characters"])
def test_an_out_folder_that_cannot_be_used_is_refused_at_start(tmp_path, capsys, where):
    (tmp_path / "notes.txt").write_text("x")
    out = {
        "a file": str(tmp_path / "notes.txt"),
        "under a file": str(tmp_path / "notes.txt" / "out"),
        "unwritable": _unwritable() if where == "unwritable" else "",
        "300 characters": str(tmp_path / ("o" * 300)),
    }[where]
    err = _refused(["x.png", "--model", "detr_shapes", "--out", out], capsys)
    assert err.startswith(f"error: --out {out}")
    expected = {"a file": "is a file, not a folder", "under a file": "Not a directory", "unwritable": "ermission",
                "300 characters": "File name too long"}[where]  # fmt: skip
    assert expected in err
    assert (tmp_path / "notes.txt").read_text() == "x"


def test_a_failed_start_leaves_no_empty_output_folder(tmp_path, capsys):
    out = tmp_path / "new" / "out"
    err = _refused(["x.png", "--checkpoint", str(tmp_path / "missing.pth"), "--out", str(out)], capsys)
    assert "missing.pth" in err
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------------------------------------
# output names: printable, inside --out, within the file system's name limit


def test_printable_escapes_control_characters_and_keeps_letters():
    assert printable("caf\u00e9 \u732b.png") == "caf\u00e9 \u732b.png"
    assert printable("a\rb\x1b[2Jc\n\t\x00\u200b") == "a\\rb\\x1b[2Jc\\n\\t\\x00\\u200b"
    assert printable(printable("a\rb")) == printable("a\rb")  # no double escaping


@pytest.mark.parametrize("stem", ["..", ".", "...", ".hidden", "a/b", "a\\b", "\x1b[2J", "", "\udcff"])
def test_safe_name_never_climbs_hides_or_splits(stem):
    name = safe_name(stem)
    assert name not in (".", "..") and not name.startswith(".")
    assert "/" not in name and "\\" not in name and name.isprintable() and name
    name.encode("utf-8")  # no lone surrogates


def test_safe_name_deduplicates_within_the_byte_limit():
    used: set[str] = set()
    long = "\u00e9" * 200  # 400 bytes in UTF-8
    names = [safe_name(long, used) for _ in range(12)] + [safe_name("a" * 255, used) for _ in range(3)]
    assert len({n.casefold() for n in names}) == len(names)
    assert all(len(n.encode("utf-8")) <= NAME_MAX_BYTES for n in names)
    assert safe_name("Photo", used) != safe_name("photo", used)  # case-insensitive file systems


# ------------------------------------------------------------------------------------------------
# hostile files in one batch: each one line, the batch goes on, exit code 1


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def test_a_batch_of_hostile_inputs_and_names_is_reported_file_by_file(tmp_path):
    scene, _ = make_scene(7, 256)
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = inputs / "scene.png"
    scene.save(good)
    fifo = inputs / "pipe.png"
    os.mkfifo(fifo)  # no writer: a plain open() would wait forever
    dots = inputs / "...png"  # stem ".."
    dots.write_bytes(good.read_bytes())
    escape = inputs / "evil\r\x1b[2Jname.png"
    escape.write_bytes(good.read_bytes())
    long_a, long_b = inputs / "a", inputs / "b"
    long_a.mkdir()
    long_b.mkdir()
    for folder in (long_a, long_b):
        (folder / ("L" * 255)).write_bytes(good.read_bytes())  # the longest name a file can have
    out = tmp_path / "sub" / "out"
    files = [str(fifo), "/dev/zero", "/dev/urandom", str(inputs), str(dots), str(escape),
             str(long_a / ("L" * 255)), str(long_b / ("L" * 255)), str(good)]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "detr_core", *files, "--model", "detr_shapes", "--threshold", "0.5",
         "--points", "0,0", "1000000,1000000", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    log = proc.stderr
    assert proc.returncode == 1, log
    assert "Traceback" not in log
    assert f"{len(files)}/{len(files)}" in log  # nothing stopped the batch
    lines = [ln.strip("\r") for ln in log.split("\n")]
    for bad in (fifo, "/dev/zero", "/dev/urandom", inputs):
        line = next(ln for ln in lines if ln.startswith(f"{bad}: error:"))
        assert "is not a regular file" in line, line
    assert "\x1b" not in log.replace("\x1b[K", "")  # the only escape code is the CLI's own line clear
    assert "evil\\r\\x1b[2Jname.png: " in log
    # everything stays inside --out: ".." became "__", nothing landed next to it
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["out"]
    folders = sorted(p.name for p in out.iterdir())
    assert "__" in folders and "scene" in folders and "evil___2Jname" in folders
    long_names = [f for f in folders if f.startswith("L")]
    assert len(long_names) == 2 and all(len(f.encode()) <= NAME_MAX_BYTES for f in long_names)
    for folder in out.iterdir():
        result = json.loads((folder / "detections.json").read_text(), parse_constant=_no_constant)
        assert result["threshold"] == 0.5 and all(math.isfinite(d["score"]) for d in result["detections"])
        assert (folder / "encoder_x0_y0.png").exists() and (folder / "encoder_x1000000_y1000000.png").exists()
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
