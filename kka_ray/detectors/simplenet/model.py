"""SimpleNet's plain torch parts: patch features from backbone maps (fixed, no parameters), the feature adaptor,
the discriminator and the truncated-L1 loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def patch_features(maps: list[torch.Tensor], patch: int, pre_dim: int, dim: int) -> torch.Tensor:
    """(N, P, dim) patch features on the finest map's grid: each level's patch x patch neighbourhoods, coarser
    levels upsampled bilinearly to the finest grid, each level pooled to `pre_dim`, then the levels pooled
    together to `dim` (adaptive average pooling throughout, as SimpleNet's preprocessing and aggregator)."""
    n, _, h, w = maps[0].shape
    levels = []
    for m in maps:
        c, mh, mw = m.shape[1:]
        u = F.unfold(m, kernel_size=patch, padding=patch // 2)  # (N, C*p*p, mh*mw)
        if (mh, mw) != (h, w):
            u = F.interpolate(u.view(n, -1, mh, mw), size=(h, w), mode="bilinear", align_corners=False)
        u = u.reshape(n, c * patch * patch, h * w).transpose(1, 2).reshape(-1, 1, c * patch * patch)
        levels.append(F.adaptive_avg_pool1d(u, pre_dim))  # (N*P, 1, pre_dim)
    stacked = torch.cat(levels, dim=1).reshape(-1, 1, len(maps) * pre_dim)
    return F.adaptive_avg_pool1d(stacked, dim).reshape(n, h * w, dim)


def _xavier(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)


def feature_stats(f: torch.Tensor, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and standard deviation of (N, P, D) patch features over every patch, accumulated in
    float64 a chunk of images at a time (the cache is float16 and too large to copy in fp32 at once)."""
    dim = f.shape[2]
    total, square, count = torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dtype=torch.float64), 0
    for i in range(0, len(f), chunk):
        x = f[i:i + chunk].reshape(-1, dim).double()
        total, square, count = total + x.sum(0), square + (x * x).sum(0), count + len(x)
    mean = total / count
    std = (square / count - mean * mean).clamp_min(0).sqrt()
    return mean.float(), std.float().clamp_min(1e-6)


class SimpleNetHead(nn.Module):
    """Adaptor G (one linear layer) and discriminator D (linear, batch norm, leaky ReLU, linear to one logit).
    G sees the features standardised by the training normals' per-dimension mean and std (buffers saved with
    the weights), so the fakes' noise is on a known scale whatever the backbone's.
    `forward(f, noise, f_anomaly)` scores, in one pass so batch norm sees them together: G(f) (normal),
    G(f) + noise (SimpleNet's fakes) and G(f_anomaly) (given anomalies, no noise)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.adaptor = nn.Linear(dim, dim)
        self.discriminator = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.2),
                                           nn.Linear(hidden, 1, bias=False))
        _xavier(self)

    def adapt(self, f: torch.Tensor) -> torch.Tensor:
        """G(f) of raw patch features."""
        return self.adaptor((f - self.mean) / self.std)

    def forward(self, f: torch.Tensor, noise: torch.Tensor, f_anomaly: torch.Tensor) -> torch.Tensor:
        q = self.adapt(f)
        return self.discriminator(torch.cat([q, q + noise, self.adapt(f_anomaly)])).squeeze(1)

    @torch.no_grad()
    def patch_scores(self, f: torch.Tensor) -> torch.Tensor:
        """-D(G(f)) per patch row (eval mode: batch norm uses its running statistics)."""
        return -self.discriminator(self.adapt(f)).squeeze(1)


def simplenet_loss(d: torch.Tensor, n_normal: int, threshold: float, anomaly_weight: float) -> torch.Tensor:
    """Truncated L1 on D's outputs laid out as [normal (n), fakes (n), anomalies (rest)]: normal patches are
    pushed to D >= threshold, fakes and anomalies to D <= -threshold; past its margin a patch adds nothing."""
    normal, fake, anomaly = d[:n_normal], d[n_normal:2 * n_normal], d[2 * n_normal:]
    loss = F.relu(threshold - normal).mean() + F.relu(threshold + fake).mean()
    if len(anomaly):
        loss = loss + anomaly_weight * F.relu(threshold + anomaly).mean()
    return loss
