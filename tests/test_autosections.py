"""FSP sections found by a dry run, for models that declare none: the zoo, torchvision- and timm-style CNNs."""

import pytest
import torch
from lookalikes import TimmLikeNet, TorchvisionLikeResNet
from torch import nn

from fspkd.cli import main
from fspkd.core.autosections import auto_hint, auto_pairs, find_sections
from fspkd.core.errors import FspkdError
from fspkd.core.fsp import fsp_matrix
from fspkd.core.taps import FeatureTaps
from fspkd.models import create, list_models

CIFAR = torch.randn(2, 3, 32, 32)


@pytest.mark.parametrize("name", ["resnet20", "resnet56", "resnet32x4", "shufflenetv1"])
def test_zoo_sections_found_are_the_declared_ones(name):
    model = create(name)
    assert auto_pairs(model, CIFAR) == [tuple(p) for p in model.fsp_pairs("after")]
    assert auto_hint(model, CIFAR) == model.hint_layer


def test_one_block_sections_pair_the_block_input_with_its_output():
    assert auto_pairs(create("resnet8"), CIFAR) == [(f"layer{i}.0:input", f"layer{i}") for i in (1, 2, 3)]


@pytest.mark.parametrize("name", list_models())
def test_every_zoo_model_gets_sections_whose_fsp_matrices_compute(name):
    model = create(name).eval()
    pairs = auto_pairs(model, CIFAR)
    assert len(pairs) >= 2
    with FeatureTaps(model, [t for p in pairs for t in p]) as taps, torch.no_grad():
        model(CIFAR)
        matrices = [fsp_matrix(taps.features[a], taps.features[b]) for a, b in pairs]
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in matrices)


def test_torchvision_like_resnet_sections_are_its_layers_without_the_stem():
    model = TorchvisionLikeResNet()
    sections = find_sections(model, torch.randn(2, 3, 64, 64))
    assert [(s.first, s.last) for s in sections] == [(f"layer{i}.0", f"layer{i}") for i in (1, 2, 3, 4)]
    assert sections[0].first_shape == (8, 16, 16) and sections[3].last_shape == (64, 2, 2)
    assert auto_hint(model, torch.randn(2, 3, 64, 64)) == "layer3"


def test_timm_like_stages_pair_each_stage_input_with_its_output():
    pairs = auto_pairs(TimmLikeNet(), CIFAR)
    assert pairs == [("stages.0:input", "stages.0"), ("stages.1:input", "stages.1"), ("stages.2:input", "stages")]


def test_the_dry_run_leaves_the_model_as_it_was():
    model = TorchvisionLikeResNet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    find_sections(model, torch.randn(2, 3, 64, 64))
    assert model.training and not model._forward_hooks and not model.layer1[0]._forward_hooks
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_model_without_feature_maps_is_refused_in_one_line():
    with pytest.raises(FspkdError, match="found no FSP sections in Sequential") as err:
        find_sections(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)), CIFAR)
    assert "\n" not in str(err.value)


def test_cli_models_pairs_prints_the_found_sections(capsys):
    assert main(["models", "--pairs", "resnet20"]) == 0
    out = capsys.readouterr().out
    assert "section 1: layer1.0 16x32x32 > layer1 16x32x32" in out and "hint layer (FitNet): layer2" in out
