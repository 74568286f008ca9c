import pytest
import torch
from torch import nn

from fspkd.core.errors import FspkdError
from fspkd.core.taps import FeatureTaps, parse_tap
from fspkd.models import create


def small_net():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2), nn.Flatten())


def test_output_and_input_taps_hold_the_real_tensors():
    net = small_net()
    x = torch.randn(2, 3, 8, 8)
    with FeatureTaps(net, ["0", "2:input", "2"]) as taps:
        out = net(x)
        features = dict(taps.features)
    conv0 = net[0](x)
    torch.testing.assert_close(features["0"], conv0)
    torch.testing.assert_close(features["2:input"], torch.relu(conv0))
    torch.testing.assert_close(features["2"].flatten(1), out)


def test_features_keep_their_graph():
    net = small_net()
    with FeatureTaps(net, ["2"]) as taps:
        net(torch.randn(2, 3, 8, 8))
        taps.features["2"].sum().backward()
    assert net[0].weight.grad is not None


def test_unknown_path_names_the_nearest_modules():
    model = create("resnet8")
    with pytest.raises(FspkdError, match=r"no module 'layer1\.O'.*'layer1\.0'"):
        FeatureTaps(model, ["layer1.O"])
    with pytest.raises(FspkdError, match="unknown suffix ':output'"):
        FeatureTaps(model, ["layer1:output"])


def test_remove_stops_recording_and_clear_drops_tensors():
    net = small_net()
    taps = FeatureTaps(net, ["0", "0"])  # a repeated tap is registered once
    assert taps.taps == ("0",)
    net(torch.randn(1, 3, 8, 8))
    assert set(taps.features) == {"0"}
    taps.clear()
    assert taps.features == {}
    taps.remove()
    net(torch.randn(1, 3, 8, 8))
    assert taps.features == {}
    assert not net[0]._forward_hooks
    taps.remove()  # twice is harmless


def test_each_forward_overwrites_the_previous_tensors():
    net = small_net()
    with FeatureTaps(net, ["1"]) as taps:
        net(torch.zeros(1, 3, 8, 8))
        x = torch.randn(1, 3, 8, 8)
        net(x)
        torch.testing.assert_close(taps.features["1"], torch.relu(net[0](x)))


def test_parse_tap():
    assert parse_tap("layer1.2") == ("layer1.2", False)
    assert parse_tap("layer2.0:input") == ("layer2.0", True)
