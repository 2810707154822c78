"""ReContrast (Guo et al., NeurIPS 2023): cross reconstruction of a trainable and a frozen encoder's features."""

from kka_ray.detectors.recontrast.detector import ReContrast, ReContrastConfig

__all__ = ["ReContrast", "ReContrastConfig"]
