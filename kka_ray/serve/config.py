"""Typed configuration of the Serve application: what is loaded, limits on requests, where it listens."""

from __future__ import annotations

from pydantic import Field

from kka_ray.config import RayConfig, Strict
from kka_ray.llm import LMConfig
from kka_ray.render import RenderConfig
from kka_ray.stages.generate import GenerateConfig


class Limits(Strict):
    max_count: int = Field(64, ge=1, description="Most anomalies one request may ask for")
    max_descriptions: int = Field(8, ge=1, description="Most normal descriptions one request may carry")
    max_text_chars: int = Field(300, ge=1, description="Longest normal description / domain, in characters")
    max_rounds: int = Field(4, ge=1, description="Generation rounds before answering with fewer than `count` "
                            "(cleaning rejects some lines)")


class ServeConfig(Strict):
    generate: GenerateConfig = Field(default_factory=lambda: GenerateConfig(
        lm=LMConfig(cpus_per_actor=1, batch_size=16)), description="Prompt, sampling model and cleaning")
    render: RenderConfig = Field(default_factory=lambda: RenderConfig(cpus_per_actor=1, batch_size=16,
                                                                      disable_safety_checker=True))
    run: str | None = Field(None, description="A KKA run folder: its adapters (request `iteration`) and its last "
                            "evaluator (hardness) are served; None = base model, no evaluator")
    image_size: int = Field(28, ge=8, description="Side of returned images (a run's task size wins)")
    channels: int = Field(1, description="1 = grey, 3 = RGB (a run's task wins)")
    host: str = Field("127.0.0.1", description="Listen address (loopback unless configured otherwise)")
    port: int = Field(8000, ge=1, le=65535)
    token_env: str = Field("KKA_SERVE_TOKEN", description="Environment variable holding the bearer token; when "
                           "it is set, every request but /healthz must carry it")
    limits: Limits = Field(default_factory=Limits)
    max_batch_size: int = Field(8, ge=1, description="serve.batch: requests combined into one model call")
    batch_wait_timeout_s: float = Field(0.05, ge=0, description="serve.batch: wait for more requests")
    ray: RayConfig = Field(default_factory=RayConfig)
