"""kNN on frozen pretrained features (DN2 / PANDA's starting point), and this project's +anomalies variant."""

from kka_ray.detectors.knn.detector import KNN, KNNConfig

__all__ = ["KNN", "KNNConfig"]
