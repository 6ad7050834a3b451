"""`python -m detr_core`: real files in, detections and pictures out, bad files reported and skipped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

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
