"""SSD's plain parts: the encoder with its projection head, SimCLR views, the NT-Xent loss, and Mahalanobis
scoring over clusters of normal features."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.covariance import LedoitWolf
from torch import nn


class ContrastiveNet(nn.Module):
    """Backbone -> global average pool (h, the feature SSD scores) -> MLP projection head (z, trained on)."""

    def __init__(self, backbone: nn.Module, dim: int, proj_dim: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, proj_dim))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m.mean(dim=(2, 3)) for m in self.backbone(x)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.features(x)), dim=1)


def views(x: torch.Tensor, gen: torch.Generator, *, min_scale: float = 0.2, jitter: float = 0.4,
          jitter_p: float = 0.8) -> torch.Tensor:
    """One random view per image in [0, 1] (N,C,H,W): a resized crop of 20-100% of the area (aspect 3/4-4/3), a
    horizontal flip with p 0.5, brightness and contrast jitter with p 0.8 (SimCLR's for grey images; hue,
    saturation and greyscale are left out so that grey and colour images get the same views)."""
    n = len(x)

    def uniform(lo, hi, size=(n,)):
        return lo + (hi - lo) * torch.rand(size, generator=gen)

    area = uniform(min_scale, 1.0)
    ratio = torch.exp(uniform(np.log(3 / 4), np.log(4 / 3)))
    sw, sh = torch.sqrt(area * ratio).clamp(max=1), torch.sqrt(area / ratio).clamp(max=1)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    tx, ty = uniform(-1, 1) * (1 - sw), uniform(-1, 1) * (1 - sh)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sw * flip, tx, sh, ty
    out = F.grid_sample(x, F.affine_grid(theta.to(x), list(x.shape), align_corners=False), mode="bilinear",
                        padding_mode="reflection", align_corners=False)
    apply = (torch.rand(n, generator=gen) < jitter_p).to(x).view(n, 1, 1, 1)
    bright = uniform(1 - jitter, 1 + jitter).to(x).view(n, 1, 1, 1)
    contrast = uniform(1 - jitter, 1 + jitter).to(x).view(n, 1, 1, 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    jittered = ((out * bright - mean * bright) * contrast + mean * bright).clamp(0, 1)
    return apply * jittered + (1 - apply) * out


def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss over 2B L2-normalised projections, rows i and i + B being two views of one image."""
    b = len(z) // 2
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
    return F.cross_entropy(sim, target)


class Standardiser:
    """L2-normalise, then standardise with the training normals' mean and sd (SSD's feature preprocessing)."""

    def __init__(self, train: np.ndarray):
        unit = self._unit(train)
        self.mean, self.sd = unit.mean(0), unit.std(0) + 1e-8

    @staticmethod
    def _unit(h: np.ndarray) -> np.ndarray:
        return h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)

    def __call__(self, h: np.ndarray) -> np.ndarray:
        return (self._unit(h) - self.mean) / self.sd


class Gaussians:
    """Ledoit-Wolf Gaussians of k-means clusters; `distance` is the smallest squared Mahalanobis distance."""

    def __init__(self, x: np.ndarray, clusters: int, seed: int):
        if len(x) < 2 * clusters:
            raise ValueError(f"{clusters} clusters need at least {2 * clusters} rows, got {len(x)}")
        labels = (KMeans(clusters, n_init=10, random_state=seed).fit_predict(x) if clusters > 1
                  else np.zeros(len(x), int))
        self.parts = []
        for c in range(clusters):
            fit = LedoitWolf().fit(x[labels == c])
            self.parts.append((fit.location_, fit.precision_))

    def distance(self, x: np.ndarray) -> np.ndarray:
        d = [np.einsum("nd,de,ne->n", x - mu, prec, x - mu) for mu, prec in self.parts]
        return np.min(d, axis=0)
