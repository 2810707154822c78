"""SimpleNet as a registered detector. Patch features of the frozen backbone are extracted once (Ray Data,
cached); only the adaptor and the discriminator train (Ray Train). Image score: the largest patch score.

With anomalies (+KKA; the paper gives no mechanism, this is the simplest reading of its Table II, where the
noise fakes stay and KKA's images are added): every patch of a given anomaly image goes through the adaptor
without noise and is pushed to the fake side; each step draws as many anomaly images as normal ones."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from kka_ray.config import Strict
from kka_ray.data.base import ImageSet
from kka_ray.detectors import trainer
from kka_ray.detectors.backbone import BackboneConfig, extract
from kka_ray.detectors.base import DETECTORS, Detector, checked_scores
from kka_ray.detectors.simplenet import train
from kka_ray.detectors.simplenet.model import patch_features


class SimpleNetConfig(Strict):
    """SimpleNet (Liu et al. 2023). The defaults are the CPU profile (Lite0 at 64 px, 256-d patches); the
    paper's own: a WideResNet-50 hub backbone, layers 2+3 at 288 px, pre_dim = dim = 1536, hidden 1024."""

    name: Literal["simplenet"] = Field("simplenet", description="Detector; one config class per registered "
                                       "detector")
    backbone: BackboneConfig = Field(default_factory=lambda: BackboneConfig(image_size=64, taps=["b4", "b10"]),
                                     description="Frozen feature extractor; its taps give the patch features")
    patch: int = Field(3, ge=1, description="Side of the neighbourhood aggregated into each patch feature")
    pre_dim: int = Field(256, ge=8, description="Each level's patch feature is pooled to this length")
    dim: int = Field(256, ge=8, description="The levels together are pooled to this length (adaptor width)")
    hidden: int = Field(256, ge=8, description="Discriminator hidden units")
    noise_std: float = Field(0.3, gt=0, description="Standard deviation of the Gaussian fakes added to G's "
                             "output, whose input is standardised per dimension (paper: 0.015 on WideResNet "
                             "features of another scale; here D learned nothing at 0.015 or 0.1 within 8 epochs "
                             "on Fashion-MNIST training features, see docs/design/detectors.md)")
    threshold: float = Field(0.5, gt=0, description="Margin of the truncated L1 loss (paper: 0.5)")
    anomaly_weight: float = Field(1.0, ge=0, description="Weight of the given anomalies' loss term")
    epochs: int = Field(8, ge=1, description="Passes over the normals; each draws one noisy copy of every "
                        "normal's patches (the paper's generated-sample count = normals x epochs)")
    batch_size: int = Field(32, ge=1, description="Images per step (their patches are the rows)")
    lr: float = Field(2e-4, gt=0, description="Discriminator learning rate (Adam)")
    weight_decay: float = Field(1e-5, ge=0)
    adaptor_lr: float = Field(1e-4, gt=0, description="Adaptor learning rate (AdamW)")
    adaptor_weight_decay: float = Field(0.01, ge=0)
    score_batch_size: int = Field(256, ge=1, description="Images per scoring pass")
    train: trainer.TrainWorkers = Field(default_factory=trainer.TrainWorkers)


@DETECTORS.register("simplenet")
class SimpleNet(Detector):
    config_cls = SimpleNetConfig
    cfg: SimpleNetConfig

    def __init__(self, cfg: SimpleNetConfig):
        super().__init__(cfg)
        self.head = None
        self.cache: Path | None = None
        self.reduce = functools.partial(patch_features, patch=cfg.patch, pre_dim=cfg.pre_dim, dim=cfg.dim)

    def features(self, images: np.ndarray) -> np.ndarray:
        """(N, P, dim) float16 patch features (half the memory; the head computes in fp32)."""
        return extract(images, self.cfg.backbone, self.reduce, cache=self.cache, dtype=np.float16)

    def fit(self, normals: ImageSet, anomalies: ImageSet | None, *, seed: int, workdir: Path,
            monitor: tuple[ImageSet, ImageSet] | None = None) -> dict:
        """`monitor`: (normals, anomalies) held out from training (validation normals, unused generated
        anomalies) whose separation is measured after every epoch (metrics["monitor_curve"])."""
        cfg = self.cfg
        self.cache = Path(workdir) / "features"
        f_normal = self.features(normals.images)
        f_anomaly = (self.features(anomalies.images) if anomalies is not None and len(anomalies)
                     else np.zeros((0, *f_normal.shape[1:]), np.float16))
        data = {"normals": f_normal, "anomalies": f_anomaly}
        if monitor is not None:
            data["monitor"] = {"normals": self.features(monitor[0].images),
                               "anomalies": self.features(monitor[1].images)}
        result = trainer.fit(train.fit_head, train.save, data, cfg, seed, "simplenet", workdir)
        with result.checkpoint.as_directory() as folder:
            self.head = train.load(folder)
        return {**result.metrics, "generated": len(normals) * cfg.epochs, "anomalies": len(f_anomaly)}

    def score(self, images: np.ndarray) -> np.ndarray:
        if self.head is None:
            raise RuntimeError("SimpleNet: score() called before fit()")
        scores = train.image_scores(self.head, self.features(images), self.cfg.score_batch_size)
        return checked_scores(scores.double().numpy(), "SimpleNet")

    @torch.no_grad()
    def embed(self, images: np.ndarray) -> np.ndarray:
        """Each image's adapted patch features G(f), averaged over patches: the space the discriminator sees."""
        if self.head is None:
            raise RuntimeError("SimpleNet: embed() called before fit()")
        f = torch.from_numpy(self.features(images)).float()
        return self.head.adapt(f).mean(1).numpy()
