"""Text-to-image backends by registry. Adding one: a module with a `@RENDERERS.register` class, imported here."""

from pathlib import Path

from kka_ray.paths import model_location
from kka_ray.render import diffusers_backend  # noqa: F401  (registers diffusers)
from kka_ray.render.base import RENDERERS, RenderBackend, RenderConfig
from kka_ray.render.prior import GENERAL, check_overlap, choose_prior, prior_corpus

__all__ = ["RENDERERS", "RenderBackend", "RenderConfig", "build_renderer", "resolve_render"]


def build_renderer(cfg: RenderConfig, dataset: str | None = None) -> RenderBackend:
    """The backend for a task on `dataset` (None where no task is known: the endpoint, the prior's benchmark)."""
    return RENDERERS.get(cfg.backend)(resolve_render(cfg, dataset))


def resolve_render(cfg: RenderConfig, dataset: str | None) -> RenderConfig:
    """`prior: auto` made concrete, and a prior (shipped, or a local folder that records its corpus) refused for
    a dataset it has seen unless allow_prior_overlap says this is the in-domain control."""
    if cfg.model is None:
        if dataset is None:
            return cfg if cfg.prior != "auto" else cfg.model_copy(update={"prior": GENERAL[0]})
        return cfg.model_copy(update={"prior": choose_prior(cfg.prior, dataset, cfg.allow_prior_overlap)})
    model_location(cfg.model, "render.model")
    if dataset is not None and Path(cfg.model).is_dir():
        check_overlap(f"render.model {cfg.model}", prior_corpus(Path(cfg.model)), dataset, cfg.allow_prior_overlap)
    return cfg
