"""The model deployments behind the ingress: the language model (theta_L, with a run's adapters), the renderer
(theta_S) and, optionally, a run's confusion evaluator (theta_C). Each batches concurrent requests with
`serve.batch`. With the transformers backend the Describer loads adapters on demand with `serve.multiplexed`;
with vllm it asks Ray Serve's own LLM deployment (`ray.serve.llm`): one engine per replica, a run's adapters as
multi-LoRA models chosen per request."""

from __future__ import annotations

import asyncio
import math

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from kka_ray.llm import LM_BACKENDS, LMConfig
from kka_ray.llm.vllm_backend import engine_kwargs, lora_source
from kka_ray.render import RENDERERS, RenderConfig
from kka_ray.stages.generate import GenerateConfig, messages_for
from kka_ray.text.clean import clean

BASE = "base"  # multiplexed model id of the model without adapter (Serve refuses an empty id)
LLM_MODEL_ID = "kka-lm"  # the base model's id in the ray.serve.llm deployment; adapters are "kka-lm:<lora name>"
LINES_PER_COMPLETION = 2  # kept lines per completion, measured on SmolLM2 (686 of 300): sizes the first round


@serve.deployment
class Describer:
    """theta_L: prompts built from the request's normal descriptions, seeded sampling, the pipeline's cleaning."""

    def __init__(self, generate: dict, max_batch_size: int, batch_wait_timeout_s: float, max_rounds: int,
                 llm: DeploymentHandle | None = None, lora_names: dict[str, str] | None = None):
        self.gen = GenerateConfig(**generate)
        self.max_rounds = max_rounds
        self.llm, self.lora_names = llm, lora_names or {}
        self.encoder = None
        if self.gen.clean.similarity_threshold is not None:
            from kka_ray.text.encoder import SentenceEncoder

            self.encoder = SentenceEncoder()
        self.describe.set_max_batch_size(max_batch_size)
        self.describe.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.multiplexed(max_num_models_per_replica=3)
    async def generator(self, model_id: str):
        lm: LMConfig = self.gen.lm.model_copy(update={"adapter": None if model_id == BASE else model_id})
        return await asyncio.to_thread(LM_BACKENDS.get(lm.backend).generator_cls, lm.model_dump())

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def describe(self, jobs: list[dict]) -> list[dict]:
        """Each job: descriptions, domain, normal_names, count, seed, adapter. Rounds of sampling until every
        job has `count` kept lines (or max_rounds); jobs that share an adapter share model calls."""
        results = [{"lines": [], "rejected": 0, "keys": set()} for _ in jobs]
        for rnd in range(self.max_rounds):
            todo = [i for i, j in enumerate(jobs) if len(results[i]["lines"]) < j["count"]]
            if not todo:
                break
            for adapter in sorted({jobs[i]["adapter"] for i in todo}):
                group = [i for i in todo if jobs[i]["adapter"] == adapter]
                rows = [r for i in group for r in self._rows(jobs[i], i, rnd, results[i])]
                texts = await self._sample(adapter, rows)
                for i in group:
                    self._keep(jobs[i], results[i], [(r, t) for r, t in zip(rows, texts, strict=True)
                                                     if r["job"] == i])
        return [{"lines": r["lines"][:j["count"]], "rejected": r["rejected"]} for r, j in zip(results, jobs,
                                                                                             strict=True)]

    def _rows(self, job: dict, i: int, rnd: int, result: dict) -> list[dict]:
        missing = job["count"] - len(result["lines"])
        n = max(1, math.ceil(missing / LINES_PER_COMPLETION))
        seeds = np.random.SeedSequence([job["seed"], rnd]).generate_state(n)
        descs = job["descriptions"]
        return [{"job": i, "normal_description": descs[k % len(descs)], "seed": int(seeds[k]),
                 "messages": messages_for(self.gen, job["domain"], descs[k % len(descs)])} for k in range(n)]

    async def _sample(self, adapter: str, rows: list[dict]) -> list[str]:
        if self.llm is not None:  # one request per row: the engine batches them (continuous batching)
            return list(await asyncio.gather(*(self._chat(adapter, r) for r in rows)))
        model = await self.generator(adapter or BASE)
        texts: list[str] = []
        size = self.gen.lm.batch_size
        for s in range(0, len(rows), size):
            part = rows[s:s + size]
            messages = np.empty(len(part), dtype=object)  # one cell per row, each a list of chat turns
            for k, r in enumerate(part):
                messages[k] = r["messages"]
            batch = {"messages": messages, "seed": np.array([r["seed"] for r in part])}
            out = await asyncio.to_thread(model, batch)
            texts += [str(t) for t in out["generated_text"]]
        return texts

    async def _chat(self, adapter: str, row: dict) -> str:
        """One row through the ray.serve.llm deployment, with the row's seed; an adapter is a multiplexed LoRA
        model, loaded once per replica."""
        from ray.serve.llm.openai_api_models import ChatCompletionRequest

        lm = self.gen.lm
        model = f"{LLM_MODEL_ID}:{self.lora_names[adapter]}" if adapter else LLM_MODEL_ID
        handle = self.llm.options(stream=True, **({"multiplexed_model_id": model} if adapter else {}))
        request = ChatCompletionRequest(model=model, messages=list(row["messages"]), temperature=lm.temperature,
                                        top_p=lm.top_p, max_tokens=lm.max_new_tokens, seed=row["seed"])
        async for response in handle.chat.remote(request):
            if not hasattr(response, "choices"):  # Ray's ErrorResponse
                raise RuntimeError(f"language model {model}: {response}")
            return response.choices[0].message.content or ""
        raise RuntimeError(f"language model {model}: no response")

    def _keep(self, job: dict, result: dict, pairs: list[tuple[dict, str]]) -> None:
        raw = [{"row_id": k, "text": t, "normal_description": r["normal_description"], "seed": r["seed"],
                "prompt": r["messages"][-1]["content"]} for k, (r, t) in enumerate(pairs)]
        kept, rejected = clean(raw, job["normal_names"], (), job["descriptions"], self.gen.clean, self.encoder,
                               kept_keys=result["keys"])
        result["lines"] += kept
        result["rejected"] += len(rejected)


