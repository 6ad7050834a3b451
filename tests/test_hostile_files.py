"""Hostile and odd files (tests/hostile.py) through the library, the CLI, and a fuzzer.

Every file either gives a correct analysis or the core's one exception type, `DETRError`, with a
message a person understands. The fuzzer throws random and mutated bytes and extreme sizes at
`load_image` + `preprocess` and accepts nothing else either.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import EpsImagePlugin, Image

from detr_core import DETRError, ImageError, build_model, load_image, load_model, preprocess
from detr_core.analysis.pipeline import analyze
from detr_core.models.zoo import MODELS, model_status
from detr_core.training.synthetic import CLASSES, HELDOUT_FIRST_SEED, make_scene

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hostile

REPO = Path(__file__).resolve().parent.parent
MODEL = "detr_shapes"
THRESHOLD = float(getattr(MODELS[MODEL], "default_threshold", 0.9))
FUZZ_EXAMPLES = int(os.environ.get("DETR_FUZZ_EXAMPLES", "200"))  # raise it for a longer hunt
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)


@cache
def cases() -> dict[str, hostile.Case]:
    return {c.name: c for c in hostile.corpus()}


def trained() -> bool:
    return model_status(MODEL) == "available"


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    """The bundled model; random weights while its checkpoint is not trained yet (plumbing only)."""
    if trained():
        return load_model(MODEL, device="cpu")
    return build_model(MODEL).eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------
# the library


@pytest.mark.parametrize("name", [c.name for c in hostile.corpus(include_huge=False)] + ["huge_jpeg"])
def test_each_file_gives_a_correct_analysis_or_a_clear_detr_error(model, name):
    case = cases()[name]
    if not case.ok:
        start = time.perf_counter()
        with pytest.raises(DETRError, match=case.message) as info:
            analyze(model, case.data, MODEL)
        assert isinstance(info.value, ImageError), f"{case.why}: {info.value!r}"
        assert time.perf_counter() - start < 5.0, f"{case.why}: refusing it took too long"
        return

    analysis = analyze(model, case.data, MODEL)
    g = analysis.geometry
    assert (g.orig_w, g.orig_h) == case.size, case.why
    assert torch.isfinite(analysis.pred_boxes).all() and torch.isfinite(analysis.pred_logits).all()
    for det in analysis.detections(0.0):  # every query, boxes in the upright image's pixels
        x0, y0, x1, y1 = det.box
        assert -0.5 <= x0 <= x1 <= g.orig_w + 0.5 and -0.5 <= y0 <= y1 <= g.orig_h + 0.5, det
    if case.reference is not None:  # the same pass as on the picture a person sees
        expected = analyze(model, case.reference(), MODEL)
        assert (expected.geometry.orig_w, expected.geometry.orig_h) == case.size
        torch.testing.assert_close(analysis.pred_logits, expected.pred_logits)
        torch.testing.assert_close(analysis.pred_boxes, expected.pred_boxes)


def test_the_corpus_is_small_and_its_file_names_are_unique(tmp_path):
    paths = hostile.write_corpus(tmp_path, list(cases().values()))
    assert len({p.stem for p in paths.values()}) == len(paths)
    assert len(cases()["png_bomb"].data) < 2000  # the bomb is a few hundred bytes on disk
    assert sum(len(c.data) for c in cases().values()) < 2_000_000


def test_postscript_never_reaches_ghostscript(monkeypatch):
    """PIL reads EPS by running Ghostscript: the core must not even try the EPS decoder."""
    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    monkeypatch.setattr(subprocess, "check_call", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: calls.append(a))
    with pytest.raises(ImageError, match="not an image"):
        load_image(hostile.eps_file())
    assert calls == []


@pytest.mark.parametrize("fmt", ["PPM", "TGA", "ICO", "PCX", "SGI", "DDS", "QOI", "JPEG2000"])
def test_formats_outside_the_promised_list_are_refused(fmt):
    """JPEG, PNG, WebP, GIF, BMP and TIFF only: the other decoders are attack surface nobody needs."""
    data = hostile.encode(Image.new("RGB", (32, 24), (10, 200, 10)), fmt)
    with pytest.raises(ImageError, match="not an image"):
        load_image(data)


def test_an_mpo_from_a_phone_is_read_as_its_first_picture():
    first, second = Image.new("RGB", (40, 30), (200, 0, 0)), Image.new("RGB", (40, 30), (0, 200, 0))
    data = hostile.encode(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    out = np.asarray(load_image(data)).astype(int)
    assert out.shape == (30, 40, 3) and (abs(out - (200, 0, 0)) <= 8).all()


# ------------------------------------------------------------------------------------------------
# EXIF orientation: the boxes land on the upright photo


def _xyxy(target, size: int) -> list[tuple[str, tuple[float, float, float, float]]]:
    out = []
    for label, (cx, cy, w, h) in zip(target["labels"].tolist(), target["boxes"].tolist()):
        box = ((cx - w / 2) * size, (cy - h / 2) * size, (cx + w / 2) * size, (cy + h / 2) * size)
        out.append((CLASSES[label], box))
    return out


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _landed(detections, objects, min_iou: float = 0.5) -> bool:
    """Each detection lies on its own object of its class (IoU >= `min_iou`), and there is at least one."""
    free = list(objects)
    for det in detections:
        hit = next((o for o in free if o[0] == det.class_name and _iou(det.box, o[1]) >= min_iou), None)
        if hit is None:
            return False
        free.remove(hit)
    return bool(detections)


def _same(a, b) -> bool:
    return sorted(d.class_name for d in a) == sorted(d.class_name for d in b)


SCENE_SIZE = 256


@cache
def exif_scenes(count: int = 3) -> list[int]:
    """The first held-out scenes (256 px) where the bundled model's upright detections (at least two)
    all lie on real objects: on those, a box that lands elsewhere is the rotation's fault."""
    model = load_model(MODEL, device="cpu")
    seeds, seed = [], HELDOUT_FIRST_SEED
    while len(seeds) < count and seed < HELDOUT_FIRST_SEED + 200:
        upright, target = make_scene(seed, SCENE_SIZE)
        found = analyze(model, hostile.encode(upright, "PNG"), MODEL).detections(THRESHOLD)
        if len(found) >= 2 and _landed(found, _xyxy(target, SCENE_SIZE)):
            seeds.append(seed)
        seed += 1
    return seeds


