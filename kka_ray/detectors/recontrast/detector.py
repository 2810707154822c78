"""ReContrast as a registered detector: Ray Train fit, Ray Data scoring over the checkpoint.

`backbone.pretrained: false` is the paper's "no pre-training" variant: the same network and settings from a
random init, E_f a frozen copy of it (batch-norm statistics set by one pass over the normals first).

With anomalies (+KKA; the paper gives no mechanism, and says all other settings stay as they are): every step
adds half as many given anomalies as normals to the batch, and a hinge keeps each anomaly's reconstruction
distance `anomaly_margin` above the normals' current mean, so the decoder learns not to restore them. The
normal term holds the decoder in place, so it cannot meet the hinge by failing everywhere."""

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
from kka_ray.detectors.recontrast import train


class ReContrastConfig(Strict):
    """ReContrast (Guo et al. 2023). The defaults are the CPU profile (Lite0 blocks 2/4/10 at 112 px); the
    paper's own: a WideResNet-50 hub backbone, layers 1-3 at 256 px, 2,000 steps at batch 16."""

    name: Literal["recontrast"] = Field("recontrast", description="Detector; one config class per registered "
                                        "detector")
    backbone: BackboneConfig = Field(
        default_factory=lambda: BackboneConfig(image_size=112, taps=["b2", "b4", "b10"]),
        description="E (trainable, from these weights) and E_f (its frozen copy); pretrained false = the "
        "no-pre-training variant")
    bottleneck: int = Field(320, ge=8, description="Channels of the fused embedding the decoder starts from")
    steps: int = Field(1000, ge=1, description="Optimiser steps (a fixed budget; no checkpoint is chosen by any "
                       "test score)")
    batch_size: int = Field(16, ge=2, description="Normal images per step")
    lr: float = Field(2e-3, gt=0, description="Decoder and bottleneck learning rate (AdamW)")
    encoder_lr: float = Field(1e-5, gt=0, description="Trainable encoder E's learning rate")
    weight_decay: float = Field(1e-5, ge=0)
    shrink: float = Field(0.0, ge=0, le=1, description="Gradient factor at well-restored points (hard mining; "
                          "the released scripts use 0)")
    calibrate_bn: bool = Field(True, description="No pre-training: set E's batch-norm statistics from the "
                               "normals before copying it to E_f")
    anomaly_margin: float = Field(0.2, ge=0, description="With anomalies: how far above the normals' mean "
                                  "distance each anomaly's reconstruction distance is pushed")
    anomaly_weight: float = Field(1.0, ge=0, description="Weight of the anomaly hinge")
    blur_sigma: float = Field(4.0, ge=0.1, description="Gaussian blur of the anomaly map, in pixels at 256 px "
                              "(scaled with the image side)")
    log_every: int = Field(50, ge=1, description="Steps per point of the loss curve")
    score_actors: int = Field(1, ge=1, description="Ray Data workers that score with the checkpoint in parallel "
                              "(actors on GPUs, tasks on CPUs)")
    score_batch_size: int | None = Field(None, ge=1, description="Images per scoring pass (on CPUs); None: "
                                         "images_per_pass(None, backbone.image_size)")
    train: trainer.TrainWorkers = Field(default_factory=trainer.TrainWorkers)


@DETECTORS.register("recontrast")
class ReContrast(Detector):
    config_cls = ReContrastConfig
    cfg: ReContrastConfig

    def __init__(self, cfg: ReContrastConfig):
        super().__init__(cfg)
        self.checkpoint: ray.train.Checkpoint | None = None

    def fit(self, normals: ImageSet, anomalies: ImageSet | None, *, seed: int, workdir: Path) -> dict:
        cfg = self.cfg
        bank = (anomalies.images if anomalies is not None and len(anomalies)
                else np.zeros((0, *normals.shape), np.uint8))
        if len(bank) and bank.shape[1:] != normals.images.shape[1:]:
            raise ValueError(f"anomaly images are {bank.shape[1:]}, normal images {normals.shape}")
        result = trainer.fit(train.fit_net, train.save, {"normals": normals.images, "anomalies": bank}, cfg, seed,
                             "recontrast", workdir)
        self.checkpoint = result.checkpoint
        return {**result.metrics, "anomalies": len(bank)}

    def score(self, images: np.ndarray) -> np.ndarray:
        if self.checkpoint is None:
            raise RuntimeError("ReContrast: score() called before fit()")
        cfg = self.cfg
        scores = map_images(images, train.ReContrastScorer, {"checkpoint": self.checkpoint, "cfg": cfg},
                            output="score", actors=cfg.score_actors,
                            batch_size=images_per_pass(cfg.score_batch_size, cfg.backbone.image_size), num_cpus=1)
        return checked_scores(scores, f"ReContrast {self.checkpoint.path}")
