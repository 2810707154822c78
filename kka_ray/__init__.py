"""kka-ray: Key Knowledge Augmentation for one-class anomaly detection, on Ray."""

__version__ = "0.1.0"
