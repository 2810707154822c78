"""The one-class protocol: a dataset, its normal class(es) and a seed become train/val/test splits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from kka_ray.data.base import ImageDataset, ImageSet


@dataclass(frozen=True)
class OneClassTask:
    """Train normals (minus validation), validation normals (KKA's Eq. 6) and the labelled test split.

    The anomaly classes' training images are held privately and reach training only through
    `oracle_anomalies`, the explicit upper-bound mode.
    """

    dataset: str
    normal_classes: tuple[str, ...]
    seed: int
    domain: str
    train_normal: ImageSet
    val_normal: ImageSet
    test: ImageSet
    test_targets: np.ndarray  # 1 = anomaly, 0 = normal
    _train_anomalies: ImageSet = field(repr=False)

    @property
    def name(self) -> str:
        return f"{self.dataset}/{'+'.join(self.normal_classes)}/seed{self.seed}"

    def oracle_anomalies(self, n: int, seed: int | None = None) -> ImageSet:
        """`n` real anomalies drawn from the other classes' *training* split (upper bound only)."""
        pool = self._train_anomalies
        rng = np.random.default_rng(self.seed if seed is None else seed)
        idx = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
        return pool.subset(np.sort(idx))


def resolve_classes(requested: Sequence[str | int], class_names: Sequence[str], dataset: str) -> list[int]:
    """Class names or indices -> indices, with an error that lists the valid names."""
    out = []
    for c in requested:
        if isinstance(c, int) or (isinstance(c, str) and c.isdigit() and c not in class_names):
            i = int(c)
            if not 0 <= i < len(class_names):
                raise ValueError(f"{dataset}: normal class index {i} out of range 0..{len(class_names) - 1}")
        elif c in class_names:
            i = list(class_names).index(c)
        else:
            raise ValueError(f"{dataset}: unknown normal class {c!r}; classes: {', '.join(class_names)}")
        out.append(i)
    if not out:
        raise ValueError(f"{dataset}: a task needs at least one normal class")
    return sorted(set(out))


def make_task(
    dataset: ImageDataset,
    dataset_name: str,
    normal_classes: Sequence[str | int],
    seed: int = 0,
    val_fraction: float = 0.1,
) -> OneClassTask:
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    train, test = dataset.load("train"), dataset.load("test")
    normal = resolve_classes(normal_classes, train.class_names, dataset_name)
    is_normal = np.isin(train.labels, normal)
    normal_idx = np.flatnonzero(is_normal)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(normal_idx)
    n_val = max(1, int(round(val_fraction * len(perm))))
    val_idx, fit_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return OneClassTask(
        dataset=dataset_name,
        normal_classes=tuple(train.class_names[i] for i in normal),
        seed=seed,
        domain=dataset.domain,
        train_normal=train.subset(fit_idx),
        val_normal=train.subset(val_idx),
        test=test,
        test_targets=(~np.isin(test.labels, normal)).astype(np.int64),
        _train_anomalies=train.subset(np.flatnonzero(~is_normal)),
    )
