"""Backbones: images (n, C, H, W) -> feature maps (n, out_channels, h, w).

The pooling, the projection head, the BNNeck and the part branch that sit on a backbone's map
are in ``retrieval.train.network``.

``small-cnn``: four conv blocks and one 2×2 max pool, for small images (8×8 digits up to ~64×64).
``resnet``: a ResNet with basic blocks, depth 10/18/34 and base width configurable, last
stride 1 (as in the strong re-ID baseline). Its parameter names follow the common ResNet
naming (conv1, bn1, layer1..4, downsample.0/1), so a user's state-dict file of a ResNet-18/34
of width 64 loads into it (the classifier "fc.*" entries are ignored).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

RESNET_BLOCKS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """conv-conv-pool-conv-conv for small images; returns the (4·width, H/2, W/2) feature map."""

    def __init__(self, in_channels: int = 1, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_relu(in_channels, width),
            conv_bn_relu(width, 2 * width),
            nn.MaxPool2d(2),
            conv_bn_relu(2 * width, 4 * width),
            conv_bn_relu(4 * width, 4 * width),
        )
        self.out_channels = 4 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet(nn.Module):
    """Stem (7×7 stride 2 + max pool), four stages of basic blocks; returns the layer4 feature map."""

    def __init__(self, depth: int = 18, width: int = 64, in_channels: int = 3, last_stride: int = 1):
        super().__init__()
        if depth not in RESNET_BLOCKS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_BLOCKS)} (got {depth})")
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        channels, cin = [width, 2 * width, 4 * width, 8 * width], width
        strides = [1, 2, 2, last_stride]
        for i, (blocks, cout, stride) in enumerate(zip(RESNET_BLOCKS[depth], channels, strides), start=1):
            layers = [BasicBlock(cin, cout, stride)] + [BasicBlock(cout, cout, 1) for _ in range(blocks - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*layers))
            cin = cout
        self.out_channels = 8 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def build_backbone(name: str, in_channels: int, depth: int | None = None, width: int | None = None) -> nn.Module:
    if name == "small-cnn":
        return SmallCNN(in_channels, width or 32)
    if name == "resnet":
        return ResNet(depth or 18, width or 64, in_channels)
    raise ValueError(f"unknown backbone {name!r}; choose small-cnn or resnet")


def load_backbone_weights(backbone: nn.Module, path: Path | str) -> dict[str, list[str]]:
    """Load a user's state-dict file into the backbone; shapes must agree for every shared key.

    Returns {"missing": [...], "ignored": [...]} key lists so the caller can report them.
    Raises ValueError when nothing matches or a shape disagrees.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
    own = backbone.state_dict()
    shared = [k for k in state if k in own]
    if not shared:
        raise ValueError(f"{path}: none of its {len(state)} parameter names match the backbone")
    for key in shared:
        if tuple(state[key].shape) != tuple(own[key].shape):
            raise ValueError(f"{path}: parameter {key} has shape {tuple(state[key].shape)}, the backbone needs {tuple(own[key].shape)}")
    backbone.load_state_dict({k: state[k] for k in shared}, strict=False)
    return {"missing": sorted(set(own) - set(shared)), "ignored": sorted(set(state) - set(own))}
