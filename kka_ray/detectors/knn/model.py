"""The plain computations of the kNN detector: k-nearest-neighbour distances and a linear head."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler


def knn_distance(query: np.ndarray, bank: np.ndarray, k: int, *, exclude_self: bool = False,
                 chunk: int = 2048) -> np.ndarray:
    """Mean Euclidean distance from each query row to its k nearest rows of `bank`. `exclude_self`: the query
    is the bank itself, and each row's zero distance to itself is left out (leave-one-out scores of the
    training normals)."""
    if len(bank) < k + exclude_self:
        raise ValueError(f"kNN with k = {k} needs at least {k + exclude_self} training rows, got {len(bank)}")
    b = torch.from_numpy(np.ascontiguousarray(bank, dtype=np.float32))
    out = []
    for i in range(0, len(query), chunk):
        q = torch.from_numpy(np.ascontiguousarray(query[i:i + chunk], dtype=np.float32))
        d = torch.cdist(q, b)
        if exclude_self:
            d[torch.arange(len(q)), torch.arange(i, i + len(q))] = float("inf")
        out.append(d.topk(k, dim=1, largest=False).values.mean(1))
    return torch.cat(out).numpy().astype(np.float64)


class AnomalyHead:
    """Logistic regression on standardised features, normals (0) against given anomalies (1), classes weighted
    equally: its logit says how much an image looks like the anomalies rather than the normals."""

    def __init__(self, c: float, seed: int):
        self.scaler = StandardScaler()
        self.model = LogisticRegression(C=c, class_weight="balanced", max_iter=2000, random_state=seed)

    def fit(self, normals: np.ndarray, anomalies: np.ndarray) -> AnomalyHead:
        x = self.scaler.fit_transform(np.concatenate([normals, anomalies]))
        y = np.r_[np.zeros(len(normals)), np.ones(len(anomalies))]
        self.model.fit(x, y)
        return self

    def logit(self, features: np.ndarray) -> np.ndarray:
        return self.model.decision_function(self.scaler.transform(features))


def standardiser(reference: np.ndarray):
    """z-scores with the mean and sd of `reference` (scores of the training normals)."""
    mean, sd = float(np.mean(reference)), float(np.std(reference)) or 1.0
    return lambda s: (s - mean) / sd


def combine(z_knn: np.ndarray, z_head: np.ndarray, mode: str) -> np.ndarray:
    """The kNN and head scores, both standardised on the training normals. On anomalies the head's scale is not
    the normals': fitted to generated anomalies it separates trivially, its logits for real ones spread far wider
    than kNN's, many far below the normals'. `sum` lets that tail drag real anomalies under the normals;
    `one_sided` counts the head only as evidence for an anomaly (record knn-combine-mnist compares the two)."""
    return z_knn + (np.maximum(z_head, 0.0) if mode == "one_sided" else z_head)
