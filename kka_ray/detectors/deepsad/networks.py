"""Bias-free LeNet-style encoders and mirrored decoders (Deep SVDD's rule: no bias, no affine BN).

Presets follow the Deep SAD reference: `lenet28` (Fashion-MNIST/MNIST), `lenet32` (CIFAR),
and `conv64` as the path for larger images (one more pooling stage per doubling).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class NetSpec:
    in_channels: int
    image_size: int
    channels: tuple[int, ...]
    hidden: int | None
    rep_dim: int

    @property
    def bottom(self) -> int:
        return self.image_size // 2 ** len(self.channels)


PRESETS = {
    "lenet28": dict(channels=(16, 32), hidden=128, rep_dim=64),
    "lenet32": dict(channels=(32, 64, 128), hidden=None, rep_dim=128),
    "conv64": dict(channels=(32, 64, 128, 128), hidden=None, rep_dim=128),
}


def net_spec(preset: str, in_channels: int, image_size: int, rep_dim: int | None = None) -> NetSpec:
    if preset == "auto":
        preset = "lenet28" if image_size <= 28 else "lenet32" if image_size <= 32 else "conv64"
    if preset not in PRESETS:
        raise ValueError(f"unknown Deep SAD net {preset!r}; presets: auto, {', '.join(PRESETS)}")
    p = PRESETS[preset]
    spec = NetSpec(in_channels, image_size, p["channels"], p["hidden"], rep_dim or p["rep_dim"])
    if image_size % 2 ** len(spec.channels):
        raise ValueError(f"net {preset}: image size {image_size} is not divisible by {2 ** len(spec.channels)}")
    return spec


def _bn(n: int, dims: int) -> nn.Module:
    return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(n, eps=1e-4, affine=False)


class Encoder(nn.Module):
    """conv5 -> BN -> leaky ReLU -> 2x2 max-pool per stage, then bias-free linear layer(s)."""

    def __init__(self, spec: NetSpec):
        super().__init__()
        self.spec = spec
        chans = (spec.in_channels, *spec.channels)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 5, padding=2, bias=False) for a, b in pairwise(chans))
        self.bns = nn.ModuleList(_bn(c, 2) for c in spec.channels)
        flat = spec.channels[-1] * spec.bottom**2
        if spec.hidden:
            self.fc_hidden = nn.Linear(flat, spec.hidden, bias=False)
            self.bn_hidden = _bn(spec.hidden, 1)
        self.fc = nn.Linear(spec.hidden or flat, spec.rep_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, bn in zip(self.convs, self.bns, strict=True):
            x = F.max_pool2d(F.leaky_relu(bn(conv(x))), 2)
        x = x.flatten(1)
        if self.spec.hidden:
            x = F.leaky_relu(self.bn_hidden(self.fc_hidden(x)))
        return self.fc(x)


class Decoder(nn.Module):
    """Mirror of the encoder: linear -> (upsample x2 -> conv5 -> BN -> leaky ReLU)* -> sigmoid."""

    def __init__(self, spec: NetSpec):
        super().__init__()
        self.spec = spec
        top = spec.channels[-1]
        self.fc = nn.Linear(spec.rep_dim, top * spec.bottom**2, bias=False)
        self.bn_fc = _bn(top * spec.bottom**2, 1)
        chans = (*reversed(spec.channels), spec.in_channels)
        self.deconvs = nn.ModuleList(
            nn.Conv2d(a, b, 5, padding=2, bias=False) for a, b in pairwise(chans)
        )
        self.bns = nn.ModuleList(_bn(c, 2) for c in chans[1:-1])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        s = self.spec
        x = F.leaky_relu(self.bn_fc(self.fc(z))).view(-1, s.channels[-1], s.bottom, s.bottom)
        for i, deconv in enumerate(self.deconvs):
            x = deconv(F.interpolate(x, scale_factor=2))
            if i < len(self.bns):
                x = F.leaky_relu(self.bns[i](x))
        return torch.sigmoid(x)


class AutoEncoder(nn.Module):
    def __init__(self, spec: NetSpec):
        super().__init__()
        self.encoder = Encoder(spec)
        self.decoder = Decoder(spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
