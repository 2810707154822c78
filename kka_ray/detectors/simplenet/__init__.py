"""SimpleNet (Liu et al., CVPR 2023): adapted frozen features, Gaussian-noise fakes, a patch discriminator."""

from kka_ray.detectors.simplenet.detector import SimpleNet, SimpleNetConfig

__all__ = ["SimpleNet", "SimpleNetConfig"]
