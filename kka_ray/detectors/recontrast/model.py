"""ReContrast's plain torch parts: two encoders (E trainable, E_f a frozen copy), a bottleneck that fuses their
levels, a decoder with two output heads per level, the global cosine loss with hard-point gradient shrinking,
and the anomaly map."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Bottleneck(nn.Module):
    """Every level is brought to the coarsest level's grid by stride-2 convolutions, concatenated on channels,
    and one residual stage with stride 2 makes the embedding the decoder starts from (RD4AD's one-class
    embedding)."""

    def __init__(self, channels: list[int], steps: list[int], out: int):
        super().__init__()
        self.down = nn.ModuleList()
        for c, n in zip(channels, steps, strict=True):
            layers, width = [], c
            for _ in range(n):
                layers.append(conv_bn_relu(width, channels[-1], stride=2))
                width = channels[-1]
            self.down.append(nn.Sequential(*layers))
        fused = sum(c if n == 0 else channels[-1] for c, n in zip(channels, steps, strict=True))
        self.body = nn.Sequential(conv_bn_relu(fused, out, stride=2), nn.Conv2d(out, out, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(out))
        self.skip = nn.Sequential(nn.Conv2d(fused, out, 1, 2, bias=False), nn.BatchNorm2d(out))

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        size = levels[-1].shape[-2:]
        parts = []
        for down, level in zip(self.down, levels, strict=True):
            y = down(level)
            parts.append(y if y.shape[-2:] == size else F.interpolate(y, size=size, mode="bilinear",
                                                                       align_corners=False))
        x = torch.cat(parts, dim=1)
        return F.relu(self.body(x) + self.skip(x))


class Decoder(nn.Module):
    """Coarse to fine: each stage upsamples to its level's grid (bilinear; odd grids make transposed
    convolutions miss by one) and refines with two 3x3 convolutions; every level has two 1x1 output heads, one
    per encoder."""

    def __init__(self, channels: list[int], bottleneck: int):
        super().__init__()
        widths = list(reversed(channels))
        ins = [bottleneck] + widths[:-1]
        self.stages = nn.ModuleList(nn.Sequential(conv_bn_relu(i, w), conv_bn_relu(w, w)) for i, w in
                                    zip(ins, widths, strict=True))
        self.heads = nn.ModuleList(nn.ModuleList([nn.Conv2d(w, w, 1), nn.Conv2d(w, w, 1)]) for w in widths)

    def forward(self, x: torch.Tensor, sizes: list[torch.Size], split: int) -> tuple[list, list]:
        """Decoded levels (fine to coarse order, as the encoders give them) for the first `split` rows through
        head 0 and for the rest through head 1."""
        first, second = [], []
        for stage, heads, size in zip(self.stages, self.heads, reversed(sizes), strict=True):
            x = stage(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
            first.append(heads[0](x[:split]))
            second.append(heads[1](x[split:]))
        return first[::-1], second[::-1]


class ReContrastNet(nn.Module):
    """`forward(x)` -> (z, z_f, y_t, y_f): the trainable and the frozen encoder's levels, the reconstruction of
    z_f decoded from E's levels (head 0), and of z decoded from E_f's levels (head 1)."""

    def __init__(self, encoder: nn.Module, channels: list[int], steps: list[int], bottleneck: int,
                 encoder_bn_train: bool):
        super().__init__()
        self.encoder = encoder
        self.frozen = copy.deepcopy(encoder).requires_grad_(False).eval()
        self.bottleneck = Bottleneck(channels, steps, bottleneck)
        self.decoder = Decoder(channels, bottleneck)
        self.encoder_bn_train = encoder_bn_train

    def train(self, mode: bool = True):
        super().train(mode)
        self.frozen.eval()  # E_f never changes, not even its batch-norm statistics
        if mode and not self.encoder_bn_train:  # a pretrained E keeps its ImageNet statistics (small batches)
            for m in self.encoder.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor):
        z = self.encoder(x)
        with torch.no_grad():
            z_f = self.frozen(x)
        fused = self.bottleneck([torch.cat([a, b]) for a, b in zip(z, z_f, strict=True)])
        y_t, y_f = self.decoder(fused, [a.shape[-2:] for a in z], split=len(x))
        return z, z_f, y_t, y_f


def image_distance(targets: list[torch.Tensor], recons: list[torch.Tensor]) -> torch.Tensor:
    """Per image, 1 - cosine of each flattened (target, reconstruction) level, averaged over levels; targets
    carry no gradient."""
    return torch.stack([1 - F.cosine_similarity(t.detach().flatten(1), r.flatten(1), dim=1)
                        for t, r in zip(targets, recons, strict=True)]).mean(0)


def shrink_easy_points(targets: list[torch.Tensor], recons: list[torch.Tensor], alpha: float,
                       factor: float) -> None:
    """Hard-point mining: the gradient reaching a reconstruction at points already restored well (channel
    cosine distance below mean + alpha * sd over the batch) is multiplied by `factor`."""
    for t, r in zip(targets, recons, strict=True):
        if not r.requires_grad:
            continue
        with torch.no_grad():
            d = 1 - F.cosine_similarity(t, r, dim=1)
            keep = (d >= d.mean() + alpha * d.std()).unsqueeze(1)
            scale = torch.where(keep, 1.0, factor)
        r.register_hook(lambda g, s=scale: g * s)


def alpha_at(step: int, steps: int, warmup: float = 0.1) -> float:
    """alpha rises linearly from -3 to 1 over the first `warmup` share of the steps, then stays at 1."""
    ramp = max(1, int(steps * warmup))
    return -3 + 4 * min(1.0, step / ramp)


def recontrast_loss(z, z_f, y_t, y_f, n_normal: int, *, alpha: float, factor: float, margin: float,
                    anomaly_weight: float) -> tuple[torch.Tensor, dict]:
    """Rows [:n_normal] are normals: half the global cosine loss for each direction (y_t restores z_f, y_f
    restores z) with hard-point mining. Rows after them are given anomalies: a hinge that keeps each one's
    distance at least `margin` above the normals' current mean."""
    def part(levels, rows):
        return [x[rows] for x in levels]

    normal, anomaly = slice(0, n_normal), slice(n_normal, None)
    pairs = [(part(z_f, normal), part(y_t, normal)), (part(z, normal), part(y_f, normal))]
    for targets, recons in pairs:
        shrink_easy_points(targets, recons, alpha, factor)
    d_normal = torch.stack([image_distance(t, r) for t, r in pairs]).mean(0)
    loss = d_normal.mean()
    stats = {"normal_distance": d_normal.mean().item()}
    if len(z[0]) > n_normal:
        d_anomaly = torch.stack([image_distance(part(z_f, anomaly), part(y_t, anomaly)),
                                 image_distance(part(z, anomaly), part(y_f, anomaly))]).mean(0)
        loss = loss + anomaly_weight * F.relu(d_normal.mean().detach() + margin - d_anomaly).mean()
        stats["anomaly_distance"] = d_anomaly.mean().item()
    return loss, stats


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=x.dtype) / sigma) ** 2)
    k = (k / k.sum()).to(x.device)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1))


@torch.no_grad()
def anomaly_scores(net: ReContrastNet, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Image score: the maximum of the summed, upsampled and blurred channel-cosine-distance maps of both
    directions at every level."""
    z, z_f, y_t, y_f = net(x)
    size = x.shape[-2:]
    total = torch.zeros(len(x), 1, *size, device=x.device)
    for t, r in [*zip(z_f, y_t, strict=True), *zip(z, y_f, strict=True)]:
        m = (1 - F.cosine_similarity(t, r, dim=1)).unsqueeze(1)
        total += F.interpolate(m, size=size, mode="bilinear", align_corners=True)
    return gaussian_blur(total, sigma).flatten(1).amax(1)
