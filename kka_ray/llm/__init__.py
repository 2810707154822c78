"""Language-model backends by registry. Adding one: a module with a `@LM_BACKENDS.register` class, imported here.

The vllm module imports nothing of vllm at import time, so registering it is free.
"""

from kka_ray.llm import hf, vllm_backend  # noqa: F401  (registers transformers, vllm)
from kka_ray.llm.base import LM_BACKENDS, LMBackend, LMConfig

__all__ = ["LM_BACKENDS", "LMBackend", "LMConfig", "build_backend"]


def build_backend(cfg: LMConfig) -> LMBackend:
    return LM_BACKENDS.get(cfg.backend)(cfg)
