"""Feature extractors (phi) by registry. Adding one: a module with a `@FEATURES.register` class, imported here."""

from kka_ray.features import efficientnet_lite  # noqa: F401  (registers efficientnet_lite0)
from kka_ray.features.base import FEATURES, FeatureConfig, FeatureExtractor, build_features
from kka_ray.features.embed import embed

__all__ = ["FEATURES", "FeatureConfig", "FeatureExtractor", "build_features", "embed"]
