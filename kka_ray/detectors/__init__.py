"""Detectors by registry. Adding one: a package with a `@DETECTORS.register` class, imported here."""

from kka_ray.detectors import deepsad, knn, recontrast, simplenet, ssd  # noqa: F401  (each registers itself)
from kka_ray.detectors.base import DETECTORS, Detector

__all__ = ["DETECTORS", "Detector", "build_detector"]


def build_detector(cfg) -> Detector:
    return DETECTORS.get(cfg.name)(cfg)
