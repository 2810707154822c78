"""The `vllm` backend: Ray's own vLLM integration (`ray.data.llm`), on GPU actors or a CPU build of vLLM.

vllm itself is imported by Ray's engine stage inside the actors, never here: choosing another backend never
imports it. Its rows carry exactly the columns of the transformers backend (tests/vllm_tier checks both on one model).
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

from kka_ray.llm.base import LM_BACKENDS, LMBackend, LMConfig

# Where Ray's LoRA loader downloads adapters from (ray.llm's is_remote_path).
REMOTE_SCHEMES = ("s3://", "gs://", "abfss://", "azure://")


def lora_source(adapter: str) -> tuple[str | None, str]:
    """(dynamic_lora_loading_path, LoRA name) of an adapter location.

    Ray's engine stage loads the adapter named `name` from `<path>/<name>` onto each engine's node and refuses a
    URI as the name; a local path is read where the engine runs (a shared file system on several nodes). The
    name keeps the adapter's last two folders (a run's `iter_<t>/adapter`): it also names Ray's download cache.
    """
    if "://" not in adapter:
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"lm.adapter {adapter}: no adapter_config.json there")
        return None, adapter
    if not adapter.startswith(REMOTE_SCHEMES):
        raise ValueError(f"lm.adapter {adapter}: the vllm backend loads adapters from a local path or from "
                         f"{', '.join(REMOTE_SCHEMES)} (Ray's dynamic_lora_loading_path)")
    scheme, rest = adapter.split("://", 1)
    parts = [p for p in rest.split("/") if p]
    if len(parts) < 2:
        raise ValueError(f"lm.adapter {adapter}: expected <bucket>/<folder>, the adapter's own folder")
    keep = 2 if len(parts) > 2 else 1
    return f"{scheme}://{'/'.join(parts[:-keep])}", "/".join(parts[-keep:])


def engine_kwargs(cfg: LMConfig) -> dict:
    """vLLM engine arguments from our config; the context length is the model's unless configured."""
    return {"tensor_parallel_size": cfg.tensor_parallel_size,
            **({"max_model_len": cfg.max_model_len} if cfg.max_model_len else {}),
            **({"enable_lora": True, "max_lora_rank": cfg.max_lora_rank} if cfg.adapter else {}),
            **({"dtype": cfg.dtype} if cfg.dtype != "auto" else {}),
            **cfg.engine_kwargs}


def processor_config(cfg: LMConfig):
    """vLLMEngineProcessorConfig from our config: a fixed pool of `actors` engines, batch, parallelism, LoRA."""
    from ray.data.llm import vLLMEngineProcessorConfig

    if cfg.model is None:
        raise ValueError("lm.model: the vllm backend needs a hub id or local model path (the offline GGUF default "
                         "is for the transformers backend)")
    # Ray's engine stage reserves {"GPU": 1, "CPU": 1} per engine worker unless told otherwise; a CPU build of
    # vLLM (gpus_per_actor 0) gets bundles of CPUs only, Ray's supported way (placement_group_config).
    cpu_only = {"placement_group_config": {"bundle_per_worker": {"CPU": cfg.cpus_per_actor}}} \
        if cfg.gpus_per_actor == 0 else {}
    lora_path = lora_source(cfg.adapter)[0] if cfg.adapter else None
    return vLLMEngineProcessorConfig(
        model_source=cfg.model,
        engine_kwargs=engine_kwargs(cfg),
        batch_size=cfg.batch_size,
        concurrency=(cfg.actors, cfg.actors),  # an int would be an autoscaling pool of 1..actors
        **({"dynamic_lora_loading_path": lora_path} if lora_path else {}),
        **cpu_only,
    )


def sampling_params(cfg: LMConfig, seed: int) -> dict:
    return {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_new_tokens, "seed": int(seed)}


