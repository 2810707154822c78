"""Detectors by registry. Adding one: a package with a `@DETECTORS.register` class, imported here."""

from kka_ray.detectors import deepsad  # noqa: F401  (registers deepsad)
from kka_ray.detectors.base import DETECTORS, Detector

__all__ = ["DETECTORS", "Detector", "build_detector"]


def build_detector(cfg) -> Detector:
    return DETECTORS.get(cfg.name)(cfg)
