"""Stages 4-5 (Eq. 5-6): the confusion evaluator theta_C and the hard / easy split of the anomaly set A.

theta_C is Deep SAD trained on the training normals (labelled normal) and A (labelled anomaly). A generated
anomaly is hard when theta_C still places it inside the normal boundary: its distance to c is below the
largest distance of a held-out *validation* normal (or a configured quantile of them). The test split is
never read here.
"""

from __future__ import annotations

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
    quantile: float = Field(1.0, gt=0, le=1, description="Boundary = this quantile of the validation normals' "
                            "distances; 1.0 = their maximum (the paper's rule)")


@dataclass(frozen=True)
class Split:
    threshold: float  # the normal boundary: distances below it are inside
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
    return Split(threshold, np.asarray(anomaly_scores, dtype=np.float64) < threshold)


def anomaly_set(anomalies: pa.Table) -> ImageSet:
    """The generated anomaly table as an ImageSet (label: generated; description: its sentence)."""
    images = anomalies.column("image").combine_chunks().to_numpy_ndarray()
    return ImageSet(images=np.ascontiguousarray(images), labels=np.zeros(len(images), dtype=np.int64),
                    class_names=("generated anomaly",),
                    descriptions=[(s,) for s in anomalies.column("sentence").to_pylist()],
                    ids=np.array(anomalies.column("anomaly_id").to_pylist(), dtype=object), split="generated")


@dataclass
class Evaluation:
    evaluator: DeepSAD
    anomaly_scores: np.ndarray
    val_scores: np.ndarray
    split: Split
    fit_metrics: dict


def evaluate(task: OneClassTask, anomalies: pa.Table, cfg: DeepSADConfig, split: SplitConfig, *, seed: int,
             workdir: Path) -> Evaluation:
    """Eq. 5 then Eq. 6: fit theta_C on (train normals, A), score A and the validation normals, split A."""
    evaluator = DeepSAD(cfg)
    metrics = evaluator.fit(task.train_normal, anomaly_set(anomalies), seed=seed, workdir=workdir)
    images = anomalies.column("image").combine_chunks().to_numpy_ndarray()
    scores = evaluator.score(np.concatenate([images, task.val_normal.images]))
    a_scores, v_scores = scores[:len(images)], scores[len(images):]
    return Evaluation(evaluator, a_scores, v_scores, hard_easy_split(a_scores, v_scores, split.quantile), metrics)


def with_split(anomalies: pa.Table, ev: Evaluation, iteration: int) -> pa.Table:
    """A with each anomaly's distance, hard flag and the iteration that judged it (replacing older judgements)."""
    base = anomalies.drop_columns([c for c in ("score", "hard", "judged_iteration") if c in anomalies.column_names])
    return (base.append_column("score", pa.array(ev.anomaly_scores))
            .append_column("hard", pa.array(ev.split.hard))
            .append_column("judged_iteration", pa.array(np.full(len(base), iteration, dtype=np.int64))))
