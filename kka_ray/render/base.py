"""Text-to-image backends (theta_S), by registry, behind one lazy Ray Data stage.

Input rows carry `sentence` (an anomaly description x_a^t) and `render_seed`; a backend's stage adds `image`
(uint8, the task's size and channels) and `render_seconds`, keeping every other column (provenance).
"""

from __future__ import annotations

import time
import zlib
from abc import ABC, abstractmethod
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator

from kka_ray.config import Strict
from kka_ray.data.base import resize_images
from kka_ray.registry import Registry
from kka_ray.resources import peak_rss_mb


class RenderConfig(Strict):
    backend: str = Field("diffusers", description="Registered text-to-image backend")
    model: str | None = Field(None, description="Hub id or local diffusers folder; None = the project's offline "
                              "prior named by `prior` (see jobs/train_prior.py)")
    prior: str = Field("auto", description="Offline prior when model is None: general, general-no-mnist, "
                       "in-domain, or auto = the first general prior whose corpus does not hold the task's dataset")
    allow_prior_overlap: bool = Field(False, description="Let a prior whose corpus holds the task's dataset render "
                                      "for it (the in-domain control; refused otherwise)")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto = float16 on GPU, float32 on CPU")
    scheduler: str | None = Field(None, description="diffusers scheduler class to swap in (e.g. DDPMScheduler, "
                                  "DPMSolverMultistepScheduler); None = the pipeline's own")
    steps: int = Field(25, ge=1, description="Denoising steps")
    guidance_scale: float = Field(5.0, ge=0, description="Classifier-free guidance scale (<= 1 turns it off)")
    height: int | None = Field(None, ge=8, description="Render height; None = the pipeline's default")
    width: int | None = Field(None, ge=8, description="Render width; None = the pipeline's default")
    negative_prompt: str | None = Field(None, description="Text to guide away from")
    disable_safety_checker: bool = Field(False, description="Load without the safety checker (only where the "
                                         "config says so: e.g. the offline prior has none to begin with)")
    batch_size: int = Field(16, ge=1, description="Descriptions per pipeline call")
    actors: int = Field(1, ge=1, description="Size of the render actor pool")
    max_restarts: int = Field(3, ge=0, description="Restarts of a dead render actor (and retries of its batch) "
                              "before the job fails with the actor's error; Ray Data's default is unlimited, "
                              "which loops forever on a crash that repeats")
    cpus_per_actor: float = Field(2.0, gt=0, description="CPUs per actor (also its torch threads)")
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs per actor")

    @field_validator("backend")
    @classmethod
    def _known(cls, v: str) -> str:
        import kka_ray.render  # noqa: F401  (registers the backends)

        return RENDERERS.check(v)


def render_seed(seed: int, sentence: str) -> int:
    """A per-description seed: lines of one completion share its generation seed but must not share noise."""
    return zlib.crc32(f"{int(seed)}:{sentence}".encode()) & 0x7FFFFFFF


def to_task_format(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Pipeline output (B, H, W, C) floats in [0, 1] -> uint8 (B, size, size, channels)."""
    u8 = (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8)
    if u8.shape[-1] == 3 and channels == 1:  # ITU-R BT.601 luma
        u8 = (u8 @ np.array([0.299, 0.587, 0.114])).round().astype(np.uint8)[..., None]
    elif u8.shape[-1] == 1 and channels == 3:
        u8 = np.repeat(u8, 3, axis=-1)
    if u8.shape[1:3] != (size, size):
        u8 = resize_images(u8, size)
    return u8


class RenderActor(ABC):
    """Ray Data actor base: renders the kept descriptions of a batch, each with its own seed.

    Rows a cleaner rejected (non-empty `reason`) pass through unrendered (`rendered` false, a blank image), so
    one stream carries both and nothing is lost.
    """

    def __init__(self, cfg: dict, size: int, channels: int):
        self.cfg = RenderConfig(**cfg)
        self.size, self.channels = size, channels

    @abstractmethod
    def render(self, prompts: list[str], seeds: list[int]) -> np.ndarray:
        """Float images (B, H, W, C) in [0, 1]."""

    def __call__(self, batch: dict) -> dict:
        start = time.time()
        sentences = [str(s) for s in batch["sentence"]]
        n = len(sentences)
        keep = np.array([r == "" for r in batch["reason"]]) if "reason" in batch else np.ones(n, dtype=bool)
        seeds = np.array([render_seed(s, t) for s, t in zip(batch["seed"], sentences, strict=True)], dtype=np.int64)
        images = np.zeros((n, self.size, self.size, self.channels), dtype=np.uint8)
        if keep.any():
            idx = np.flatnonzero(keep)
            rendered = self.render([sentences[i] for i in idx], [int(seeds[i]) for i in idx])
            images[idx] = to_task_format(rendered, self.size, self.channels)
        end = time.time()
        return {**batch, "image": images, "rendered": keep, "render_seed": seeds,
                "render_seconds": np.full(n, end - start), "render_start": np.full(n, start),
                "render_end": np.full(n, end), "render_peak_rss_mb": np.full(n, peak_rss_mb())}


class RenderBackend(ABC):
    actor_cls: ClassVar[type[RenderActor]]  # also what a Ray Serve replica holds

    def __init__(self, cfg: RenderConfig):
        self.cfg = cfg

    def apply(self, ds, size: int, channels: int):
        """Lazily add `image` and `render_seconds` to a Ray Dataset of description rows (a pool of `actor_cls`)."""
        from kka_ray.actor_map import pool_map

        return pool_map(ds, self.actor_cls, {"cfg": self.cfg.model_dump(), "size": size, "channels": channels},
                        self.cfg)

    @abstractmethod
    def model_id(self) -> str:
        """What the provenance names as the text-to-image model."""


RENDERERS: Registry[type[RenderBackend]] = Registry("text-to-image backend")
