"""Small look-alikes of other libraries' CNN layouts, for the tests of automatic FSP sections and the Distiller.

Neither declares FSP sections: ``TorchvisionLikeResNet`` has torchvision's names (conv1, bn1, relu, maxpool,
layer1..4 of blocks, avgpool, fc), ``TimmLikeNet`` timm's (stem, stages.N each with a downsample and blocks, head).
"""

import torch
from torch import nn


class Block(nn.Module):
    """A residual block (torchvision's BasicBlock in spirit), with a 1x1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchvisionLikeResNet(nn.Module):
    def __init__(self, widths=(8, 16, 32, 64), blocks=2, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = widths[0]
        for index, width in enumerate(widths):
            layer = [Block(cin if i == 0 else width, width, 1 if index == 0 or i else 2) for i in range(blocks)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*layer))
            cin = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class Stage(nn.Module):
    """A timm-style stage: a down-sampling module, then blocks in ``blocks``."""

    def __init__(self, cin: int, cout: int, stride: int, depth: int):
        super().__init__()
        self.downsample = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 2 if stride == 2 else 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.blocks = nn.Sequential(*[Block(cout, cout) for _ in range(depth)])

    def forward(self, x):
        return self.blocks(self.downsample(x))


class Head(nn.Module):
    def __init__(self, cin: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(x.mean((2, 3)))


class TimmLikeNet(nn.Module):
    def __init__(self, widths=(8, 16, 32), depth=2, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        self.stages = nn.Sequential(*[Stage(widths[max(i - 1, 0)], w, 1 if i == 0 else 2, depth)
                                      for i, w in enumerate(widths)])
        self.head = Head(widths[-1], num_classes)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))
