"""The CIFAR distillation benchmarks' zoo: key names, shapes and sizes as the public code defines them, FSP
sections and hint layers, and their checkpoints ({'model': state_dict, ...}, 'module.' prefixes) loading as they are.

tests/data/zoo_keys.json lists each model's state-dict keys with their shapes and its parameter count at 100
classes, as RepDistiller's ``models/`` (github.com/HobbitLong/RepDistiller) defines them; mdistiller's
``mdistiller/models/cifar/`` (github.com/megvii-research/mdistiller) repeats the same names. Its ``_about`` entry
names the commits.
"""

import argparse
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from fspkd.accel.fast_teacher import fold_batchnorm
from fspkd.cli import main
from fspkd.core.checkpoint import load_weights
from fspkd.core.config import RunConfig
from fspkd.core.errors import FspkdError
from fspkd.core.fsp import ChannelShuffle
from fspkd.core.taps import FeatureTaps
from fspkd.methods.fitnet import FitNet, regressor
from fspkd.methods.fsp import FSP
from fspkd.models import create
from fspkd.models.summary import summarize
from fspkd.training.inference import load_network

EXPECTED = json.loads((Path(__file__).parent / "data" / "zoo_keys.json").read_text())
ZOO = sorted(name for name in EXPECTED if not name.startswith("_"))
# rounded sizes quoted for the benchmarks' teachers at 100 classes, in millions: a check that does not rest on
# zoo_keys.json
PUBLISHED_MILLIONS = {"wrn_40_2": 2.2, "resnet32x4": 7.4, "vgg13": 9.4}


def key_shapes(model):
    """The state dict as 'name dim x dim ...' lines, the format of zoo_keys.json."""
    return [f"{key} {'x'.join(map(str, value.shape))}" for key, value in model.state_dict().items()]


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_the_zoo_is_registered():
    assert len(ZOO) == 12 and all(create(name) is not None for name in ZOO)


@pytest.mark.parametrize("name", ZOO)
def test_state_dict_keys_shapes_and_size_match_the_public_definitions(name):
    model = create(name, num_classes=100)
    expected = EXPECTED[name]
    assert key_shapes(model) == expected["keys"]  # the full list, in order
    assert n_params(model) == expected["params_100"]


@pytest.mark.parametrize("name", sorted(PUBLISHED_MILLIONS))
def test_parameter_counts_agree_with_the_published_sizes(name):
    assert abs(n_params(create(name, num_classes=100)) / 1e6 - PUBLISHED_MILLIONS[name]) < 0.1


@pytest.mark.parametrize("name", ZOO)
def test_forward_and_fsp_sections_of_equal_spatial_size(name):
    torch.manual_seed(0)
    model = create(name, num_classes=100).eval()
    sections = model.sections
    taps = sorted({tap for section in sections for tap in (section.input, section.first, section.output)})
    with FeatureTaps(model, taps) as feature_taps, torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32))
        features = dict(feature_taps.features)
    assert logits.shape == (2, 100)
    assert len(sections) >= 3 and model.hint_layer in model.section_outputs
    for section, info in zip(sections, model.feature_info):
        first, output = features[section.first], features[section.output]
        assert first.shape[-2:] == output.shape[-2:], (section, first.shape, output.shape)
        assert output.shape[1] == info["channels"] and output.shape[-1] * info["reduction"] == 32
        # the section's input is of its size, or a whole multiple (the paper max-pools it down)
        assert features[section.input].shape[-1] % output.shape[-1] == 0
    for first in ("before", "after"):
        assert len(model.fsp_pairs(first)) == len(sections)


@pytest.mark.parametrize("name", ZOO)
def test_a_benchmark_checkpoint_loads_as_it_is(name, tmp_path):
    """RepDistiller saves {'epoch', 'model', 'best_acc', 'optimizer'} (best) or {'opt', 'model'} (last), the
    weights under DataParallel's 'module.' prefix when trained on several GPUs."""
    torch.manual_seed(1)
    source = create(name, num_classes=100)
    weights = {f"module.{key}": value for key, value in source.state_dict().items()}
    path = tmp_path / f"{name}_last.pth"
    torch.save({"opt": argparse.Namespace(model=name, lr=0.05), "model": weights, "best_acc": torch.tensor(70.0)},
               path)
    target = create(name, num_classes=100)
    assert load_weights(target, path) == ([], [])
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    net, normalization = load_network(path, name, {}, num_classes=10)  # the class count is read off the head
    assert normalization is None and net(torch.randn(1, 3, 32, 32)).shape == (1, 100)


@pytest.mark.parametrize("name", ZOO)
def test_the_fast_teacher_folds_every_batchnorm_that_follows_a_conv(name):
    """The live FSP teacher runs with BatchNorm folded on the torch.fx graph: each zoo net must trace."""
    torch.manual_seed(0)
    model = create(name).eval()
    folded = fold_batchnorm(model)
    remaining = sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    # a Wide ResNet's pre-activation BNs mostly follow a sum, not a conv: its bn2s fold, most bn1s cannot
    bn1s = sum(1 for path, _ in model.named_modules() if path.endswith("bn1"))
    assert 0 < remaining <= bn1s if name.startswith("wrn") else remaining == 0
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(images), model(images), rtol=1e-4, atol=1e-4)


