"""Deep SAD as a registered detector: Ray Train fit, Ray Data scoring over the checkpoint."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

from kka_ray.actor_map import map_images
from kka_ray.config import DeepSADConfig
from kka_ray.data.base import ImageSet
from kka_ray.detectors.base import DETECTORS, Detector, checked_scores
from kka_ray.detectors.deepsad.loss import ANOMALY, NORMAL
from kka_ray.detectors.deepsad.networks import net_spec
from kka_ray.detectors.deepsad.train import DeepSADScorer, train_loop_per_worker
from kka_ray.runtime import trainer_cls
from kka_ray.tracking import fit_tracking


def training_arrays(normals: ImageSet, anomalies: ImageSet | None) -> dict[str, np.ndarray]:
    """Images with Deep SAD's semi-targets: +1 labelled normal, -1 labelled anomaly."""
    parts = [(normals.images, NORMAL)]
    if anomalies is not None and len(anomalies):
        if anomalies.shape != normals.shape:
            raise ValueError(f"anomaly images are {anomalies.shape}, normal images {normals.shape}")
        parts.append((anomalies.images, ANOMALY))
    return {
        "images": np.concatenate([p[0] for p in parts]),
        "semi_targets": np.concatenate([np.full(len(p[0]), p[1], dtype=np.int64) for p in parts]),
    }


@DETECTORS.register("deepsad")
class DeepSAD(Detector):
    config_cls = DeepSADConfig
    cfg: DeepSADConfig

    def __init__(self, cfg: DeepSADConfig):
        super().__init__(cfg)
        self.checkpoint: ray.train.Checkpoint | None = None

    @classmethod
    def from_checkpoint(cls, cfg: DeepSADConfig, path: str, filesystem=None) -> DeepSAD:
        """A fitted detector from a saved checkpoint folder (local, or on a pyarrow filesystem)."""
        det = cls(cfg)
        det.checkpoint = ray.train.Checkpoint(path, filesystem=filesystem)
        return det

    def fit(self, normals: ImageSet, anomalies: ImageSet | None, *, seed: int, workdir: Path,
            pretrained: DeepSAD | None = None) -> dict:
        """`pretrained`: a fitted Deep SAD whose autoencoder-pretrained encoder this fit starts from, instead of
        pretraining again (the KKA loop's later iterations start from the one pretrained on the normals)."""
        cfg = self.cfg
        h, w, ch = normals.shape
        if h != w:
            raise ValueError(f"Deep SAD needs square images, got {h}x{w}")
        spec = net_spec(cfg.net, ch, h, cfg.rep_dim)
        trainer = trainer_cls()(
            train_loop_per_worker,
            train_loop_config={
                "cfg": cfg.model_dump(),
                "spec": spec.__dict__,
                "seed": seed,
                "data": ray.put(training_arrays(normals, anomalies)),
                **fit_tracking("deepsad"),
                "pretrained": pretrained.checkpoint if pretrained is not None else None,
            },
            scaling_config=ScalingConfig(
                num_workers=cfg.num_workers,
                use_gpu=cfg.use_gpu,
                resources_per_worker={"CPU": cfg.cpus_per_worker},
            ),
            # A dead worker (preempted node, kill) restarts the fit from its last restart checkpoint; only the
            # latest checkpoint is kept, which at the end is the fitted model.
            run_config=RunConfig(name=f"deepsad-{uuid.uuid4().hex[:8]}", storage_path=str(Path(workdir).resolve()),
                                 failure_config=FailureConfig(max_failures=cfg.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=1)),
        )
        result = trainer.fit()
        self.checkpoint = result.checkpoint
        return dict(result.metrics or {})

    def score(self, images: np.ndarray) -> np.ndarray:
        if self.checkpoint is None:
            raise RuntimeError("Deep SAD: score() called before fit()")
        cfg = self.cfg
        scores = map_images(images, DeepSADScorer, {"checkpoint": self.checkpoint}, output="score",
                            actors=cfg.score_actors, batch_size=cfg.score_batch_size, num_cpus=1).astype(np.float64)
        return checked_scores(scores, f"Deep SAD {self.checkpoint.path}", what="distances",
                              advice="lower evaluator.lr, or set evaluator.bf16=false")
