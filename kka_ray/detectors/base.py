"""The detector interface and registry. A detector is fitted on normals (+ optional anomalies) and scores
images: higher = more anomalous."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import BaseModel

from kka_ray.data.base import ImageSet
from kka_ray.registry import Registry


class Detector(ABC):
    config_cls: ClassVar[type[BaseModel]]

    def __init__(self, cfg: BaseModel):
        self.cfg = cfg

    @abstractmethod
    def fit(self, normals: ImageSet, anomalies: ImageSet | None, *, seed: int, workdir: Path) -> dict:
        """Train; returns the final training metrics."""

    @abstractmethod
    def score(self, images: np.ndarray) -> np.ndarray:
        """Anomaly scores for uint8 (N,H,W,C) images, in input order."""


DETECTORS: Registry[type[Detector]] = Registry("detector")
