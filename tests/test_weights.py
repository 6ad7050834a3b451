"""Checkpoints: where they are found, hash verification, atomic and single downloads, safe reading.

Downloads are tested against a real HTTP server on 127.0.0.1 (an ephemeral port); nothing here
touches the network or the real torch hub cache (see the `weights_env` fixture).
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from detr_core import CheckpointError
from detr_core.models import weights
from detr_core.models.weights import CheckpointInfo, check_state_dict, read_state_dict, resolve_checkpoint
from detr_core.models.zoo import MODELS, model_status

# --------------------------------------------------------------------------------------------
# helpers


def _saved(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _hashed_name(stem: str, data: bytes) -> str:
    """torch.hub's convention: <stem>-<first 8 hex digits of the SHA-256>.pth."""
    return f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}.pth"


def _payload() -> bytes:
    """A small official-format checkpoint of about 2.5 MB (several 1 MiB download blocks)."""
    g = torch.Generator().manual_seed(0)
    return _saved({"model": {"w": torch.randn(640_000, generator=g), "b": torch.arange(3)}})


def _leftovers(folder: Path, filename: str) -> list[str]:
    """Names in `folder` other than the checkpoint and its (deliberately kept) lock file."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name not in (filename, filename + ".lock"))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        srv = self.server
        with srv.lock:
            srv.gets += 1
        if srv.mode == "stall":
            srv.release.wait(10)
            return
        if srv.mode == "missing":
            self.send_error(404)
            return
        body = srv.payload
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.mode == "half":  # promise every byte, send half, hang up
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        for i in range(0, len(body), 1 << 16):
            self.wfile.write(body[i : i + (1 << 16)])
            if srv.mode == "slow":
                srv.release.wait(0.01)

    def log_message(self, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.payload = b""
        self.mode = "good"  # good | slow | half | missing | stall
        self.gets = 0
        self.lock = threading.Lock()
        self.release = threading.Event()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()
        thread.join(5)


# --------------------------------------------------------------------------------------------
# where checkpoints are found


def test_resolution_order_explicit_then_env_then_hub_then_bundled(weights_env, tmp_path, monkeypatch):
    data = _payload()
    name = _hashed_name("order", data)
    info = CheckpointInfo(name, url=None, size_mb=0)
    for place in ("weights_dir", "hub", "bundled"):
        weights_env[place].mkdir(parents=True, exist_ok=True)
        (weights_env[place] / name).write_bytes(data)
    monkeypatch.setenv("DETR_WEIGHTS_DIR", str(weights_env["weights_dir"]))
    explicit = tmp_path / "elsewhere" / name
    explicit.parent.mkdir()
    explicit.write_bytes(data)

    assert resolve_checkpoint(info, path=explicit) == explicit
    assert resolve_checkpoint(info) == weights_env["weights_dir"] / name
    monkeypatch.delenv("DETR_WEIGHTS_DIR")
    assert resolve_checkpoint(info) == weights_env["hub"] / name
    (weights_env["hub"] / name).unlink()
    assert resolve_checkpoint(info) == weights_env["bundled"] / name
    (weights_env["bundled"] / name).unlink()
    with pytest.raises(CheckpointError, match=f"{name} was not found.*no download URL"):
        resolve_checkpoint(info)


def test_a_checkpoint_torch_hub_downloaded_before_is_reused(weights_env, server):
    """A file already in the hub cache is used as is: no request reaches the server."""
    server.payload = _payload()
    name = _hashed_name("cached", server.payload)
    weights_env["hub"].mkdir(parents=True)
    (weights_env["hub"] / name).write_bytes(server.payload)
    assert resolve_checkpoint(CheckpointInfo(name, server.url(name), 0)) == weights_env["hub"] / name
    assert server.gets == 0


def test_a_missing_explicit_file_is_named(weights_env, tmp_path):
    missing = tmp_path / "nope" / "my_detr.pth"
    with pytest.raises(CheckpointError, match=r"checkpoint file not found: .*nope.*my_detr\.pth"):
        resolve_checkpoint(MODELS["detr_resnet50"].checkpoint, path=missing)


@pytest.mark.parametrize("place", ["weights_dir", "hub", "bundled", "explicit"])
def test_a_file_whose_hash_does_not_match_its_name_is_refused(weights_env, monkeypatch, place):
    info = MODELS["detr_resnet50"].checkpoint  # detr-r50-e632da11.pth
    folder = weights_env["weights_dir" if place == "explicit" else place]
    folder.mkdir(parents=True, exist_ok=True)
    fake = folder / info.filename
    fake.write_bytes(_saved({"model": {"w": torch.zeros(3)}}))
    if place == "weights_dir":
        monkeypatch.setenv("DETR_WEIGHTS_DIR", str(folder))
    with pytest.raises(CheckpointError, match=r"not the expected checkpoint.*must start with e632da11"):
        resolve_checkpoint(info, path=fake if place == "explicit" else None)


def test_an_explicit_file_with_another_name_is_the_users_own_and_not_hashed(weights_env, tmp_path, monkeypatch):
    own = tmp_path / "my-finetuned-detr.pth"
    own.write_bytes(b"not hashed, not read here")
    monkeypatch.setattr(weights, "_sha256_uncached", lambda path: pytest.fail("the user's own file was hashed"))
    assert resolve_checkpoint(MODELS["detr_resnet50"].checkpoint, path=own) == own


def test_hashes_are_cached_per_path_size_and_mtime(tmp_path, monkeypatch):
    f = tmp_path / "a.bin"
    f.write_bytes(b"abc")
    calls = []
    real = weights._sha256_uncached
    monkeypatch.setattr(weights, "_sha256_uncached", lambda path: calls.append(path) or real(path))
    expected = hashlib.sha256(b"abc").hexdigest()
    assert weights.file_sha256(f) == expected
    assert weights.file_sha256(f) == expected
    assert len(calls) == 1
    f.write_bytes(b"abcd")  # new size (and mtime): hashed again
    assert weights.file_sha256(f) == hashlib.sha256(b"abcd").hexdigest()
    assert len(calls) == 2


def test_checkpoint_status_for_the_model_picker(weights_env, monkeypatch):
    assert model_status("detr_resnet50") == "downloadable"
    assert model_status(MODELS["detr_shapes"]) == "missing"  # bundled, no URL, not in the bundled dir
    weights_env["hub"].mkdir(parents=True)
    (weights_env["hub"] / MODELS["detr_resnet50"].checkpoint.filename).write_bytes(b"x")  # not hashed
    assert model_status("detr_resnet50") == "available"
    monkeypatch.setenv("DETR_WEIGHTS_DIR", str(weights_env["weights_dir"]))
    (weights_env["weights_dir"] / MODELS["detr_demo"].checkpoint.filename).write_bytes(b"x")
    assert model_status("detr_demo") == "available"
    (weights_env["bundled"] / MODELS["detr_shapes"].checkpoint.filename).write_bytes(b"x")
    assert model_status("detr_shapes") == "available"
    with pytest.raises(CheckpointError, match="unknown model 'nope'"):
        model_status("nope")


# --------------------------------------------------------------------------------------------
# downloads


def test_a_complete_download_is_verified_and_lands_in_the_hub_cache(weights_env, server):
    server.payload = _payload()
    name = _hashed_name("good", server.payload)
    calls: list[tuple[int, int]] = []
    path = resolve_checkpoint(CheckpointInfo(name, server.url(name), 0), progress=lambda d, t: calls.append((d, t)))
    assert path == weights_env["hub"] / name
    assert path.read_bytes() == server.payload
    n = len(server.payload)
    assert calls[0] == (0, n) and calls[-1] == (n, n) and len(calls) >= 3
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert sorted(os.listdir(weights_env["hub"])) == [name, name + ".lock"]  # the lock file stays, empty
    assert server.gets == 1
    assert read_state_dict(path, CheckpointInfo(name, None, 0))["b"].tolist() == [0, 1, 2]


def test_an_interrupted_download_leaves_nothing_and_the_next_attempt_works(weights_env, server):
    server.payload = _payload()
    name = _hashed_name("cut", server.payload)
    info = CheckpointInfo(name, server.url(name), 0)
    server.mode = "half"
    with pytest.raises(CheckpointError, match=rf"could not download the checkpoint {name}"):
        resolve_checkpoint(info)
    assert not (weights_env["hub"] / name).exists()
    assert _leftovers(weights_env["hub"], name) == []
    server.mode = "good"
    assert resolve_checkpoint(info).read_bytes() == server.payload
    assert _leftovers(weights_env["hub"], name) == []


def test_a_corrupt_download_is_discarded_before_it_gets_the_final_name(weights_env, server):
    server.payload = _payload()
    name = _hashed_name("other", b"some other bytes")
    with pytest.raises(CheckpointError, match=rf"download of {name} .* is corrupt.*discarded"):
        resolve_checkpoint(CheckpointInfo(name, server.url(name), 0))
    assert not (weights_env["hub"] / name).exists()
    assert _leftovers(weights_env["hub"], name) == []


def test_two_threads_asking_at_once_download_once(weights_env, server):
    server.payload = _payload()
    server.mode = "slow"  # about 0.4 s, so the two requests overlap
    name = _hashed_name("once", server.payload)
    info = CheckpointInfo(name, server.url(name), 0)
    start = threading.Barrier(2)
    results: list[Path | BaseException] = []

    def fetch() -> None:
        start.wait()
        try:
            results.append(resolve_checkpoint(info))
        except BaseException as e:  # reported by the assertion below
            results.append(e)

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [weights_env["hub"] / name] * 2
    assert server.gets == 1
    assert _leftovers(weights_env["hub"], name) == []


def test_offline_error_names_the_file_its_url_and_where_to_put_it(weights_env):
    info = CheckpointInfo("detr-r50-e632da11.pth", f"http://127.0.0.1:{_closed_port()}/detr-r50-e632da11.pth", 159)
    with pytest.raises(CheckpointError) as caught:
        resolve_checkpoint(info)
    message = str(caught.value)
    assert "detr-r50-e632da11.pth" in message
    assert info.url in message
    assert str(weights_env["hub"]) in message
    assert "DETR_WEIGHTS_DIR" in message
    assert _leftovers(weights_env["hub"], info.filename) == []


def test_http_errors_and_stalled_servers_fail_cleanly(weights_env, server, monkeypatch):
    server.payload = _payload()
    name = _hashed_name("err", server.payload)
    info = CheckpointInfo(name, server.url(name), 0)
    server.mode = "missing"
    with pytest.raises(CheckpointError, match=r"HTTP Error 404"):
        resolve_checkpoint(info)
    server.mode = "stall"
    monkeypatch.setattr(weights, "DOWNLOAD_TIMEOUT_S", 0.3)
    with pytest.raises(CheckpointError, match=r"timed out"):
        resolve_checkpoint(info)
    assert _leftovers(weights_env["hub"], name) == []


# --------------------------------------------------------------------------------------------
# reading


class _RunsCode:
    """Pickles as a call to Path.write_text: loading it without protection writes a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.write_text, (self.marker, "code ran")


