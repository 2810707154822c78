"""Typed configuration of the Serve application: what is loaded, limits on requests, where it listens."""

from __future__ import annotations

from typing import Literal

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
    max_body_bytes: int = Field(65536, ge=1024, description="Largest request body; beyond it 413, before parsing")
    request_timeout_s: float = Field(600, gt=0, description="End-to-end limit of one HTTP request (Serve answers "
                                     "408 beyond it); a 2-CPU node renders 64 anomalies in about a minute")
    max_ongoing_requests: int = Field(128, ge=1, description="Requests the ingress works on at once (each waits "
                                      "on the model replicas, which batch them)")
    max_queued_requests: int = Field(64, ge=1, description="Requests waiting for the ingress beyond those in "
                                     "flight; more are refused with `backpressure_status` and Retry-After")
    backpressure_status: Literal[429, 503] = Field(503, description="Status of a refused request (queue full)")
    retry_after_s: int = Field(5, ge=1, description="Retry-After of a refused request")


class AuthConfig(Strict):
    """Who may call the service. `token` (the default) needs a secret in the environment; `none` serves anyone
    who can reach the port, so it is refused on a non-loopback address unless `allow_open` says so."""

    mode: Literal["token", "none"] = Field("token", description="token: every route but /healthz needs "
                                           "`Authorization: Bearer <token>` (401 otherwise, before the body is "
                                           "read); none: no check")
    token_env: str = Field("KKA_SERVE_TOKEN", description="Environment variable holding the token where the app "
                           "is built (a Kubernetes Secret on clusters); missing or empty refuses to start. Only its "
                           "SHA-256 digest reaches the replicas")
    min_token_chars: int = Field(16, ge=1, description="Shorter tokens are refused as guessable")
    allow_open: bool = Field(False, description="mode none on a non-loopback host: serve anyone who can reach it")


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
    auth: AuthConfig = Field(default_factory=AuthConfig)
    limits: Limits = Field(default_factory=Limits)
    max_batch_size: int = Field(8, ge=1, description="serve.batch: requests combined into one model call")
    batch_wait_timeout_s: float = Field(0.05, ge=0, description="serve.batch: wait for more requests")
    ray: RayConfig = Field(default_factory=RayConfig)
