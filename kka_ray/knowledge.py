"""The knowledge stage as one job: task -> representatives (Eq. 1-2) -> anomaly descriptions (Eq. 3)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from pydantic import Field

from kka_ray.config import DatasetConfig, RayConfig, Strict, save_config
from kka_ray.data import build_dataset, make_task
from kka_ray.stages.generate import (
    GenerateConfig,
    GenerationResult,
    NormalContext,
    generate_descriptions,
    normal_context,
)
from kka_ray.stages.select import Representative, SelectConfig, representatives_table, run_select


class KnowledgeConfig(Strict):
    name: str = Field("knowledge", description="Run name: outputs go to <run_dir>/<name>/")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    normal_classes: list[str | int] = Field(default_factory=lambda: ["shirt"], min_length=1)
    seed: int = Field(0, description="Task split seed")
    val_fraction: float = Field(0.1, gt=0, lt=1)
    iteration: int = Field(0, ge=0, description="KKA iteration recorded in the provenance")
    select: SelectConfig = Field(default_factory=SelectConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    run_dir: str = "runs"
    ray: RayConfig = Field(default_factory=RayConfig)


@dataclass
class KnowledgeRun:
    reps: list[Representative]
    ctx: NormalContext
    result: GenerationResult
    run_dir: Path


def run_knowledge(cfg: KnowledgeConfig) -> KnowledgeRun:
    """Select representatives and generate descriptions; writes Parquet tables and the config to the run dir."""
    from kka_ray.runtime import init_ray

    run = Path(cfg.run_dir) / cfg.name
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / "config.yaml")
    init_ray(cfg.ray)
    dataset = build_dataset(cfg.dataset.name, cfg.dataset.root, cfg.dataset.image_size, cfg.dataset.options)
    task = make_task(dataset, cfg.dataset.name, cfg.normal_classes, seed=cfg.seed, val_fraction=cfg.val_fraction)
    reps = run_select(task.train_normal, cfg.select)
    pq.write_table(representatives_table(reps), run / "representatives.parquet")
    ctx = normal_context(task, cfg.generate)
    result = generate_descriptions(reps, ctx, cfg.generate, cfg.iteration)
    pq.write_table(result.descriptions, run / "descriptions.parquet")
    pq.write_table(result.rejects, run / "rejects.parquet")
    return KnowledgeRun(reps, ctx, result, run)


def report(k: KnowledgeRun, n_samples: int = 8) -> str:
    reps, result, run, s = k.reps, k.result, k.run_dir, k.result.stats
    reasons = ", ".join(f"{k.removeprefix('rejected_')} {int(v)}" for k, v in s.items() if k.startswith("rejected_"))
    lines = [
        f"representatives: {len(reps)}: " + "; ".join(sorted({r.description for r in reps})),
        f"completions {int(s['completions'])}, lines {int(s['lines'])}: kept {int(s['kept'])}, dropped "
        f"{int(s['lines'] - s['kept'])} ({reasons or 'none'})",
        f"tokens {int(s['tokens'])} in {s['seconds']:.1f} s: {s.get('tokens_per_s', s['tokens_per_s_wall']):.1f} "
        f"tokens/s while generating, {s['tokens_per_s_wall']:.1f} tokens/s end to end",
        "sample:",
        *[f"  - {t}" for t in result.descriptions.column("sentence").to_pylist()[:n_samples]],
        f"outputs: {run}/descriptions.parquet, rejects.parquet, representatives.parquet, config.yaml",
    ]
    return "\n".join(lines)


def bare_throughput(reps: list[Representative], ctx: NormalContext, cfg: GenerateConfig,
                    iteration: int) -> dict[str, float]:
    """The same model, prompts and batch size in a plain loop in this process, without Ray: the yardstick for
    the pool's overhead. Timed like the pool, from the first batch's start to the last batch's end."""
    import torch

    from kka_ray.llm.hf import HFGenerator
    from kka_ray.stages.generate import prompt_table

    table = prompt_table(reps, ctx, cfg, iteration)
    gen = HFGenerator(cfg.lm.model_dump())
    tokens, start, end = 0, None, None
    with torch.inference_mode():
        for i in range(0, len(table), cfg.lm.batch_size):
            part = table.slice(i, cfg.lm.batch_size)
            out = gen({"messages": np.array(part.column("messages").to_pylist(), dtype=object),
                       "seed": part.column("seed").to_numpy()})
            tokens += int(out["num_generated_tokens"].sum())
            start = out["batch_start"][0] if start is None else start
            end = out["batch_end"][0]
    return {"bare_tokens": float(tokens), "bare_tokens_per_s": tokens / (end - start)}