def preprocess_row(row: dict, cfg: LMConfig, lora: str | None = None) -> dict:
    """Row-specific sampling (its own seed) and, with an adapter, the LoRA request: a `model` other than the
    engine's (`lora`, the adapter's name from lora_source, found once per stage) is served as a LoRA adapter by
    Ray's engine stage."""
    # Our columns, named so that postprocess keeps exactly them: Ray's stages add their own (token counts,
    # logprobs, embeddings, batch ids, error columns) and that set changes between Ray versions.
    out = {**row, "sampling_params": sampling_params(cfg, row["seed"]), "kka_columns": ",".join(row)}
    if "prompt" in row:  # Ray's chat-template stage writes its own `prompt` column; keep ours aside
        out["kka_prompt"] = out.pop("prompt")
    if lora:
        out["model"] = lora
    return out


def postprocess_row(row: dict, special_ids: frozenset[int] = frozenset()) -> dict:
    """Our columns (provenance), the text and what the transformers backend adds, whatever Ray's engine stages
    add. Tokens are counted without special ones (vLLM counts the EOS token; the cleaner's `truncated` rule
    compares the count with max_new_tokens). A row's time is its own request's (vLLM schedules requests, not
    batches): it ended when its row left the engine."""
    ours = [c for c in str(row["kka_columns"]).split(",") if c and c not in ("messages", "prompt")]
    keep = {k: row[k] for k in ours if k in row}
    if "kka_prompt" in row:
        keep["prompt"] = row["kka_prompt"]
    end, seconds = time.time(), float(row.get("time_taken_llm", 0.0))
    tokens = [int(t) for t in row.get("generated_tokens", ()) if int(t) not in special_ids]
    return {**keep, "generated_text": row["generated_text"], "num_generated_tokens": len(tokens),
            "generation_seconds": seconds, "batch_start": end - seconds, "batch_end": end}


def special_token_ids(model: str) -> frozenset[int]:
    from transformers import AutoTokenizer

    return frozenset(AutoTokenizer.from_pretrained(model).all_special_ids)


class VLLMGenerator:
    """One in-process vLLM engine (benchmarks, and the batch path's reference): same call as HFGenerator, a
    row's seed in its SamplingParams, the adapter as a LoRARequest."""

    def __init__(self, cfg: dict):
        from vllm import LLM

        self.cfg = LMConfig(**cfg)
        self.llm = LLM(model=self.cfg.model, **engine_kwargs(self.cfg))
        self.special = special_token_ids(self.cfg.model)
        self.lora = None
        if self.cfg.adapter:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("adapter", 1, self.cfg.adapter)

    def __call__(self, batch: dict) -> dict:
        import numpy as np
        from vllm import SamplingParams

        start = time.time()
        params = [SamplingParams(**sampling_params(self.cfg, s)) for s in batch["seed"]]
        outs = self.llm.chat([list(m) for m in batch["messages"]], params, lora_request=self.lora, use_tqdm=False)
        end = time.time()
        n = len(outs)
        return {**{k: v for k, v in batch.items() if k != "messages"},
                "generated_text": np.array([o.outputs[0].text for o in outs], dtype=object),
                "num_generated_tokens": np.array([sum(t not in self.special for t in o.outputs[0].token_ids)
                                                  for o in outs], dtype=np.int64),
                "generation_seconds": np.full(n, end - start), "batch_start": np.full(n, start),
                "batch_end": np.full(n, end)}


@LM_BACKENDS.register("vllm")
class VLLMBackend(LMBackend):
    generator_cls = VLLMGenerator

    def apply(self, ds):
        from ray.data.llm import build_processor

        lora = lora_source(self.cfg.adapter)[1] if self.cfg.adapter else None
        processor = build_processor(
            processor_config(self.cfg), preprocess=partial(preprocess_row, cfg=self.cfg, lora=lora),
            postprocess=partial(postprocess_row, special_ids=special_token_ids(self.cfg.model)))
        return processor(ds)