def test_a_pickle_that_would_run_code_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "payload": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match=r"refused: it holds Python objects other than tensors.*could run code"):
        read_state_dict(path, CheckpointInfo("evil.pth", None, 0))
    assert not marker.exists()
    # the payload is real: an unprotected load would have run it
    torch.load(path, weights_only=False)
    assert marker.read_text() == "code ran"


def test_half_tensors_become_float32_and_other_dtypes_are_kept(tmp_path):
    path = tmp_path / "demo.pth"
    sd = {"a": torch.tensor([0.1, 2.5]).half(), "b": torch.tensor([1.5]).bfloat16(), "n": torch.tensor(7)}
    torch.save(sd, path)
    out = read_state_dict(path, CheckpointInfo("demo.pth", None, 0, state_dict_key=None, half=True))
    assert out["a"].dtype == torch.float32 and out["a"].tolist() == sd["a"].float().tolist()
    assert out["b"].dtype == torch.float32 and out["b"].tolist() == [1.5]
    assert out["n"].dtype == torch.int64 and out["n"].item() == 7


@pytest.mark.parametrize("key", ["model", None])
@pytest.mark.parametrize("wrapped", [True, False])
def test_plain_and_wrapped_state_dicts_are_both_read(tmp_path, key, wrapped):
    """The official {"model": sd} format and a plain sd load whatever the registry expects."""
    sd = {"w": torch.arange(4.0), "model": torch.ones(1)}  # a tensor named "model" is a weight, not a wrapper
    path = tmp_path / "x.pth"
    torch.save({"model": sd, "epoch": 3} if wrapped else sd, path)
    out = read_state_dict(path, CheckpointInfo("x.pth", None, 0, state_dict_key=key))
    assert out.keys() == sd.keys() and all(torch.equal(out[k], v) for k, v in sd.items())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([torch.zeros(1)], r"x\.pth is not a state dict: it holds a list"),
        ({"model": [torch.zeros(1)]}, r"not a state dict: it holds a list"),
        ({"model": {"w": torch.zeros(1), "step": 3}}, r"entry 'step' is of type int"),
        ({"w": torch.zeros(1), "meta": {"epoch": 1}}, r"entry 'meta' is of type dict"),
        ({"state_dict": {"w": torch.zeros(1)}}, r"entry 'state_dict' is of type dict .*alone, or under 'model'"),
        ({1: torch.zeros(1)}, r"its key 1 is not a parameter name"),
    ],
)
def test_files_that_are_not_a_dict_of_tensors_are_refused(tmp_path, content, message):
    path = tmp_path / "x.pth"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=message):
        read_state_dict(path, CheckpointInfo("x.pth", None, 0))


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated"])
def test_damaged_files_raise_checkpoint_error(tmp_path, damage):
    good = _saved({"model": {"w": torch.zeros(1000)}})
    data = {"garbage": b"this is not a checkpoint", "empty": b"", "truncated": good[: len(good) // 2]}[damage]
    path = tmp_path / "bad.pth"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=r"cannot read the checkpoint bad\.pth"):
        read_state_dict(path, CheckpointInfo("bad.pth", None, 0))


def test_check_state_dict_names_missing_unexpected_and_misshapen_keys():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 4))
    check_state_dict(model, model.state_dict())  # fits: no error
    sd = dict(model.state_dict())
    del sd["1.bias"]
    sd["0.weight"] = torch.zeros(5, 2)
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as caught:
        check_state_dict(model, sd, source="my.pth")
    message = str(caught.value)
    assert message.startswith("my.pth does not fit Sequential")
    assert "1 missing keys: 1.bias" in message
    assert "1 unexpected keys: extra.weight" in message
    assert "1 shape mismatches: 0.weight (checkpoint [5, 2], model [3, 2])" in message


