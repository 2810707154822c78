"""kNN as a registered detector. Without anomalies: the mean distance to the k nearest training normals in a
frozen pretrained feature space (DN2; PANDA without its fine-tuning). With anomalies, this project's own variant
(not from the paper): a logistic head on the same features, normals against the given anomalies, whose logit is
added to the kNN distance, each standardised by its scores on the training normals (kNN leave-one-out). By
default only a positive head score is added (`combine`): see model.combine."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from kka_ray.config import Strict
from kka_ray.data.base import ImageSet
from kka_ray.detectors.backbone import BackboneConfig, extract
from kka_ray.detectors.base import DETECTORS, Detector
from kka_ray.detectors.knn.model import AnomalyHead, combine, knn_distance, standardiser


class KNNConfig(Strict):
    """kNN on frozen pretrained features."""

    name: Literal["knn"] = Field("knn", description="Detector; one config class per registered detector")
    backbone: BackboneConfig = Field(
        default_factory=lambda: BackboneConfig(image_size=224, taps=["head"]),
        description="Frozen feature extractor; the taps are globally average-pooled and concatenated")
    k: int = Field(2, ge=1, description="Neighbours averaged (PANDA / DN2 use 2)")
    head_c: float = Field(1.0, gt=0, description="With anomalies: inverse L2 strength of the logistic head")
    combine: Literal["one_sided", "sum"] = Field(
        "one_sided", description="With anomalies: one_sided adds the head's standardised logit only where it is "
        "positive (an image unlike the generated anomalies is not thereby normal); sum adds it as it is (the "
        "variant of the table2-fmnist record, whose head dragged real anomalies below normals)")


@DETECTORS.register("knn")
class KNN(Detector):
    config_cls = KNNConfig
    cfg: KNNConfig

    def __init__(self, cfg: KNNConfig):
        super().__init__(cfg)
        self.bank: np.ndarray | None = None
        self.cache: Path | None = None

    def fit(self, normals: ImageSet, anomalies: ImageSet | None, *, seed: int, workdir: Path) -> dict:
        cfg = self.cfg
        self.cache = Path(workdir) / "features"
        self.bank = extract(normals.images, cfg.backbone, cache=self.cache)
        self.head = None
        if anomalies is not None and len(anomalies):
            self.head = AnomalyHead(cfg.head_c, seed).fit(self.bank, extract(anomalies.images, cfg.backbone,
                                                                             cache=self.cache))
            self.z_knn = standardiser(knn_distance(self.bank, self.bank, cfg.k, exclude_self=True))
            self.z_head = standardiser(self.head.logit(self.bank))
        return {"normals": len(normals), "anomalies": 0 if anomalies is None else len(anomalies)}

    def parts(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """What `score` joins: each image's kNN distance and, after a fit with anomalies, its head logit, both
        standardised on the training normals; without a head, the raw distance and None."""
        if self.bank is None:
            raise RuntimeError("kNN: score() or parts() called before fit()")
        features = extract(images, self.cfg.backbone, cache=self.cache)
        distance = knn_distance(features, self.bank, self.cfg.k)
        if self.head is None:
            return distance, None
        return self.z_knn(distance), self.z_head(self.head.logit(features))

    def score(self, images: np.ndarray) -> np.ndarray:
        knn, head = self.parts(images)
        return knn if head is None else combine(knn, head, self.cfg.combine)