def test_a_checkpoint_of_another_model_names_what_differs(tmp_path):
    path = tmp_path / "vgg8_best.pth"
    torch.save({"epoch": 240, "model": create("vgg8").state_dict(), "best_acc": torch.tensor(70.0)}, path)
    with pytest.raises(FspkdError, match="cannot load .* into vgg13: .*missing keys"):
        load_weights(create("vgg13"), path)


@pytest.mark.parametrize("teacher, student", [("wrn_40_2", "wrn_16_2"), ("resnet32x4", "resnet8x4"),
                                              ("vgg13", "vgg8")])
def test_fsp_between_benchmark_pairs_of_equal_widths(teacher, student):
    torch.manual_seed(0)
    config = RunConfig(method="fsp", fsp_first="after", shuffle_seed=3)  # shuffled: taps grouped by stream
    method = FSP(create(student), create(teacher).eval(), config)
    images = torch.randn(4, 3, 32, 32)
    method.check(images)
    loss = method.step("stage1", images, torch.zeros(4, dtype=torch.long), 0.0)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    method.close()


def test_fitnet_from_vgg13_to_mobilenetv2_through_a_regressor():
    torch.manual_seed(0)
    method = FitNet(create("mobilenetv2_cifar"), create("vgg13").eval(), RunConfig(method="fitnet"))
    images = torch.randn(4, 3, 32, 32)
    method.check(images)  # hint block3 (512 channels, 4x4), guided blocks.4 (48 channels, 4x4)
    assert method.regressors[0].in_channels == 48 and method.regressors[0].out_channels == 512
    assert torch.isfinite(method.step("stage1", images, torch.zeros(4, dtype=torch.long), 0.0)["loss"])


@pytest.mark.parametrize("teacher, student, kind", [("resnet20", "shufflenetv2", nn.ConvTranspose2d),
                                                    ("shufflenetv2", "resnet20", nn.Conv2d)])
def test_fitnet_across_resolutions_through_a_strided_regressor(teacher, student, kind):
    # the middle layers of other families sit at other resolutions: ResNet-20's layer2 is 16x16, ShuffleNetV2's 8x8
    torch.manual_seed(0)
    method = FitNet(create(student), create(teacher).eval(), RunConfig(method="fitnet"))
    images = torch.randn(4, 3, 32, 32)
    method.check(images)
    reg = method.regressors[0]
    assert type(reg) is kind and reg.stride == (2, 2) and reg.kernel_size == (2, 2)
    loss = method.step("stage1", images, torch.zeros(4, dtype=torch.long), 0.0)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and reg.weight.grad is not None and reg.weight.grad.abs().sum() > 0
    method.close()


def test_fitnet_refuses_sizes_without_one_whole_factor_naming_both_taps():
    with pytest.raises(FspkdError, match=r"hint t\.x is \(4, 4\) but guided layer s\.y is \(6, 6\)"):
        regressor(torch.Size([8, 6, 6]), torch.Size([16, 4, 4]), "s.y", "t.x")
    with pytest.raises(FspkdError, match="one whole factor"):
        regressor(torch.Size([8, 8, 8]), torch.Size([16, 4, 2]), "s.y", "t.x")
    assert isinstance(regressor(torch.Size([8, 8, 8]), torch.Size([8, 8, 8]), "s", "t"), nn.Identity)


def test_pre_relu_taps_of_the_zoo():
    vgg = create("vgg13")
    assert vgg.fsp_pairs("after", pre_relu=True)[0] == ("block1.1", "block1.4")
    assert create("wrn_16_1").fsp_pairs(pre_relu=True) == create("wrn_16_1").fsp_pairs()
    assert create("shufflenetv1").fsp_pairs(pre_relu=True)[0] == ("layer1:input", "layer1.3.residual")
    with pytest.raises(FspkdError, match="shufflenetv2 has no pre-ReLU tap points"):
        create("shufflenetv2").fsp_pairs(pre_relu=True)


@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_net_can_be_a_shuffled_teacher(name):
    model = create(name)
    for first in ("before", "after"):
        pairs, widths = model.fsp_pairs(first), summarize(name).widths[first]
        channels = {tap: width for pair, pair_widths in zip(pairs, widths) for tap, width in zip(pair, pair_widths)}
        shuffle = ChannelShuffle(pairs, channels, seed=3, groups=model.fsp_permutation_groups(first))
        assert len(shuffle([torch.ones(1, a, b) for a, b in widths])) == len(pairs)


def test_shuffle_groups_keep_one_width():
    # resnet8x4's 32-channel stem feeds a 64-channel layer1 through a projection: not one residual stream
    assert create("resnet8x4").fsp_permutation_groups()["layer1:input"] == "layer1:input"
    assert create("resnet20").fsp_permutation_groups()["layer1:input"] == "layer1"


def test_distill_from_a_benchmark_teacher_checkpoint(tmp_path):
    teacher = tmp_path / "wrn_40_1_best.pth"
    weights = {f"module.{k}": v for k, v in create("wrn_40_1").state_dict().items()}
    torch.save({"epoch": 240, "model": weights, "best_acc": torch.tensor(71.0), "optimizer": {"state": {}}}, teacher)
    out = tmp_path / "fsp"
    args = ["distill", "--data", "synthetic:64,32", "--batch-size", "16", "--quiet", "--method", "fsp",
            "--teacher", str(teacher), "--teacher-model", "wrn_40_1", "--model", "wrn_16_1",
            "--iterations", "2", "--stage1-iterations", "2", "--eval-every", "2", "--out", str(out)]
    assert main(args) == 0
    assert json.loads((out / "summary.json").read_text())["method"] == "fsp"