def test_check_state_dict_lists_the_first_few_names_of_a_long_list():
    model = nn.Sequential(*[nn.Linear(1, 1) for _ in range(8)])  # 16 keys
    with pytest.raises(CheckpointError, match=r"16 missing keys: 0.weight, 0.bias, 1.weight, 1.bias, 2.weight, \.\.\. "
                       r"\(11 more\)$"):  # fmt: skip
        check_state_dict(model, {})



# --------------------------------------------------------------------------------------------
# what a checkpoint path is, said as it is (not "not found", not "could run code", not KeyError)


def _not_files(tmp_path: Path) -> list[tuple[str, Path, str]]:
    """(label, path, the message it must give) for paths that are not checkpoint files."""
    fifo = tmp_path / "pipe.pth"
    os.mkfifo(fifo)  # no writer: opening it would wait forever
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "weights.pth").write_bytes(b"")
    png = tmp_path / "photo.pth"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(png, "PNG")
    text = tmp_path / "notes.pth"
    text.write_text("every detection is a box\nand a class\n")
    html = tmp_path / "download.pth"
    html.write_text("<!DOCTYPE html><html><body>Sign in</body></html>")
    lfs = tmp_path / "lfs.pth"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 166\n")
    return [
        ("/dev/zero", Path("/dev/zero"), r"/dev/zero is a device, not a file"),
        ("FIFO", fifo, r"pipe\.pth is a FIFO \(named pipe\), not a file"),
        ("PNG", png, r"photo\.pth: it is not a PyTorch checkpoint \(it looks like a PNG image\)"),
        ("text", text, r"notes\.pth: it is not a PyTorch checkpoint \(it looks like a text file\)"),
        ("HTML", html, r"it looks like an HTML page"),
        ("LFS pointer", lfs, r"it looks like a Git LFS pointer"),
        ("folder", folder, r"folder is a folder"),
    ]


