"""phi over Ray Data: an actor pool, each actor holding one loaded backbone."""

from __future__ import annotations

import numpy as np

from kka_ray.actor_map import map_images
from kka_ray.features.base import FeatureConfig, build_features


class FeatureActor:
    """Ray Data actor: loads phi once, maps a batch of images to its features."""

    def __init__(self, cfg: FeatureConfig):
        import torch

        torch.set_num_threads(max(1, int(cfg.cpus_per_actor)))
        self.phi = build_features(cfg)

    def __call__(self, batch: dict) -> dict:
        return {"row": batch["row"], "feature": self.phi(batch["image"])}


def embed(images: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """float32 (N, D) features of uint8 (N,H,W,C) images, in input order."""
    return map_images(images, FeatureActor, {"cfg": cfg}, output="feature", actors=cfg.actors,
                      batch_size=cfg.batch_size, num_cpus=cfg.cpus_per_actor, num_gpus=cfg.num_gpus_per_actor)
