"""Checkpoints: find them, download them once, verify them, and read them without running code.

Where a checkpoint is looked for, in order (`resolve_checkpoint`):

1. an explicit file passed by the caller;
2. ``$DETR_WEIGHTS_DIR/<filename>`` (a folder of checkpoints copied by hand, e.g. on an offline machine);
3. the torch hub cache, ``<torch.hub.get_dir()>/checkpoints/<filename>`` (so a checkpoint that
   ``torch.hub`` downloaded before is reused, and ours are reused by ``torch.hub``);
4. the package's bundled folder (`BUNDLED_DIR`, the project's own small model);
5. a download from the checkpoint's URL into the torch hub cache, unless downloads are turned off
   (``DETR_NO_DOWNLOADS=1``, e.g. on a shared server whose operator installs the checkpoints it
   offers: then a missing checkpoint is a `CheckpointError` and nothing is fetched).

Verification follows torch.hub's ``check_hash`` convention: the hex digits after the last ``-`` of
the file name are the first digits of the file's SHA-256, and a file whose hash does not match is
refused before it is read. The one exception is an explicit file whose name differs from the
registry's: that is the user's own checkpoint (a fine-tuned model, say), which has no known hash;
it is still read safely (``weights_only``) and must still fit the model key by key.

Downloads are streamed into a temporary file next to the destination, hashed, then renamed into
place (``os.replace``), so an interrupted or corrupt download never leaves a file under the final
name. Threads and processes that ask for the same checkpoint at once download it once: they queue
on a per-file lock (a ``threading.Lock`` and an ``flock`` on ``<dest>.lock``, which stays behind as
an empty file) and find the finished file when their turn comes.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pickle
import re
import stat
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import CheckpointError

try:  # POSIX: a lock that also holds between processes
    import fcntl
except ImportError:  # pragma: no cover - Windows: threads are still serialized
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "BUNDLED_DIR",
    "CheckpointInfo",
    "check_checkpoint_path",
    "check_torch_file",
    "DOWNLOAD_TIMEOUT_S",
    "NO_DOWNLOADS_ENV",
    "WEIGHTS_DIR_ENV",
    "check_state_dict",
    "checkpoint_status",
    "download_checkpoint",
    "downloads_allowed",
    "file_sha256",
    "hub_checkpoint_dir",
    "local_checkpoint",
    "read_state_dict",
    "resolve_checkpoint",
    "tensor_dict",
    "verify_checkpoint",
]

WEIGHTS_DIR_ENV = "DETR_WEIGHTS_DIR"
NO_DOWNLOADS_ENV = "DETR_NO_DOWNLOADS"  # "1" (or true/yes/on): never download a checkpoint
DOWNLOAD_TIMEOUT_S = 30.0  # seconds without progress (connect or read) before a download fails
_CHUNK = 1 << 20  # 1 MiB: download and hashing block size
_LIST_AT_MOST = 5  # names listed per kind of mismatch in error messages

ProgressFn = Callable[[int, int], None]  # (bytes done, bytes in total; 0 when the server does not say)

_hash_cache: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> SHA-256 hex digest
_file_locks: dict[str, threading.Lock] = {}
_file_locks_guard = threading.Lock()

# The folder shipped inside the package: the project's own detr_shapes checkpoint and its model card.
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "weights"


@dataclass(frozen=True)
class CheckpointInfo:
    """Where a checkpoint comes from and how to check and read it."""

    filename: str  # torch.hub convention: "<name>-<first hex digits of its SHA-256>.pth"
    url: str | None  # None for the bundled checkpoint
    size_mb: float  # approximate download size
    state_dict_key: str | None = "model"  # official checkpoints keep the weights under "model"
    half: bool = False  # stored in float16 (detr_demo): loaded as float32

    @property
    def sha256_prefix(self) -> str:
        return Path(self.filename).stem.rsplit("-", 1)[-1]


# ----------------------------------------------------------------------------------------------
# Where checkpoints live


def hub_checkpoint_dir() -> Path:
    """The torch hub cache folder for checkpoints (``$TORCH_HOME/hub/checkpoints`` by default)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _local_candidates(info: CheckpointInfo) -> list[Path]:
    """The places a checkpoint may already be, in the order they are tried."""
    places = []
    weights_dir = os.environ.get(WEIGHTS_DIR_ENV)
    if weights_dir:
        places.append(Path(weights_dir).expanduser() / info.filename)
    places.append(hub_checkpoint_dir() / info.filename)
    places.append(Path(BUNDLED_DIR) / info.filename)
    return places