def test_read_state_dict_says_what_a_path_is_instead_of_reading_it(tmp_path):
    for label, path, message in _not_files(tmp_path):
        with pytest.raises(CheckpointError, match=message) as info:
            if label == "folder":
                resolve_checkpoint(CheckpointInfo("x.pth", None, 0), path=path)
            else:
                read_state_dict(path, CheckpointInfo(path.name, None, 0))
        text = str(info.value)
        assert "not found" not in text and "could run code" not in text and "KeyError" not in text, label


def test_an_explicit_checkpoint_that_is_a_device_or_a_fifo_is_not_called_missing(tmp_path):
    for _label, path, message in _not_files(tmp_path)[:2]:
        with pytest.raises(CheckpointError, match=message):
            resolve_checkpoint(CheckpointInfo("x.pth", None, 0), path=path)


def test_your_own_model_loader_says_what_a_path_is(tmp_path):
    from detr_core import load_own_model

    for label, path, message in _not_files(tmp_path):
        if label == "folder":
            message = r"folder is a folder without a config\.json"
        with pytest.raises(CheckpointError, match=message) as info:
            load_own_model(path, device="cpu")
        assert "not found" not in str(info.value) and "could run code" not in str(info.value), label


def test_the_cli_refuses_a_checkpoint_that_is_a_device_with_one_line(tmp_path, capsys):
    from detr_core.cli import main

    assert main(["x.png", "--checkpoint", "/dev/zero", "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err == "error: the checkpoint /dev/zero is a device, not a file\n"


@pytest.mark.parametrize(
    "content", [[1, 2], {"model": {"w": torch.zeros(1), "step": 3}}, {3: torch.zeros(1)}, {"w": "x"}]
)
def test_the_zoo_and_your_own_model_check_a_state_dict_with_one_helper(tmp_path, content):
    """weights.read_state_dict and checkpoint_formats.detection_state_dict give the same message."""
    from detr_core.models.checkpoint_formats import detection_state_dict

    path = tmp_path / "x.pth"
    torch.save(content, path)
    with pytest.raises(CheckpointError) as zoo:
        read_state_dict(path, CheckpointInfo("x.pth", None, 0))
    with pytest.raises(CheckpointError) as own:
        detection_state_dict(torch.load(path, weights_only=True), "x.pth")
    assert str(zoo.value) == str(own.value)
