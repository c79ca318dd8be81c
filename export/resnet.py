"""ResNet-50/101 bottleneck trunk up to ``layer3`` (res4), with torchvision's parameter names.

The module tree (``conv1``, ``bn1``, ``relu``, ``maxpool``, ``layer1`` .. ``layer3``, blocks with
``conv1..3``, ``bn1..3``, ``downsample.0/1``) reproduces torchvision's ``resnet50``/``resnet101``
exactly, so a torchvision-derived ``state_dict`` (minus ``layer4``; tiny-faces-pytorch's
``fc``, which it keeps but never runs, is left out by ``export.weights``) loads unchanged.

Two Caffe-isms of the authors' MatConvNet network (imported from the original Caffe ResNet)
are switchable:

* ``stride_in_1x1=True``: the stride-2 step of ``layer2.0``/``layer3.0`` sits on the first 1x1
  convolution (``branch2a``), not on the 3x3 one (torchvision "v1.5").
* ``ceil_pool=True``: ``pool1`` is a 3x3/2 max pool without padding in Caffe's ceil mode.
  MatConvNet's Caffe importer writes it as pad ``[0 1 0 1]`` (bottom/right only); both give
  ``floor(a / 2)`` rows for ``a`` input rows and the same values. torchvision pads 1 on every
  side (``ceil(a / 2)`` rows, windows centred one input row earlier).
"""

from __future__ import annotations

import torch
from torch import nn

#: Bottleneck blocks per stage (layer1, layer2, layer3) for the supported depths.
BLOCKS_PER_STAGE: dict[int, tuple[int, int, int]] = {50: (3, 4, 6), 101: (3, 4, 23)}
#: Output channels of the trunk's two taps: res3 (layer2) and res4 (layer3).
RES3_CHANNELS = 512
RES4_CHANNELS = 1024
EXPANSION = 4


def stage_blocks(depth: int) -> tuple[int, int, int]:
    """Blocks in layer1..layer3 for ``depth`` (50 or 101); ValueError otherwise."""
    try:
        return BLOCKS_PER_STAGE[depth]
    except KeyError:
        raise ValueError(f"unsupported ResNet depth {depth}; expected one of "
                         f"{sorted(BLOCKS_PER_STAGE)}") from None


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 bottleneck with identity or projection shortcut (torchvision names)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, stride_in_1x1: bool = False) -> None:
        super().__init__()
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, stride=s1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=s3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * EXPANSION, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * EXPANSION)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetTrunk(nn.Module):
    """ResNet stem + layer1..layer3; ``forward(x)`` returns ``(res3, res4)``.

    Args:
        depth: 50 or 101.
        stride_in_1x1: put the stride on the first 1x1 conv of a downsampling block (Caffe /
            MatConvNet) instead of on the 3x3 conv (torchvision).
        ceil_pool: Caffe ceil-mode ``pool1`` without padding (MatConvNet) instead of
            torchvision's padded pool.

    Shapes for an (N, 3, H, W) input with the torchvision layout: res3 is
    (N, 512, ceil(H/8), ceil(W/8)), res4 is (N, 1024, ceil(H/16), ceil(W/16)).
    With ``ceil_pool`` the pooled size is ``floor(ceil(H/2)/2)`` instead of ``ceil(H/4)``.
    """

    def __init__(self, depth: int = 101, stride_in_1x1: bool = False,
                 ceil_pool: bool = False) -> None:
        super().__init__()
        blocks = stage_blocks(depth)
        self.depth = depth
        self.stride_in_1x1 = stride_in_1x1
        self.ceil_pool = ceil_pool
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        if ceil_pool:
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=0, ceil_mode=True)
        else:
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, blocks[0], stride=1)
        self.layer2 = self._make_layer(128, blocks[1], stride=2)
        self.layer3 = self._make_layer(256, blocks[2], stride=2)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * EXPANSION:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * EXPANSION, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * EXPANSION),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, self.stride_in_1x1)]
        self.inplanes = planes * EXPANSION
        layers += [Bottleneck(self.inplanes, planes, stride_in_1x1=self.stride_in_1x1)
                   for _ in range(1, num_blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        res3 = self.layer2(self.layer1(x))
        res4 = self.layer3(res3)
        return res3, res4
