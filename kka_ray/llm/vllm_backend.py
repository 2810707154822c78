"""The `vllm` backend: Ray's own vLLM integration (`ray.data.llm`) on GPU actors.

vllm itself is imported by Ray's engine stage inside the actors, never here: choosing another backend never
imports it. Not runnable on the CPU machines this project is tested on (see README).
"""

from __future__ import annotations

from functools import partial

from kka_ray.llm.base import LM_BACKENDS, LMBackend, LMConfig


def processor_config(cfg: LMConfig):
    """vLLMEngineProcessorConfig from our config: pool size, batch, tensor parallelism, LoRA."""
    from ray.data.llm import vLLMEngineProcessorConfig

    if cfg.model is None:
        raise ValueError("lm.model: the vllm backend needs a hub id or local model path (the offline GGUF default "
                         "is for the transformers backend)")
    engine_kwargs = {"tensor_parallel_size": cfg.tensor_parallel_size, "max_model_len": 2048,
                     **({"enable_lora": True, "max_lora_rank": cfg.max_lora_rank} if cfg.adapter else {}),
                     **({"dtype": cfg.dtype} if cfg.dtype != "auto" else {}),
                     **cfg.engine_kwargs}
    # Ray's engine stage reserves {"GPU": 1, "CPU": 1} per engine worker unless told otherwise; a CPU build of
    # vLLM (gpus_per_actor 0) gets bundles of CPUs only, Ray's supported way (placement_group_config).
    cpu_only = {"placement_group_config": {"bundle_per_worker": {"CPU": cfg.cpus_per_actor}}} \
        if cfg.gpus_per_actor == 0 else {}
    return vLLMEngineProcessorConfig(
        model_source=cfg.model,
        engine_kwargs=engine_kwargs,
        batch_size=cfg.batch_size,
        concurrency=cfg.actors,
        **cpu_only,
    )


def sampling_params(cfg: LMConfig, seed: int) -> dict:
    return {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_new_tokens, "seed": int(seed)}


def preprocess_row(row: dict, cfg: LMConfig) -> dict:
    """Row-specific sampling (its own seed) and, with an adapter, the LoRA request: a `model` other than the
    engine's is served as a LoRA adapter by Ray's engine stage."""
    # Our columns, named so that postprocess keeps exactly them: Ray's stages add their own (token counts,
    # logprobs, embeddings, batch ids, error columns) and that set changes between Ray versions.
    out = {**row, "sampling_params": sampling_params(cfg, row["seed"]), "kka_columns": ",".join(row)}
    if "prompt" in row:  # Ray's chat-template stage writes its own `prompt` column; keep ours aside
        out["kka_prompt"] = out.pop("prompt")
    if cfg.adapter:
        out["model"] = cfg.adapter
    return out


def postprocess_row(row: dict) -> dict:
    """Our columns (provenance), the text, its token count and time: exactly what the transformers backend
    gives, whatever Ray's engine stages add."""
    ours = [c for c in str(row["kka_columns"]).split(",") if c and c not in ("messages", "prompt")]
    keep = {k: row[k] for k in ours if k in row}
    keep["generated_text"] = row["generated_text"]
    if "kka_prompt" in row:
        keep["prompt"] = row["kka_prompt"]
    if "time_taken_llm" in row:
        keep["generation_seconds"] = float(row["time_taken_llm"])
    return {**keep, "num_generated_tokens": int(row.get("num_generated_tokens", 0))}


class VLLMGenerator:
    """One in-process vLLM engine for online serving (Ray Serve replicas): same call as HFGenerator, a row's
    seed in its SamplingParams, the adapter as a LoRARequest."""

    def __init__(self, cfg: dict):
        from vllm import LLM

        self.cfg = LMConfig(**cfg)
        self.llm = LLM(model=self.cfg.model, **processor_config(self.cfg).engine_kwargs)
        self.lora = None
        if self.cfg.adapter:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest(self.cfg.adapter, 1, self.cfg.adapter)

    def __call__(self, batch: dict) -> dict:
        import numpy as np
        from vllm import SamplingParams

        params = [SamplingParams(**sampling_params(self.cfg, s)) for s in batch["seed"]]
        outs = self.llm.chat([list(m) for m in batch["messages"]], params, lora_request=self.lora, use_tqdm=False)
        return {"generated_text": np.array([o.outputs[0].text for o in outs], dtype=object),
                "num_generated_tokens": np.array([len(o.outputs[0].token_ids) for o in outs])}


@LM_BACKENDS.register("vllm")
class VLLMBackend(LMBackend):
    generator_cls = VLLMGenerator

    def apply(self, ds):
        from ray.data.llm import build_processor

        processor = build_processor(processor_config(self.cfg), preprocess=partial(preprocess_row, cfg=self.cfg),
                                    postprocess=postprocess_row)
        return processor(ds)
