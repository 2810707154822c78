"""Stage 1 (Eq. 1-2): per k-means cluster of phi features, the description of the most central normal."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field
from sklearn.cluster import KMeans
from sklearn.covariance import OAS, LedoitWolf

from kka_ray.config import Strict
from kka_ray.data.attributes import attribute_descriptions
from kka_ray.data.base import ImageSet
from kka_ray.features import FeatureConfig, embed

# Shrinkage, because a raw covariance of ~1000-d features from tens of images is singular.
_SHRINKAGE = {"ledoit_wolf": LedoitWolf, "oas": OAS}


class SelectConfig(Strict):
    k: int = Field(5, ge=1, description="Clusters, hence representative descriptions (style examples)")
    features: FeatureConfig = Field(default_factory=FeatureConfig, description="phi")
    seed: int | None = Field(None, description="Seeds k-means and the subset of normals; None = the run's seed in a "
                             "KKA run, 0 where there is no run (the knowledge job)")
    max_samples: int | None = Field(1000, ge=1, description="Cluster a seeded random subset of this many normals "
                                    "(phi on every image of a large set costs minutes on CPUs); None = all")
    shrinkage: Literal["ledoit_wolf", "oas"] = Field("ledoit_wolf", description="Per-cluster covariance estimator")
    descriptions: Literal["auto", "dataset", "attributes"] = Field(
        "auto", description="What a normal's description says: the dataset's own captions, or its class wording "
        "with attributes measured on the image (size, brightness, thickness, aspect terciles within the class); "
        "auto = the captions where they differ between normals, else attributes (a class template alone would "
        "give K identical representatives)")


@dataclass(frozen=True)
class Representative:
    cluster: int
    sample_id: str
    description: str
    mahalanobis: float  # squared distance to its cluster's mean, the lowest in the cluster
    cluster_size: int


REPRESENTATIVES_SCHEMA = pa.schema([
    ("cluster", pa.int64()),
    ("sample_id", pa.string()),
    ("description", pa.string()),
    ("mahalanobis", pa.float64()),
    ("cluster_size", pa.int64()),
])


def mahalanobis_scores(z: np.ndarray, shrinkage: str) -> np.ndarray:
    """(z - mu)^T Sigma^-1 (z - mu) of each row, mu and Sigma fitted on the rows themselves."""
    if len(z) == 1:  # a lone point is its own mean
        return np.zeros(1)
    return _SHRINKAGE[shrinkage]().fit(z).mahalanobis(z)


def select_representatives(
    z: np.ndarray, ids: Sequence, descriptions: Sequence[str], k: int, seed: int, shrinkage: str
) -> list[Representative]:
    """One representative per k-means cluster of `z`, clusters in index order."""
    z = np.asarray(z, dtype=np.float64)
    n = len(z)
    if len(ids) != n or len(descriptions) != n:
        raise ValueError(f"{n} feature rows, {len(ids)} ids, {len(descriptions)} descriptions")
    if not 1 <= k <= n:
        raise ValueError(f"k={k} clusters need 1 <= k <= N samples, got N={n}")
    if shrinkage not in _SHRINKAGE:
        raise ValueError(f"unknown shrinkage {shrinkage!r}; expected one of {', '.join(_SHRINKAGE)}")
    labels = KMeans(n_clusters=k, random_state=seed, n_init=10).fit_predict(z)
    reps = []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        if len(members) == 0:  # k-means leaves a cluster empty only when z has fewer than k distinct rows
            raise ValueError(f"k={k} clusters, but the N={n} feature rows have fewer than k distinct points")
        scores = mahalanobis_scores(z[members], shrinkage)
        best = int(np.argmin(scores))
        i = members[best]
        reps.append(Representative(c, str(ids[i]), descriptions[i], float(scores[best]), len(members)))
    return reps


def run_select(normals: ImageSet, cfg: SelectConfig) -> list[Representative]:
    """Embed the normals with phi (Ray Data) and pick the K representatives; an image's first description counts."""
    seed = 0 if cfg.seed is None else cfg.seed  # None reaches here only outside a KKA run
    if cfg.max_samples is not None and len(normals) > cfg.max_samples:
        rng = np.random.default_rng(seed)
        normals = normals.subset(np.sort(rng.choice(len(normals), cfg.max_samples, replace=False)))
    z = embed(normals.images, cfg.features)
    return select_representatives(z, normals.ids, normal_descriptions(normals, cfg.descriptions), cfg.k, seed,
                                  cfg.shrinkage)


def normal_descriptions(normals: ImageSet, mode: str) -> list[str]:
    """One description per normal (an image's first caption), with measured attributes where asked or needed."""
    own = [d[0] for d in normals.descriptions]
    if mode == "dataset" or (mode == "auto" and len(set(own)) > 1):
        return own
    return attribute_descriptions(normals.images, normals.labels, own)


def representatives_table(reps: Sequence[Representative]) -> pa.Table:
    return pa.Table.from_pylist([asdict(r) for r in reps], schema=REPRESENTATIVES_SCHEMA)
