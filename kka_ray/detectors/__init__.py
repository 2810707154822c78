"""Detectors by registry. Adding one: a package with a `@DETECTORS.register` class, declared here. A detector's
package is imported when its name is first used, so a Ray Train worker fitting Deep SAD does not import what the
others need (scikit-learn, ...: seconds in every worker process on a small CPU)."""

from kka_ray.detectors.base import DETECTORS, Detector

for _name in ("deepsad", "knn", "recontrast", "simplenet", "ssd"):
    DETECTORS.declare(_name, f"kka_ray.detectors.{_name}")

__all__ = ["DETECTORS", "Detector", "build_detector"]


def build_detector(cfg) -> Detector:
    return DETECTORS.get(cfg.name)(cfg)