def local_checkpoint(info: CheckpointInfo) -> Path | None:
    """The first local copy of a checkpoint ($DETR_WEIGHTS_DIR, hub cache, bundled), unverified; or None."""
    return next((p for p in _local_candidates(info) if p.is_file()), None)


def downloads_allowed() -> bool:
    """False when the environment variable DETR_NO_DOWNLOADS says 1 (or true, yes, on); read at each call."""
    return os.environ.get(NO_DOWNLOADS_ENV, "").strip().lower() not in ("1", "true", "yes", "on")


def _downloads_off(info: CheckpointInfo) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {info.filename} is not on this machine, and downloads are turned off here "
        f"({NO_DOWNLOADS_ENV}=1): whoever runs this installs the checkpoints it offers"
    )


def checkpoint_status(info: CheckpointInfo) -> Literal["available", "downloadable", "missing"]:
    """Whether a checkpoint can be loaded now (for a model picker); cheap: nothing is hashed.

    "available": a copy is on this machine; "downloadable": not here, but it has a URL and downloads
    are allowed (`downloads_allowed`); "missing": neither (e.g. the bundled model before it is trained).
    """
    if local_checkpoint(info) is not None:
        return "available"
    return "downloadable" if info.url and downloads_allowed() else "missing"


def _where_to_put_it(info: CheckpointInfo) -> str:
    return (
        f"To install it by hand, put {info.filename} in {hub_checkpoint_dir()}, "
        f"or in a folder of your choice named by the environment variable {WEIGHTS_DIR_ENV}."
    )


def resolve_checkpoint(
    info: CheckpointInfo, path: str | os.PathLike | None = None, progress: ProgressFn | None = None
) -> Path:
    """The path of a verified checkpoint file, downloading it (once) if it is nowhere on this machine.

    Args:
        info: the registry's description of the checkpoint (file name, URL, expected hash).
        path: an explicit file to use instead of searching. If its name is the registry's file name,
            its hash is checked; any other name is taken as the user's own checkpoint (not hashed).
        progress: called as ``progress(done_bytes, total_bytes)`` while downloading.

    Raises:
        CheckpointError: the file is missing, fails verification, or cannot be downloaded.
    """
    if path is not None:
        explicit = Path(path).expanduser()
        check_checkpoint_path(explicit)
        if explicit.name == info.filename:
            verify_checkpoint(explicit, info)
        return explicit

    found = local_checkpoint(info)
    if found is not None:
        verify_checkpoint(found, info)
        return found
    if not info.url:
        searched = ", ".join(str(p.parent) for p in _local_candidates(info))
        raise CheckpointError(
            f"checkpoint {info.filename} was not found (looked in: {searched}) and has no download URL"
        )
    if not downloads_allowed():
        raise _downloads_off(info)
    return download_checkpoint(info, hub_checkpoint_dir() / info.filename, progress)


# ----------------------------------------------------------------------------------------------
# Verification


def file_sha256(path: Path) -> str:
    """The SHA-256 hex digest of a file, cached per (path, size, mtime) so big files are hashed once."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    digest = _hash_cache.get(key)
    if digest is None:
        digest = _sha256_uncached(path)
        _hash_cache[key] = digest
    return digest


def _sha256_uncached(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            sha.update(block)
    return sha.hexdigest()


def verify_checkpoint(path: Path, info: CheckpointInfo) -> None:
    """Raise `CheckpointError` unless the file's SHA-256 starts with the prefix in `info.filename`."""
    digest = file_sha256(path)
    if not digest.startswith(info.sha256_prefix.lower()):
        fix = "Delete it (it will be downloaded again) or replace it." if info.url else "Replace it."
        raise CheckpointError(
            f"{path} is not the expected checkpoint: its SHA-256 starts with {digest[: len(info.sha256_prefix)]}, "
            f"but {info.filename} must start with {info.sha256_prefix}. The file is corrupt or a different "
            f"checkpoint; it was not loaded. {fix}"
        )


# ----------------------------------------------------------------------------------------------
# Download


