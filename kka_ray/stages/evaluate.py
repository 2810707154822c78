"""Stages 4-5 (Eq. 5-6): the confusion evaluator theta_C and the hard / easy split.

theta_C is Deep SAD trained on the training normals (labelled normal) and the anomaly set A (labelled anomaly).
It judges anomalies it was *not* trained on: the new candidates of an iteration are scored by the theta_C of the
set before them (at t = 0 the detector trained on normals only). A candidate is hard when theta_C places it
inside the normal boundary: its distance to c is below the 0.99-quantile of the distances of held-out
*validation* normals (`split.quantile`; 1.0, their largest, is the paper's rule). Judging the set theta_C was
just trained on would call almost everything easy (on Fashion-MNIST "shirt": 0 hard of 224), since Deep SAD's
anomaly term pushes exactly those samples out.
The test split is never read here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import Field

from kka_ray.config import DeepSADConfig, Strict
from kka_ray.data.base import ImageSet
from kka_ray.data.task import OneClassTask
from kka_ray.detectors.deepsad import DeepSAD


class SplitConfig(Strict):
    quantile: float = Field(0.99, gt=0, le=1, description="Boundary = this quantile of the validation normals' "
                            "distances, the same rule every iteration. 0.99 (1% of validation normals outside): "
                            "the quantile at which theta_C without anomalies calls between 31% and 89% of N_0 hard "
                            "in every Fashion-MNIST class (docs/results/boundary-fmnist.md; validation normals and "
                            "generated images only). 1.0 = their maximum, the paper's rule: 82-99% hard")


@dataclass(frozen=True)
class Split:
    threshold: float  # the normal boundary: distances below it are inside
    scores: np.ndarray  # distance to c per anomaly
    hard: np.ndarray  # bool per anomaly

    @property
    def hard_count(self) -> int:
        return int(self.hard.sum())

    @property
    def easy_count(self) -> int:
        return int((~self.hard).sum())

    @property
    def hard_share(self) -> float:
        return self.hard_count / len(self.hard) if len(self.hard) else 0.0


def hard_easy_split(anomaly_scores: np.ndarray, val_scores: np.ndarray, quantile: float = 1.0) -> Split:
    """Eq. 6: hard = d(x_a) < q-quantile of d(x_n) over validation normals (max for q = 1)."""
    if len(val_scores) == 0:
        raise ValueError("the hard/easy split needs at least one validation normal")
    threshold = float(np.quantile(np.asarray(val_scores, dtype=np.float64), quantile))
    scores = np.asarray(anomaly_scores, dtype=np.float64)
    return Split(threshold, scores, scores < threshold)


def images_of(anomalies: pa.Table) -> np.ndarray:
    return np.ascontiguousarray(anomalies.column("image").combine_chunks().to_numpy_ndarray())


def anomaly_set(anomalies: pa.Table) -> ImageSet:
    """The generated anomaly table as an ImageSet (label: generated; description: its sentence)."""
    images = images_of(anomalies)
    return ImageSet(images=images, labels=np.zeros(len(images), dtype=np.int64), class_names=("generated anomaly",),
                    descriptions=[(s,) for s in anomalies.column("sentence").to_pylist()],
                    ids=np.array(anomalies.column("anomaly_id").to_pylist(), dtype=object), split="generated")


def fit_evaluator(task: OneClassTask, anomalies: pa.Table | None, cfg: DeepSADConfig, *, seed: int,
                  workdir: Path, pretrained: DeepSAD | None = None) -> tuple[DeepSAD, dict]:
    """Eq. 5: theta_C on (train normals labelled normal, A labelled anomaly); no A = Deep SVDD on normals.
    With `pretrained`, the encoder starts from that fit's autoencoder pretraining instead of a new one."""
    evaluator = DeepSAD(cfg)
    metrics = evaluator.fit(task.train_normal, anomaly_set(anomalies) if anomalies is not None else None,
                            seed=seed, workdir=workdir, pretrained=pretrained)
    return evaluator, metrics


def judge(evaluator: DeepSAD, tables: Sequence[pa.Table], val_normal: ImageSet, quantile: float) -> list[Split]:
    """Eq. 6 for each table of anomalies against one boundary, with one scoring pass over all of them and the
    validation normals."""
    images = [images_of(t) for t in tables]
    scores = evaluator.score(np.concatenate([*images, val_normal.images]))
    ends = np.cumsum([len(i) for i in images])
    val = scores[ends[-1]:]
    return [hard_easy_split(part, val, quantile) for part in np.split(scores[:ends[-1]], ends[:-1])]


VERDICT = ("score", "boundary", "margin", "hard", "judged_iteration")


def with_split(anomalies: pa.Table, split: Split, iteration: int) -> pa.Table:
    """Each anomaly's distance, the boundary it was judged against, their ratio (< 1: hard) and the verdict;
    a verdict it already had is replaced."""
    n = len(anomalies)
    anomalies = anomalies.drop_columns([c for c in VERDICT if c in anomalies.column_names])
    return (anomalies.append_column("score", pa.array(split.scores))
            .append_column("boundary", pa.array(np.full(n, split.threshold)))
            .append_column("margin", pa.array(split.scores / max(split.threshold, 1e-12)))
            .append_column("hard", pa.array(split.hard))
            .append_column("judged_iteration", pa.array(np.full(n, iteration, dtype=np.int64))))
