"""The detector interface and registry. A detector is fitted on normals (+ optional anomalies) and scores
images: higher = more anomalous."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import BaseModel, BeforeValidator, SerializeAsAny

from kka_ray.data.base import ImageSet
from kka_ray.registry import Registry


class Detector(ABC):
    config_cls: ClassVar[type[BaseModel]]

    def __init__(self, cfg: BaseModel):
        self.cfg = cfg

    @abstractmethod
    def fit(self, normals: ImageSet, anomalies: ImageSet | None, *, seed: int, workdir: Path) -> dict:
        """Train; returns the final training metrics ("generated": the detector's own synthetic anomalies,
        where it makes any)."""

    @abstractmethod
    def score(self, images: np.ndarray) -> np.ndarray:
        """Anomaly scores for uint8 (N,H,W,C) images, in input order."""


DETECTORS: Registry[type[Detector]] = Registry("detector")


def checked_scores(scores: np.ndarray, who: str, advice: str = "lower lr", what: str = "scores") -> np.ndarray:
    """`scores`, or a FloatingPointError when any is NaN or infinite: every verdict and AUROC computed from a
    diverged fit would be meaningless."""
    bad = int((~np.isfinite(scores)).sum())
    if bad:
        raise FloatingPointError(f"{who}: {bad} of {len(scores)} {what} are NaN or infinite (the fit diverged); "
                                 f"{advice}")
    return scores


def detector_config(value: Any) -> BaseModel:
    """A mapping with a registered `name` (default deepsad) -> that detector's config class."""
    if isinstance(value, BaseModel):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"a detector config is a mapping with a `name`, got {value!r}")
    # A ValidationError here reaches the outer config's error as its cause; config.describe_errors prints each
    # inner error under the full field path.
    return DETECTORS.get(DETECTORS.check(value.get("name", "deepsad"))).config_cls.model_validate(value)


AnyDetectorConfig = Annotated[SerializeAsAny[BaseModel], BeforeValidator(detector_config)]
"""A config field that takes any registered detector's config, chosen by its `name`."""
