"""The `diffusers` backend: any text-to-image DiffusionPipeline (Stable Diffusion and successors, or the
project's offline prior) loaded once per Ray Data actor."""

from __future__ import annotations

import numpy as np
import torch

from kka_ray.paths import model_location
from kka_ray.render.base import RENDERERS, RenderActor, RenderBackend, RenderConfig


def pipeline_source(cfg: RenderConfig) -> str:
    if cfg.model is not None:
        return model_location(cfg.model, "render.model")
    from kka_ray.render.prior import GENERAL, prior_dir

    return str(prior_dir(GENERAL[0] if cfg.prior == "auto" else cfg.prior))


def load_pipeline(cfg: RenderConfig, device: str):
    import diffusers

    dtype = {"auto": torch.float16 if device == "cuda" else torch.float32}.get(cfg.dtype) or getattr(torch, cfg.dtype)
    extra = {"safety_checker": None, "requires_safety_checker": False} if cfg.disable_safety_checker else {}
    pipe = diffusers.DiffusionPipeline.from_pretrained(pipeline_source(cfg), dtype=dtype, **extra)
    if cfg.scheduler:
        if not hasattr(diffusers, cfg.scheduler):
            raise ValueError(f"render.scheduler: diffusers has no scheduler {cfg.scheduler!r}")
        pipe.scheduler = getattr(diffusers, cfg.scheduler).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


class DiffusersRenderer(RenderActor):
    """Ray Data actor holding one loaded pipeline."""

    def __init__(self, cfg: dict, size: int, channels: int):
        super().__init__(cfg, size, channels)
        self.device = "cuda" if self.cfg.gpus_per_actor > 0 and torch.cuda.is_available() else "cpu"
        if self.device == "cpu":
            torch.set_num_threads(max(1, int(self.cfg.cpus_per_actor)))
        self.pipe = load_pipeline(self.cfg, self.device)

    @torch.no_grad()
    def render(self, prompts: list[str], seeds: list[int]) -> np.ndarray:
        cfg = self.cfg
        generators = [torch.Generator(self.device).manual_seed(s) for s in seeds]
        out = self.pipe(
            prompt=prompts, negative_prompt=[cfg.negative_prompt] * len(prompts) if cfg.negative_prompt else None,
            num_inference_steps=cfg.steps, guidance_scale=cfg.guidance_scale, generator=generators,
            height=cfg.height, width=cfg.width, output_type="np",
        )
        return np.asarray(out.images)


@RENDERERS.register("diffusers")
class DiffusersBackend(RenderBackend):
    actor_cls = DiffusersRenderer

    def model_id(self) -> str:
        return self.cfg.model or f"kka-ray offline prior {self.cfg.prior}"
