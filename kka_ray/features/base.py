"""The feature extractor phi (KKA stage 1 embeds the normals with it), its config and registry."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
from pydantic import Field, field_validator

from kka_ray.config import Strict
from kka_ray.registry import Registry


class FeatureConfig(Strict):
    name: str = Field("efficientnet_lite0", description="Registered feature extractor")
    weights: str | None = Field(None, description="Local .pth weights; None = the file of the offline weights package")
    image_size: int = Field(224, ge=32, description="Images are resized to a square of this side")
    batch_size: int = Field(64, ge=1, description="Images per forward pass")
    actors: int = Field(1, ge=1, description="Ray Data workers that embed in parallel "
                        "(actors on GPUs, tasks on CPUs)")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs per actor; its torch threads = max(1, int(this))")
    num_gpus_per_actor: float = Field(0.0, ge=0, description="GPUs per actor (fractions share one GPU)")
    device: str = Field("auto", description="auto (cuda when available), cpu, cuda, cuda:N")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        return FEATURES.check(v)


class FeatureExtractor(ABC):
    """phi: uint8 (N,H,W,C) images -> float32 (N, dim) features, in input order."""

    def __init__(self, cfg: FeatureConfig):
        self.cfg = cfg

    @property
    @abstractmethod
    def dim(self) -> int:
        """Length of one feature vector."""

    @abstractmethod
    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Features of a uint8 (N,H,W,C) batch, C = 1 or 3."""


FEATURES: Registry[type[FeatureExtractor]] = Registry("feature extractor")


def build_features(cfg: FeatureConfig) -> FeatureExtractor:
    return FEATURES.get(cfg.name)(cfg)