@serve.deployment
class Renderer:
    """theta_S: one loaded pipeline; concurrent requests' descriptions are rendered together."""

    def __init__(self, render: dict, size: int, channels: int, max_batch_size: int, batch_wait_timeout_s: float):
        cfg = RenderConfig(**render)
        self.actor = RENDERERS.get(cfg.backend).actor_cls(cfg.model_dump(), size, channels)
        self.render.set_max_batch_size(max_batch_size)
        self.render.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def render(self, jobs: list[dict]) -> list[dict]:
        """Each job: sentences and seeds -> uint8 images and their render seeds."""
        sentences = [s for j in jobs for s in j["sentences"]]
        seeds = [s for j in jobs for s in j["seeds"]]
        out = await asyncio.to_thread(self.actor, {"sentence": np.array(sentences, dtype=object),
                                                   "seed": np.array(seeds, dtype=np.int64)})
        results, start = [], 0
        for j in jobs:
            end = start + len(j["sentences"])
            results.append({"images": out["image"][start:end], "render_seeds": out["render_seed"][start:end]})
            start = end
        return results


@serve.deployment
class Evaluator:
    """theta_C of a KKA run: distance to c, and hard = inside the run's validation boundary (Eq. 6)."""

    def __init__(self, checkpoint_dir: str, boundary: float):
        import ray.train

        from kka_ray.detectors.deepsad.train import DeepSADScorer

        self.scorer = DeepSADScorer(ray.train.Checkpoint.from_directory(checkpoint_dir))
        self.boundary = boundary

    async def score(self, images: np.ndarray) -> dict:
        out = await asyncio.to_thread(self.scorer, {"row": np.arange(len(images)), "image": images})
        distance = out["score"].astype(float)
        return {"distance": distance, "hard": distance < self.boundary, "boundary": self.boundary}


def llm_deployment(lm: LMConfig, adapters: dict[int, str]) -> tuple[object, dict[str, str]]:
    """theta_L as Ray Serve's own LLM deployment (vllm backend) and the LoRA name of each adapter.

    Ray Serve loads LoRA adapters only from object storage (`dynamic_lora_loading_path`: s3://, gs://, abfss://,
    azure://) into each replica, so a run served with adapters must live there; all its adapters share the run's
    folder as that path.
    """
    from ray.serve.llm import LLMConfig, build_llm_deployment

    if lm.model is None:
        raise ValueError("generate.lm.model: the vllm backend needs a hub id or local model path")
    uris = sorted({a for a in adapters.values() if a})
    local = [a for a in uris if "://" not in a]
    if local:
        raise ValueError(f"serve run: adapters {local} are local; Ray Serve's LLM deployment loads LoRA adapters "
                         "only from s3://, gs://, abfss:// or azure:// (put the run folder there, or serve with "
                         "generate.lm.backend=transformers)")
    sources = {a: lora_source(a) for a in uris}
    roots = {root for root, _ in sources.values()}
    if len(roots) > 1:
        raise ValueError(f"serve run: adapters under several folders {sorted(roots)}; expected one run folder")
    config = LLMConfig(
        model_loading_config={"model_id": LLM_MODEL_ID, "model_source": lm.model},
        engine_kwargs=engine_kwargs(lm.model_copy(update={"adapter": uris[0] if uris else None})),
        lora_config={"dynamic_lora_loading_path": roots.pop(), "max_num_adapters_per_replica": len(uris)}
        if uris else None,
        # the replica actor only relays to its engine: no CPU of its own (Ray merges it into the engine's bundle,
        # one CPU by default, which on a small node starves the other deployments)
        deployment_config={"num_replicas": lm.actors, "ray_actor_options": {"num_cpus": 0}},
        # a CPU build of vLLM: bundles of CPUs only (Ray's default bundle asks for a GPU)
        **({"placement_group_config": {"bundles": [{"CPU": lm.cpus_per_actor}]}} if lm.gpus_per_actor == 0
           else {}))
    return build_llm_deployment(config, name_prefix="kka-"), {a: name for a, (_, name) in sources.items()}