@pytest.mark.parametrize("k", range(3))
def test_boxes_of_an_exif_rotated_photo_land_on_the_upright_objects(model, k):
    if not trained():
        seed = HELDOUT_FIRST_SEED + k  # random weights: the geometry is all that can be checked
    else:
        seeds = exif_scenes()
        assert len(seeds) == 3, f"the model gets too few held-out scenes right: {seeds}"
        seed = seeds[k]
    upright, target = make_scene(seed, SCENE_SIZE)
    objects = _xyxy(target, SCENE_SIZE)
    expected = analyze(model, hostile.encode(upright, "PNG"), MODEL).detections(THRESHOLD)
    for orientation in (6, 8):
        stored = hostile.as_stored_for_orientation(upright, orientation)
        assert stored.size == upright.size[::-1] and stored.tobytes() != upright.tobytes()
        data = hostile.exif_jpeg(stored, orientation, quality=95)
        analysis = analyze(model, data, MODEL)
        assert (analysis.geometry.orig_w, analysis.geometry.orig_h) == upright.size
        if not trained():
            continue
        got = analysis.detections(THRESHOLD)
        assert _landed(got, objects) and _same(got, expected), f"orientation {orientation}: {got} vs {objects}"
        # the control: the same pixels without their EXIF tag give boxes somewhere else
        sideways = analyze(model, hostile.encode(stored, "JPEG", quality=95), MODEL).detections(THRESHOLD)
        assert not (_landed(sideways, objects) and _same(sideways, expected)), f"scene {seed} looks the same turned"
    if not trained():
        pytest.skip(f"{MODEL}'s checkpoint is not trained yet: only the geometry was checked")


# ------------------------------------------------------------------------------------------------
# the CLI: one run over the whole corpus


@pytest.mark.slow
def test_the_cli_reports_each_bad_file_and_analyses_every_good_one(tmp_path):
    folder = tmp_path / "corpus"
    all_cases = list(cases().values())
    paths = hostile.write_corpus(folder, all_cases)
    scene, _ = make_scene(HELDOUT_FIRST_SEED + 3, SCENE_SIZE)
    scene_path = folder / "scene.png"
    scene.save(scene_path)
    extra = []
    if not trained():  # plumbing only: a random-weights checkpoint of the user's own (not hash-checked)
        own = tmp_path / "random_weights.pth"
        torch.save(build_model(MODEL).state_dict(), own)
        extra = ["--checkpoint", str(own)]
    files = [str(paths[c.name]) for c in all_cases] + [str(scene_path)]
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "detr_core", *files, "--model", MODEL, "--threshold", str(THRESHOLD),
         "--out", str(out), *extra],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    log = proc.stderr
    assert proc.returncode == 1, log
    assert "Traceback" not in log, log
    assert f"{len(files)}/{len(files)}" in log  # the progress bar reached the end: nothing stopped the run
    for case in all_cases:
        path = paths[case.name]
        result_file = out / path.stem / "detections.json"
        if case.ok:
            assert f"{path}: error" not in log, case.why
            result = json.loads(result_file.read_text())
            assert result["size"] == list(case.size), case.why
            assert Image.open(out / path.stem / "boxes.png").size == case.size
        else:
            line = next((ln for ln in log.splitlines() if ln.strip().startswith(f"{path}: error:")), None)
            assert line is not None and case.message in line, f"{case.why}: {line!r}"
            assert not result_file.exists()
    scene_result = json.loads((out / "scene" / "detections.json").read_text())
    if trained():  # the CLI finds what the library finds
        expected = analyze(load_model(MODEL, device="cpu"), scene_path.read_bytes(), MODEL).detections(THRESHOLD)
        assert [(d["query"], d["class_name"]) for d in scene_result["detections"]] == [
            (d.query, d.class_name) for d in expected
        ]


