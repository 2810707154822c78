"""Text-to-image backends by registry. Adding one: a module with a `@RENDERERS.register` class, imported here."""

from kka_ray.render import diffusers_backend  # noqa: F401  (registers diffusers)
from kka_ray.render.base import RENDERERS, RenderBackend, RenderConfig

__all__ = ["RENDERERS", "RenderBackend", "RenderConfig", "build_renderer"]


def build_renderer(cfg: RenderConfig) -> RenderBackend:
    return RENDERERS.get(cfg.backend)(cfg)
