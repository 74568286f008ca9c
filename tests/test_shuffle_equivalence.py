"""The paper's shuffled FSP (the dagger rows) on a real network: permuting the channels of a hidden layer, and
the weights that read it, gives an equivalent network whose FSP matrices are permuted as ChannelShuffle does."""

import torch

from fspkd.core.fsp import ChannelShuffle, fsp_matrix
from fspkd.core.taps import FeatureTaps
from fspkd.models import create


def permute_out(conv_or_bn, perm):
    """Reorder the output channels of a conv (or the channels of a BN): new channel k = old channel perm[k]."""
    for name, tensor in list(conv_or_bn.named_parameters()) + list(conv_or_bn.named_buffers()):
        if tensor.dim() >= 1 and tensor.shape[0] == len(perm):
            tensor.data = tensor.data[perm].clone()


def permute_in(module, perm):
    module.weight.data = module.weight.data[:, perm].clone()


@torch.no_grad()
def permute_stream(net, section: int, perm):
    """Permute one section's residual stream of a shortcut-B CIFAR ResNet: every layer that writes it reorders its
    outputs, every layer that reads it reorders its inputs; the network computes the same function."""
    layer = getattr(net, f"layer{section}")
    writers = [(net.conv1, net.bn1)] if section == 1 else [(layer[0].shortcut[0], layer[0].shortcut[1])]
    writers += [(block.conv2, block.bn2) for block in layer]
    for conv, bn in writers:
        permute_out(conv, perm)
        permute_out(bn, perm)
    readers = [block.conv1 for block in layer[1:]] + ([layer[0].conv1] if section == 1 else [])
    if section < 3:
        following = getattr(net, f"layer{section + 1}")[0]
        readers += [following.conv1, following.shortcut[0]]
    else:
        readers.append(net.linear)
    for module in readers:
        permute_in(module, perm)


def fsp_matrices(net, pairs, images):
    taps = sorted({t for p in pairs for t in p})
    with FeatureTaps(net, taps) as hooks:
        logits = net(images)
        return logits, [fsp_matrix(hooks.features[a], hooks.features[b]) for a, b in pairs]


def test_permuted_teacher_is_equivalent_and_its_fsp_is_the_shuffled_fsp():
    torch.manual_seed(0)
    net = create("resnet20", shortcut="B").eval()
    for module in net.modules():  # non-trivial BN statistics, so a wrong permutation would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    images = torch.randn(4, 3, 32, 32)
    pairs = net.fsp_pairs("before")
    logits, matrices = fsp_matrices(net, pairs, images)

    channels = {"layer1:input": 16, "layer1": 16, "layer2": 32, "layer3": 64}
    shuffle = ChannelShuffle(pairs, channels, seed=3, groups=net.fsp_permutation_groups("before"))
    for section, tap in ((1, "layer1"), (2, "layer2"), (3, "layer3")):
        permute_stream(net, section, shuffle.permutations[tap])
    permuted_logits, permuted_matrices = fsp_matrices(net, pairs, images)

    torch.testing.assert_close(permuted_logits, logits, rtol=1e-4, atol=1e-4)
    for got, want in zip(permuted_matrices, shuffle(matrices)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert any(not torch.allclose(a, b) for a, b in zip(permuted_matrices, matrices))