# ------------------------------------------------------------------------------------------------
# fuzzing: only DETRError (or success) comes out of load_image + preprocess

MAGIC = [
    b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xe1", b"GIF89a", b"GIF87a", b"BM",
    b"II*\x00", b"MM\x00*", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"RIFF\x00\x00\x00\x00WEBPVP8L",
]  # fmt: skip


@cache
def seeds() -> dict[str, bytes]:
    """Small real files in every accepted format: what the mutations start from."""
    photo = hostile.small_photo(48)
    exif = Image.Exif()
    exif[hostile.EXIF_ORIENTATION] = 6
    return {
        "png": hostile.encode(photo, "PNG"),
        "png_palette": hostile.encode(photo.convert("P"), "PNG"),
        "png_rgba": hostile.encode(photo.convert("RGBA"), "PNG"),
        "jpeg": hostile.encode(photo, "JPEG", quality=80),
        "jpeg_progressive": hostile.encode(photo, "JPEG", quality=80, progressive=True),
        "jpeg_exif": hostile.encode(photo, "JPEG", quality=80, exif=exif),
        "gif": hostile.animated_gif(),
        "webp": hostile.encode(photo, "WEBP", quality=70),
        "bmp": hostile.encode(photo.resize((16, 12)), "BMP"),
        "tiff": hostile.encode(photo.resize((16, 12)), "TIFF"),
        "gray16": hostile.gray16_png(),
    }


def _check(data: bytes) -> None:
    """The property: load_image + preprocess either succeed consistently or raise DETRError."""
    try:
        image = load_image(data)
        prepared = preprocess(image, stride=32, min_size=128, max_size=1333)
    except DETRError:
        return
    assert image.mode == "RGB"
    g = prepared.geometry
    assert (g.orig_w, g.orig_h) == image.size
    assert prepared.tensor.shape == (1, 3, g.input_h, g.input_w)
    assert torch.isfinite(prepared.tensor).all()


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns about the corrupt files it reads
@FUZZ
@given(prefix=st.sampled_from(MAGIC), body=st.binary(max_size=4096))
def test_fuzz_random_bytes(prefix, body):
    _check(prefix + body)


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 20), st.integers(1, 64)),
    st.tuples(st.just("set_u32"), st.integers(0, 1 << 20), st.sampled_from([0, 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF])),
)


def _mutate(data: bytes, ops) -> bytes:
    buf = bytearray(data)
    for op in ops:
        if not buf:
            break
        pos = op[1] % len(buf)
        if op[0] == "flip":
            buf[pos] ^= op[2]
        elif op[0] == "truncate":
            del buf[pos:]
        elif op[0] == "insert":
            buf[pos:pos] = op[2]
        elif op[0] == "delete":
            del buf[pos : pos + op[2]]
        else:  # overwrite 4 bytes with a value headers use for sizes and lengths
            buf[pos : pos + 4] = op[2].to_bytes(4, "big")
    return bytes(buf)


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns about the corrupt files it reads
@FUZZ
@given(kind=st.sampled_from(sorted(seeds())), ops=st.lists(mutation, min_size=1, max_size=6))
def test_fuzz_mutated_real_files(kind, ops):
    _check(_mutate(seeds()[kind], ops))


sizes = st.one_of(
    st.tuples(st.integers(1, 48), st.integers(1, 40_000)),  # tall strips
    st.tuples(st.integers(1, 40_000), st.integers(1, 48)),  # wide strips
    st.tuples(st.integers(1, 1500), st.integers(1, 1500)),
)


@FUZZ
@given(
    size=sizes,
    fmt=st.sampled_from(["PNG", "JPEG", "GIF", "BMP"]),
    setting=st.sampled_from([(32, 800, 1333), (16, 128, 1333), (32, 64, 64), (16, 1600, 2666)]),
)
@example(size=(10_000, 10), fmt="PNG", setting=(32, 800, 1333))
@example(size=(1, 1), fmt="PNG", setting=(32, 800, 1333))
@example(size=(40_000, 1), fmt="PNG", setting=(16, 128, 1333))
def test_fuzz_sizes_and_aspect_ratios(size, fmt, setting):
    w, h = size
    stride, min_size, max_size = setting
    if fmt == "JPEG" and max(w, h) > 65_500:
        return
    data = hostile.encode(hostile.gradient(w, h), fmt, **({"compress_level": 1} if fmt == "PNG" else {}))
    try:
        prepared = preprocess(load_image(data), stride=stride, min_size=min_size, max_size=max_size)
    except DETRError as e:
        assert "too narrow" in str(e), e  # the only reason a legal-size, valid image is refused
        return
    g = prepared.geometry
    assert (g.orig_w, g.orig_h) == (w, h)
    assert min(g.input_w, g.input_h) >= stride
    assert max(g.input_w, g.input_h) <= max_size + max(w, h) / min(w, h) / 2 + 1  # max_size, to rounding
    assert (g.feat_h, g.feat_w) == (-(-g.input_h // stride), -(-g.input_w // stride))
    assert prepared.tensor.shape == (1, 3, g.input_h, g.input_w)
