"""Deep SAD's objective and centre (Ruff et al. 2020, Eq. 3)."""

from __future__ import annotations

import torch

NORMAL, UNLABELLED, ANOMALY = 1, 0, -1


def squared_distance(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return ((z - c) ** 2).sum(dim=1)


def deep_sad_loss(dist: torch.Tensor, semi_target: torch.Tensor, eta: float, eps: float) -> torch.Tensor:
    """Unlabelled: d. Labelled normal (+1): eta * d. Labelled anomaly (-1): eta / (d + eps)."""
    labelled = eta * (dist + eps) ** semi_target.to(dist.dtype)
    return torch.where(semi_target == UNLABELLED, dist, labelled).mean()


def fix_center(c: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """Push entries near zero to +-eps: a zero coordinate is trivially matched by zero weights."""
    c = c.clone()
    c[(c.abs() < eps) & (c < 0)] = -eps
    c[(c.abs() < eps) & (c >= 0)] = eps
    return c
