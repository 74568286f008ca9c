import pytest
import torch

from fspkd.core.config import RunConfig
from fspkd.core.errors import FspkdError
from fspkd.core.taps import FeatureTaps
from fspkd.methods.fsp import FSP
from fspkd.models import create, list_models

IMAGENET_STYLE = {"resnet18", "resnet20_4stage", "resnet34", "mobilenetv2"}


def input_for(name, batch=2):
    size = 64 if name in IMAGENET_STYLE else 32
    return torch.randn(batch, 3, size, size)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_the_paper_nets_and_the_cifar_benchmark_zoo():
    expected = {f"resnet{d}" for d in (8, 14, 20, 26, 32, 44, 56, 110)} | IMAGENET_STYLE
    zoo = {"wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "resnet8x4", "resnet32x4", "vgg8", "vgg11", "vgg13",
           "mobilenetv2_cifar", "shufflenetv1", "shufflenetv2"}  # tests/test_zoo.py
    assert set(list_models()) == expected | zoo


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_and_fsp_taps(name):
    torch.manual_seed(0)
    model = create(name, num_classes=7)
    taps = sorted({t for first in ("before", "after") for pair in model.fsp_pairs(first) for t in pair})
    with FeatureTaps(model, taps + model.section_outputs) as feature_taps:
        logits = model(input_for(name))
        features = dict(feature_taps.features)
    assert logits.shape == (2, 7)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())

    for first in ("before", "after"):
        for a, b in model.fsp_pairs(first):
            size_a, size_b = features[a].shape[-1], features[b].shape[-1]
            assert size_a % size_b == 0, (first, a, b, size_a, size_b)
    input_size = input_for(name).shape[-1]
    for info in model.feature_info:
        feature = features[info["name"]]
        assert feature.shape[1] == info["channels"]
        assert feature.shape[-1] * info["reduction"] == input_size


def test_fsp_pairs_of_the_cifar_and_imagenet_families():
    assert create("resnet20").fsp_pairs() == [
        ("layer1:input", "layer1"),
        ("layer1", "layer2"),  # a section's input is the previous section's output
        ("layer2", "layer3"),
    ]
    assert create("resnet20").fsp_permutation_groups() == {
        "layer1:input": "layer1", "layer1": "layer1", "layer2": "layer2", "layer3": "layer3"
    }
    assert create("resnet8").fsp_pairs("after") == [("layer1.0", "layer1"), ("layer2.0", "layer2"), ("layer3.0", "layer3")]
    resnet34 = create("resnet34")
    assert resnet34.fsp_pairs()[-1] == ("layer3", "layer4")
    assert resnet34.hint_layer == "layer3" and create("resnet20_4stage").hint_layer == "layer3"
    assert create("resnet56").hint_layer == "layer2"
    assert create("resnet32").section_outputs == ["layer1", "layer2", "layer3"]
    with pytest.raises(FspkdError, match="'before' or 'after'"):
        resnet34.fsp_pairs("middle")


def test_after_becomes_before_for_both_networks_when_one_has_one_block_sections():
    after = RunConfig(method="fsp", fsp_first="after")
    same_size = FSP(create("resnet20"), create("resnet20"), after)
    assert same_size.student_pairs == same_size.teacher_pairs == create("resnet20").fsp_pairs("after")
    assert not create("resnet14").has_one_block_section and create("resnet8").has_one_block_section
    # ResNet-8's first blocks are its sections: "after" would pair each with itself
    minimisation = FSP(create("resnet8"), create("resnet14"), after)
    assert minimisation.section_start == "before"
    assert minimisation.student_pairs == minimisation.teacher_pairs == create("resnet8").fsp_pairs("before")


def test_paper_teacher_and_student_pairs_have_equal_channels():
    # ResNet-34 -> 20-layer student (transfer) and CIFAR ResNet-26 -> ResNet-8 (minimization)
    for teacher, student in [("resnet34", "resnet20_4stage"), ("resnet26", "resnet8"), ("resnet32", "resnet14")]:
        t, s = create(teacher).eval(), create(student).eval()
        assert t.fsp_pairs() == s.fsp_pairs()
        taps = [tap for pair in t.fsp_pairs() for tap in pair]
        with FeatureTaps(t, taps) as t_taps, FeatureTaps(s, taps) as s_taps, torch.no_grad():
            t(input_for(teacher)), s(input_for(student))
            assert {k: v.shape[1] for k, v in t_taps.features.items()} == \
                {k: v.shape[1] for k, v in s_taps.features.items()}


