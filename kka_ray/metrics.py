"""AUROC and confidence intervals over tasks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score


def auroc(targets: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve with anomalies as the positive class (1) and higher score = more anomalous."""
    targets = np.asarray(targets)
    if len(np.unique(targets)) != 2:
        raise ValueError("AUROC needs both normal (0) and anomalous (1) targets")
    if not np.all(np.isfinite(scores)):
        raise ValueError("AUROC: scores contain NaN or infinity")
    return float(roc_auc_score(targets, scores))


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval (NaN half-width for one value)."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        raise ValueError("mean_ci of no values")
    if len(v) == 1:
        return float(v[0]), float("nan")
    sem = v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean()), float(stats.t.ppf((1 + level) / 2, len(v) - 1) * sem)
