"""Deep SAD (Ruff et al. 2020): networks, loss, Ray Train loop, registered detector."""

from kka_ray.detectors.deepsad.detector import DeepSAD

__all__ = ["DeepSAD"]
