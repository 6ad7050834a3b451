"""The model contract: a family that lacks what the capture layer needs fails at registration (or at
build time) with a message naming what is missing; every registered family fulfils it."""

from __future__ import annotations

import dataclasses

import pytest
from torch import nn

from detr_core.models import zoo
from detr_core.models.contract import ContractError, DetectionTransformer, check_architecture, check_model
from detr_core.models.detr_demo import DETRdemo


class _NoHeads(nn.Module):
    stride = 32

    @property
    def input_projection(self) -> nn.Module:
        return nn.Identity()

    def forward(self, images):
        return {}


class _NoTransformer(_NoHeads):
    def heads(self, hs):
        return hs, hs


def test_every_registered_family_fulfils_the_contract():
    for spec in zoo.MODELS.values():
        check_architecture(spec.architecture)
    model = zoo.build_model("detr_shapes")
    assert isinstance(model, DetectionTransformer)
    check_model(model)


def test_a_family_without_heads_is_refused_at_registration():
    spec = dataclasses.replace(zoo.MODELS["detr_shapes"], name="no_heads", architecture=_NoHeads)
    with pytest.raises(ContractError, match=r"_NoHeads does not fulfil .*DetectionTransformer: it has no heads"):
        zoo.register(spec)
    assert "no_heads" not in zoo.MODELS
    with pytest.raises(ContractError, match=r"must be an nn\.Module class"):
        check_architecture(int)


def test_a_family_without_a_transformer_is_refused_when_built(monkeypatch):
    spec = dataclasses.replace(
        zoo.MODELS["detr_shapes"],
        name="no_transformer",
        architecture=_NoTransformer,
        builder=lambda cfg: _NoTransformer(),
    )
    monkeypatch.setitem(zoo.MODELS, spec.name, spec)
    with pytest.raises(ContractError, match=r"has no transformer\.encoder\.layers, transformer\.decoder\.layers"):
        zoo.build_model("no_transformer")


def test_a_builder_that_makes_another_class_is_refused(monkeypatch):
    spec = dataclasses.replace(zoo.MODELS["detr_shapes"], name="liar", builder=lambda cfg: DETRdemo())
    monkeypatch.setitem(zoo.MODELS, spec.name, spec)
    with pytest.raises(ContractError, match="its builder made a DETRdemo, not a DETR"):
        zoo.build_model("liar")


def test_duplicate_names_and_bad_settings_are_refused():
    with pytest.raises(ValueError, match="already registered"):
        zoo.register(zoo.MODELS["detr_shapes"])
    with pytest.raises(ValueError, match="threshold must be in"):
        zoo.register(dataclasses.replace(zoo.MODELS["detr_shapes"], name="t", default_threshold=1.5))


def test_foldable_is_a_property_of_the_spec():
    assert all(spec.foldable for spec in zoo.MODELS.values())  # every family today has batch norm to fold
    assert dataclasses.replace(zoo.MODELS["detr_shapes"], foldable=False).foldable is False
