"""SSD (Sehwag et al., ICLR 2021): contrastive self-supervised features, Mahalanobis distance to normal clusters."""

from kka_ray.detectors.ssd.detector import SSD, SSDConfig

__all__ = ["SSD", "SSDConfig"]
