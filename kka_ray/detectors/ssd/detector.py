"""SSD as a registered detector: contrastive training (Ray Train), features (Ray Data), Mahalanobis distance to
the nearest cluster of training normals.

CPU profile, not the paper's raw-data SSD: the encoder starts from the offline ImageNet Lite0 weights and trains
for a few epochs (`backbone.pretrained: false` and 500 epochs is the paper's setting, for GPUs).

With anomalies: SSD's own few-shot extension SSD_k. The encoder is not retrained; each given anomaly is
embedded under `anomaly_views` random training views, one Ledoit-Wolf Gaussian is fitted to them, and the
score becomes (distance to the normals) - (distance to the anomalies)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import ray
from pydantic import Field

from kka_ray.actor_map import map_images
from kka_ray.config import Strict
from kka_ray.data.base import ImageSet
from kka_ray.detectors import trainer
from kka_ray.detectors.backbone import BackboneConfig, images_per_pass
from kka_ray.detectors.base import DETECTORS, Detector, checked_scores
from kka_ray.detectors.ssd import train
from kka_ray.detectors.ssd.model import Gaussians, Standardiser


class SSDConfig(Strict):
    """SSD (Sehwag et al. 2021)."""

    name: Literal["ssd"] = Field("ssd", description="Detector; one config class per registered detector")
    backbone: BackboneConfig = Field(default_factory=lambda: BackboneConfig(image_size=64, taps=["head"]),
                                     description="The encoder (trained); its taps are pooled into h")
    proj_dim: int = Field(128, ge=8, description="Projection head output (the contrastive space)")
    temperature: float = Field(0.5, gt=0, description="NT-Xent temperature (paper: 0.5)")
    epochs: int = Field(15, ge=1, description="Training epochs (paper: 500 from scratch)")
    warmup_epochs: int = Field(1, ge=0, description="Epochs of linear lr warm-up")
    batch_size: int = Field(128, ge=2, description="Images per step (2 views each)")
    lr: float = Field(0.05, gt=0, description="SGD learning rate (paper: 0.5 at batch 512 from scratch; lower "
                      "here because the encoder starts from ImageNet weights)")
    weight_decay: float = Field(1e-4, ge=0)
    clusters: int = Field(1, ge=1, description="k-means clusters of the normals' features (paper's default 1)")
    anomaly_views: int = Field(10, ge=1, description="With anomalies (SSD_k): random views embedded per anomaly")
    score_actors: int = Field(1, ge=1, description="Ray Data workers that embed with the checkpoint in parallel "
                              "(actors on GPUs, tasks on CPUs)")
    score_batch_size: int | None = Field(None, ge=1, description="Images per scoring pass (on CPUs); None: "
                                         "images_per_pass(None, backbone.image_size)")
    train: trainer.TrainWorkers = Field(default_factory=trainer.TrainWorkers)


@DETECTORS.register("ssd")
class SSD(Detector):
    config_cls = SSDConfig
    cfg: SSDConfig

    def __init__(self, cfg: SSDConfig):
        super().__init__(cfg)
        self.checkpoint: ray.train.Checkpoint | None = None

    def features(self, images: np.ndarray, view_seed: int | None = None) -> np.ndarray:
        cfg = self.cfg
        return map_images(images, train.SSDFeatures,
                          {"checkpoint": self.checkpoint, "cfg": cfg, "view_seed": view_seed}, output="feature",
                          actors=cfg.score_actors,
                          batch_size=images_per_pass(cfg.score_batch_size, cfg.backbone.image_size), num_cpus=1)

    def fit(self, normals: ImageSet, anomalies: ImageSet | None, *, seed: int, workdir: Path) -> dict:
        cfg = self.cfg
        result = trainer.fit(train.fit_net, train.save, {"normals": normals.images}, cfg, seed, "ssd", workdir)
        self.checkpoint = result.checkpoint
        h = self.features(normals.images)
        self.standardise = Standardiser(h)
        self.normal = Gaussians(self.standardise(h), cfg.clusters, seed)
        self.anomaly = None
        if anomalies is not None and len(anomalies):
            repeated = np.repeat(anomalies.images, cfg.anomaly_views, axis=0)
            self.anomaly = Gaussians(self.standardise(self.features(repeated, view_seed=seed)), 1, seed)
        return {**result.metrics, "anomalies": 0 if anomalies is None else len(anomalies)}

    def score(self, images: np.ndarray) -> np.ndarray:
        if self.checkpoint is None:
            raise RuntimeError("SSD: score() called before fit()")
        x = self.standardise(self.features(images))
        scores = self.normal.distance(x)
        if self.anomaly is not None:
            scores = scores - self.anomaly.distance(x)
        return checked_scores(scores, f"SSD {self.checkpoint.path}")