def test_width_four():
    model = create("resnet8", num_classes=100, width=4)
    assert [info["channels"] for info in model.feature_info] == [64, 128, 256]
    with FeatureTaps(model, ["layer3", "layer2:input"]) as taps:
        assert model(input_for("resnet8")).shape == (2, 100)
        assert taps.features["layer3"].shape == (2, 256, 8, 8)
        assert taps.features["layer2:input"].shape == (2, 64, 32, 32)


def test_option_a_shortcut_pads_subsampled_input_with_zeros():
    shortcut = create("resnet8", width=2).layer2[0].shortcut
    x = torch.randn(1, 32, 8, 8)
    out = shortcut(x)
    assert out.shape == (1, 64, 4, 4)
    torch.testing.assert_close(out[:, 16:48], x[:, :, ::2, ::2])
    assert out[:, :16].abs().sum() == 0 and out[:, 48:].abs().sum() == 0


def test_shortcut_b_has_projection_parameters():
    option_a, option_b = create("resnet14"), create("resnet14", shortcut="B")
    assert n_params(option_a) == 172_506
    # two projections: 16->32 and 32->64 (1x1 conv + BN weight and bias)
    assert n_params(option_b) - n_params(option_a) == 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64
    assert "layer2.0.shortcut.0.weight" in option_b.state_dict()
    assert option_b(input_for("resnet14")).shape == (2, 10)


def test_known_parameter_counts():
    assert abs(n_params(create("resnet20")) - 0.27e6) / 0.27e6 < 0.01
    assert n_params(create("resnet34", num_classes=1000)) == 21_797_672  # torchvision's figure
    assert n_params(create("resnet18", num_classes=1000)) == 11_689_512  # torchvision's figure


def test_initialisation():
    model = create("resnet20")
    assert torch.all(model.bn1.weight == 1) and torch.all(model.bn1.bias == 0)
    conv = model.layer2[1].conv1.weight  # fan_out = 32 * 3 * 3
    assert abs(conv.std().item() - (2 / (32 * 9)) ** 0.5) < 0.01


def test_bad_names_and_options_are_explained():
    with pytest.raises(FspkdError, match=r"unknown model 'resnet21' \(did you mean 'resnet\d+'\?\); valid models: mobilenetv2, mobilenetv2_cifar, resnet110"):
        create("resnet21")
    with pytest.raises(FspkdError, match=r"no option 'widht' \(did you mean 'width'\?\); valid options: width, shortcut"):
        create("resnet20", widht=2)
    with pytest.raises(FspkdError, match="no option 'width'.*valid options: none"):
        create("resnet34", width=2)
    with pytest.raises(FspkdError, match="shortcut must be 'A'"):
        create("resnet20", shortcut="C")
    with pytest.raises(FspkdError, match="width must be a positive integer"):
        create("resnet20", width=0)
    with pytest.raises(FspkdError, match="num_classes"):
        create("resnet20", num_classes=0)


@pytest.mark.parametrize("name", ["resnet20", "resnet18"])
def test_pre_relu_taps_are_the_block_sums_before_the_final_relu(name):
    torch.manual_seed(0)
    model = create(name, num_classes=7).eval()
    assert model.fsp_pairs(pre_relu=True)[:2] == [
        ("layer1:input", f"layer1.{len(model.layer1) - 1}.residual"),
        (f"layer1.{len(model.layer1) - 1}.residual", f"layer2.{len(model.layer2) - 1}.residual"),
    ]
    last_of_layer1 = f"layer1.{len(model.layer1) - 1}.residual"
    assert model.fsp_pairs("after", pre_relu=True)[0] == ("layer1.0.residual", last_of_layer1)
    post, pre = model.fsp_pairs(), model.fsp_pairs(pre_relu=True)
    taps = sorted({t for pair in post + pre for t in pair})
    with FeatureTaps(model, taps) as feature_taps:
        model(input_for(name))
        features = dict(feature_taps.features)
    for (_, post_tap), (_, pre_tap) in zip(post, pre):
        assert (features[pre_tap] < 0).any()  # really before the ReLU
        torch.testing.assert_close(torch.relu(features[pre_tap]), features[post_tap])
    assert set(model.fsp_permutation_groups(pre_relu=True)) == {t for pair in pre for t in pair}