@contextmanager
def _exclusive(dest: Path) -> Iterator[None]:
    """Hold the per-file lock of `dest`, between threads and (on POSIX) between processes."""
    with _file_locks_guard:
        thread_lock = _file_locks.setdefault(str(dest), threading.Lock())
    with thread_lock:
        if fcntl is None:  # pragma: no cover
            yield
            return
        with open(dest.with_name(dest.name + ".lock"), "a+b") as lock_file:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def download_checkpoint(info: CheckpointInfo, dest: Path, progress: ProgressFn | None = None) -> Path:
    """Download `info.url` to `dest` atomically, verified, once even when asked concurrently.

    Raises:
        CheckpointError: the download failed or the bytes do not match the expected hash; nothing is
            left under `dest` and no temporary file remains.
    """
    assert info.url, "download_checkpoint needs a URL"
    if not downloads_allowed():
        raise _downloads_off(info)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(
            f"cannot create the folder {dest.parent}: {e.strerror or e}. {_where_to_put_it(info)}"
        ) from None
    with _exclusive(dest):
        if dest.is_file():  # another thread or process finished it while we waited for the lock
            verify_checkpoint(dest, info)
            return dest
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                _stream(info, out, progress)
            digest = _sha256_uncached(tmp)
            if not digest.startswith(info.sha256_prefix.lower()):
                raise CheckpointError(
                    f"the download of {info.filename} from {info.url} is corrupt: its SHA-256 starts with "
                    f"{digest[: len(info.sha256_prefix)]}, not {info.sha256_prefix}; it was discarded. "
                    f"Try again. {_where_to_put_it(info)}"
                )
            os.replace(tmp, dest)
        finally:
            with suppress(FileNotFoundError):
                tmp.unlink()
    return dest


def _stream(info: CheckpointInfo, out, progress: ProgressFn | None) -> None:
    """Copy the body of `info.url` into the open file `out`, checking that every byte arrived."""
    request = urllib.request.Request(info.url, headers={"User-Agent": "detr-attention-explorer"})
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            if progress is not None:
                progress(0, total)
            while block := response.read(_CHUNK):
                out.write(block)
                done += len(block)
                if progress is not None:
                    progress(done, total)
        if total and done != total:
            raise OSError(f"the connection closed after {done} of {total} bytes")
    except (OSError, http.client.HTTPException, ValueError) as e:  # URLError and timeouts are OSErrors
        reason = e.reason if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError) else e
        raise CheckpointError(
            f"could not download the checkpoint {info.filename} from {info.url} ({reason}). "
            f"If this machine is offline, download it elsewhere. {_where_to_put_it(info)}"
        ) from None


# ----------------------------------------------------------------------------------------------
# Reading and checking


