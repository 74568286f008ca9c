"""The fast live teacher: BatchNorm folded into convolutions, channels-last on CPU, same outputs."""

import torch
import torch.nn as nn

from fspkd.accel.fast_teacher import conv_bn_pairs, fold_batchnorm, inference_teacher
from fspkd.core.config import RunConfig
from fspkd.methods.fsp import FSP
from fspkd.models import create


def _teacher(name="resnet14"):
    torch.manual_seed(0)
    model = create(name, num_classes=10).eval()
    for module in model.modules():  # BN statistics far from the identity, so an unfolded BN would show
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.2, 3.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_()
    return model


def test_folded_teacher_gives_the_same_outputs_and_leaves_the_original_alone():
    teacher = _teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    module, forward = inference_teacher(teacher)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in module.modules())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(forward(x), teacher(x), rtol=1e-4, atol=1e-4)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(not p.requires_grad for p in module.parameters())


def test_a_tapped_convolution_keeps_its_batchnorm():
    teacher = _teacher()
    folded = fold_batchnorm(teacher, keep=["layer1.0.conv1"])
    assert isinstance(folded.get_submodule("layer1.0.bn1"), nn.BatchNorm2d)
    assert isinstance(folded.get_submodule("layer1.0.bn2"), nn.Identity)


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, so nothing is folded."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x)) if x.sum() > 0 else self.conv(x)


def test_an_untraceable_model_is_kept_as_it_is():
    assert conv_bn_pairs(Branchy()) == []
    assert isinstance(fold_batchnorm(Branchy()).bn, nn.BatchNorm2d)


def test_fsp_targets_of_the_fast_teacher_match_the_teacher_as_loaded():
    teacher, student = _teacher("resnet14"), create("resnet14", num_classes=10)
    x = torch.randn(8, 3, 32, 32)
    fast = FSP(student, teacher, RunConfig(method="fsp", model="resnet14"))
    plain = FSP(student, teacher, RunConfig(method="fsp", model="resnet14", fast_teacher=False))
    for ours, reference in zip(fast.live_teacher_matrices(x), plain.live_teacher_matrices(x)):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4 * reference.abs().max().item())
    fast.close()
    plain.close()
