"""The CIFAR residual nets of He et al. used by Usama & Chang: ResNet-20, PreResNet-20 (CIFAR-10)
and PreResNet-32 (STL-10), in the standard layout (configs.md section 4): a 3x3 stem conv with 16
channels, three stages of n basic blocks (two 3x3 convs each) at 16, 32 and 64 channels, stride 2
at the first block of stages 2 and 3, global average pooling and a linear classifier; n = 3 for
depth 20, 5 for depth 32. ResNet blocks are conv-BN-ReLU (He et al. 2016a); PreResNet blocks are
BN-ReLU-conv ("identity mappings", He et al. 2016b). Shortcuts that change shape are parameter-free
("option A": stride-2 subsampling and zero channels), as in He et al.'s CIFAR nets.

Use via :mod:`lipcore.models` (``residual_net("resnet20")``, ...)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

DEPTHS = {"resnet20": (False, 3), "preresnet20": (True, 3), "preresnet32": (True, 5)}


class _Shortcut(nn.Module):
    """Identity, or option A: subsample by ``stride`` and pad the new channels with zeros."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.stride, self.pad = stride, c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        return F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, 0, self.pad))


class BasicBlock(nn.Module):
    """Two 3x3 convs with a shortcut; ``pre_activation`` selects the PreResNet ordering."""

    def __init__(self, c_in: int, c_out: int, stride: int, pre_activation: bool):
        super().__init__()
        self.pre = pre_activation
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_in if pre_activation else c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = _Shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre:
            out = self.conv1(F.relu(self.bn1(x)))
            return self.conv2(F.relu(self.bn2(out))) + self.shortcut(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR residual net (module docstring) for ``channels``-channel images."""

    def __init__(self, blocks_per_stage: int, pre_activation: bool, classes: int = 10,
                 channels: int = 3):
        super().__init__()
        self.pre = pre_activation
        self.stem = nn.Conv2d(channels, 16, 3, 1, 1, bias=False)
        self.stem_bn = None if pre_activation else nn.BatchNorm2d(16)
        layers, c_in = [], 16
        for stage, width in enumerate((16, 32, 64)):
            for b in range(blocks_per_stage):
                stride = 2 if stage > 0 and b == 0 else 1
                layers.append(BasicBlock(c_in, width, stride, pre_activation))
                c_in = width
        self.blocks = nn.Sequential(*layers)
        self.final_bn = nn.BatchNorm2d(64) if pre_activation else None
        self.fc = nn.Linear(64, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem(x)
        if self.stem_bn is not None:
            out = F.relu(self.stem_bn(out))
        out = self.blocks(out)
        if self.final_bn is not None:
            out = F.relu(self.final_bn(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def residual_net(name: str, classes: int = 10, channels: int = 3, seed: int | None = None
                 ) -> CifarResNet:
    """``"resnet20"``, ``"preresnet20"`` or ``"preresnet32"`` (module docstring)."""
    if name not in DEPTHS:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(DEPTHS)}")
    pre, blocks = DEPTHS[name]
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return CifarResNet(blocks, pre, classes, channels)