def _refused_global(error: Exception) -> str:
    match = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    return f" (it asks for {match.group(1)})" if match else ""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_checkpoint_path(path: Path, folder_ok: bool = False) -> None:
    """Raise `CheckpointError` saying what `path` is unless it is a regular file (or, with
    `folder_ok`, a folder): missing, unreadable, a folder, a device, a FIFO, a socket.

    Nothing is opened, so a FIFO with no writer or /dev/zero cannot hang or flood the reader.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file not found: {path}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read the checkpoint {path}: {e.strerror or e}") from None
    if stat.S_ISREG(mode) or (folder_ok and stat.S_ISDIR(mode)):
        return
    if stat.S_ISDIR(mode):
        raise CheckpointError(f"the checkpoint {path} is a folder, not a file")
    raise CheckpointError(f"the checkpoint {path} is {_kind(mode)}, not a file")


_MAGIC = (  # what a file that is not a checkpoint starts with, for the error message
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"RIFF", "a RIFF file (WebP image, WAV sound, ...)"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive (unpack it first)"),
    (b"BZh", "a bzip2 archive (unpack it first)"),
    (b"\xfd7zXZ\x00", "an xz archive (unpack it first)"),
    (b"7z\xbc\xaf", "a 7-Zip archive (unpack it first)"),
    (b"\x89HDF", "an HDF5 file (Keras / TensorFlow weights)"),
    (b"\x7fELF", "a program (ELF executable)"),
    (b"version https://git-lfs", "a Git LFS pointer, not the file itself (run `git lfs pull`)"),
)


def _looks_like(head: bytes) -> str | None:
    """What a file that is not a PyTorch checkpoint seems to be, from its first bytes; None: no idea."""
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100 * 2**20:
        return "a safetensors file (give it the .safetensors suffix)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        try:
            text = head[:-3].decode("utf-8")  # the sample may end inside a character
        except UnicodeDecodeError:
            return None
    if text and all(c.isprintable() or c in "\r\n\t\f" for c in text):
        stripped = text.lstrip().lower()
        if stripped.startswith(("<!doctype html", "<html")):
            return "an HTML page (a download that returned a web page?)"
        if stripped.startswith(("{", "[")):
            return "a JSON or other text file"
        return "a text file"
    return None


def check_torch_file(path: Path) -> None:
    """Raise `CheckpointError` unless `path` is a regular file whose first bytes are those of a
    file `torch.save` writes (a zip archive, a pickle of protocol 2 or more, or the legacy tar).

    A PNG, a text file, an archive, ... is named for what it looks like, instead of reaching the
    unpickler (which calls an image "Python objects that could run code" and text `KeyError: 101`).
    """
    check_checkpoint_path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        raise CheckpointError(f"cannot read the checkpoint {path.name}: {e.strerror or e}") from None
    if not head:
        raise CheckpointError(f"cannot read the checkpoint {path.name}: the file is empty (0 bytes)")
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80" or head[257:262] == b"ustar":
        return
    what = _looks_like(head)
    if what is not None:
        raise CheckpointError(
            f"cannot read the checkpoint {path.name}: it is not a PyTorch checkpoint (it looks like {what})"
        )
    raise CheckpointError(
        f"cannot read the checkpoint {path.name}: it is damaged, truncated or not a PyTorch checkpoint "
        f"(it starts with {head[:8]!r}, not the bytes torch.save writes)"
    )


def tensor_dict(obj: object, source: str, wrapper: str = "model") -> dict[str, Tensor]:
    """The state dict in a loaded checkpoint object: `obj` itself or ``obj[wrapper]``, checked to map
    parameter names (str) to tensors; `CheckpointError` naming the first entry that does not.

    Tensors are returned as they are (no dtype change, no renaming): the callers do that.
    """
    if isinstance(obj, Mapping) and wrapper in obj and not isinstance(obj[wrapper], Tensor):
        obj = obj[wrapper]  # the official format, {"model": state_dict, ...}
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{source} is not a state dict: it holds a {type(obj).__name__}, not a checkpoint of named tensors"
        )
    state: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{source} is not a state dict: its key {key!r} is not a parameter name")
        if not isinstance(value, Tensor):
            raise CheckpointError(
                f"{source} is not a state dict of tensors: entry {key!r} is of type {type(value).__name__} "
                f"(a checkpoint holds the weights alone, or under {wrapper!r})"
            )
        state[key] = value
    return state


def read_state_dict(path: Path, info: CheckpointInfo) -> dict[str, Tensor]:
    """Read a checkpoint's state dict on the CPU, as float32, without ever running code from it.

    The file is read with ``torch.load(weights_only=True)``: a pickle that would import or call
    anything but tensors and containers is refused. Both formats are accepted whatever the registry
    says the official one is: a plain state dict (``torch.save(model.state_dict())``, the detr_demo
    checkpoint) and one wrapped as ``{info.state_dict_key or "model": state_dict, ...}`` (the
    official DETR checkpoints). Half-precision tensors (detr_demo's) are cast to float32.

    Raises:
        CheckpointError: the file cannot be read, would run code, or is not a dict of tensors.
    """
    path = Path(path)
    check_torch_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" not in str(e):  # "invalid load key", "Unsupported operand": damaged, not dangerous
            raise CheckpointError(f"cannot read the checkpoint {path.name}: it is damaged or truncated ({e})") from None
        raise CheckpointError(
            f"{path.name} was refused: it holds Python objects other than tensors{_refused_global(e)}, "
            "and loading them could run code. Only plain state dicts are accepted."
        ) from None
    except Exception as e:  # torch raises RuntimeError, EOFError, KeyError, ... on damaged files
        raise CheckpointError(f"cannot read the checkpoint {path.name}: {type(e).__name__}: {e}".strip()) from None

    state_dict = tensor_dict(obj, path.name, info.state_dict_key or "model")
    return {k: v.float() if v.dtype in (torch.float16, torch.bfloat16) else v for k, v in state_dict.items()}


def _listed(names: list[str]) -> str:
    more = f", ... ({len(names) - _LIST_AT_MOST} more)" if len(names) > _LIST_AT_MOST else ""
    return ", ".join(names[:_LIST_AT_MOST]) + more


def check_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor], source: str = "the checkpoint") -> None:
    """Raise `CheckpointError` unless `state_dict` has exactly the model's keys, with the same shapes.

    The message names the first few missing keys, unexpected keys and shape mismatches, so a
    checkpoint of another architecture is recognizable at a glance.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} (checkpoint {list(v.shape)}, model {list(expected[k].shape)})"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_listed(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {_listed(mismatched)}")
    if problems:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: " + "; ".join(problems))
