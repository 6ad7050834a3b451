"""Shared test fixtures: where the reference data and sample photos are, and an isolated weights cache.

Nothing here needs the network or anything outside the repository.

The tests run torch on one CPU thread (override with DETR_TEST_THREADS=n): their inputs are small,
and on a 2-core machine shared with other processes (a training run, say) OpenMP's threads
oversubscribe the cores and make a 64x96 ResNet-50 forward pass ten times slower than one thread.
"""

from __future__ import annotations

import os
import urllib.error
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent

torch.set_num_threads(int(os.environ.get("DETR_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """tests/data/reference: facts about the official DETR, recorded as data."""
    return REPO_ROOT / "tests" / "data" / "reference"


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """assets/samples: real photographs (see its README for their origins)."""
    return REPO_ROOT / "assets" / "samples"


@pytest.fixture(scope="session")
def zoo_model() -> Callable[[str], nn.Module]:
    """A session-wide cache of random-weight zoo models in eval mode: ``zoo_model("detr_resnet50")``.

    Building a ResNet model takes about a second; tests that only read a model share one copy.
    Tests that change a model's weights must build their own.
    """
    from detr_core import build_model

    cache: dict[str, nn.Module] = {}

    def get(name: str) -> nn.Module:
        if name not in cache:
            cache[name] = build_model(name).eval().requires_grad_(False)
        return cache[name]

    return get


@pytest.fixture
def weights_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Point every place a checkpoint can live at empty folders under tmp_path (never ~/.cache).

    Returns {"hub": the torch hub checkpoints dir, "bundled": the bundled dir, "weights_dir": a
    folder that is *not* yet named by $DETR_WEIGHTS_DIR (set it in the test to use it)}.
    """
    from detr_core.models import weights

    torch_home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.delenv("DETR_WEIGHTS_DIR", raising=False)
    hub = torch_home / "hub" / "checkpoints"
    assert weights.hub_checkpoint_dir() == hub, "torch.hub.set_dir() was called: the hub cache is not isolated"
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    monkeypatch.setattr(weights, "BUNDLED_DIR", bundled)
    weights_dir = tmp_path / "weights_dir"
    weights_dir.mkdir()
    return {"hub": hub, "bundled": bundled, "weights_dir": weights_dir}


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """A machine with no official checkpoint and no network: an empty torch hub cache, no
    DETR_WEIGHTS_DIR, and `urlopen` failing as it does offline. The dashboard opens on detr_shapes."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("DETR_WEIGHTS_DIR", raising=False)

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known (test: offline)")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
