"""Benchmark the knowledge stage: kept descriptions, diversity, and the Ray pool's throughput against a bare loop.

    python jobs/bench_knowledge.py --config configs/knowledge/fmnist_shirt.yaml [--set name=...]
Writes docs/results/knowledge-fmnist.json (+ .md) unless --record names another record.
"""

import numpy as np
import pyarrow.compute as pc

from kka_ray.cli import parse_config, parser
from kka_ray.knowledge import KnowledgeConfig, bare_throughput, report, run_knowledge
from kka_ray.records import invoked_command, write_record


def markdown(cfg: KnowledgeConfig, metrics: dict, result, command: str, seed: int = 0) -> str:
    kept = result.descriptions.take(sample_rows(len(result.descriptions), 20, seed))
    rejects = result.rejects.take(sample_rows(len(result.rejects), 10, seed))
    m = metrics
    lines = [
        "# Knowledge stage on Fashion-MNIST (normal: " + ", ".join(map(str, cfg.normal_classes)) + ")",
        "",
        f"Command: `{command}`",
        "",
        f"Language model {result.descriptions.column('model')[0]} ({cfg.generate.lm.backend} backend, batch "
        f"{cfg.generate.lm.batch_size}, temperature {cfg.generate.lm.temperature}, top-p {cfg.generate.lm.top_p}, "
        f"{cfg.generate.lm.max_new_tokens} new tokens), {cfg.select.k} representatives x "
        f"{cfg.generate.samples_per_representative} samples.",
        "",
        "| metric | value |", "|---|---|",
        *[f"| {k} | {v:.3f} |" if isinstance(v, float) and not v.is_integer() else f"| {k} | {int(v)} |"
          for k, v in m.items()],
        "",
        "`tokens_per_s`: the Ray Data actor pool (one actor, 2 CPUs) from its first batch's start to its last "
        "batch's end; `bare_tokens_per_s`: the same model class, prompts and batch size in a plain loop without "
        "Ray, timed the same way; `ray_overhead_ratio` = pool / bare. `unique_ratio` = kept (all unique) / "
        "generated lines.",
        "",
        "## 20 sampled kept descriptions",
        "",
        *[f"- {s}" for s in kept.column("sentence").to_pylist()],
        "",
        "## 10 sampled rejects",
        "",
        "| reason | line |", "|---|---|",
        *[f"| {r} | {s!r} |" for r, s in zip(rejects.column("reason").to_pylist(),
                                              rejects.column("sentence").to_pylist(), strict=True)],
        "",
    ]
    return "\n".join(lines)


def sample_rows(n: int, k: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=min(n, k), replace=False))


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0], KnowledgeConfig)
    p.add_argument("--record", default="knowledge-fmnist", help="record name in docs/results/")
    args = p.parse_args(argv)
    cfg = parse_config(KnowledgeConfig, args)
    run = run_knowledge(cfg)
    print(report(run))
    bare = bare_throughput(run.reps, run.ctx, cfg.generate, cfg.iteration)
    result = run.result
    s = result.stats
    unique = len(pc.unique(pc.utf8_lower(result.descriptions.column("sentence"))))
    metrics = {
        "kept": s["kept"], "generated_lines": s["lines"], "completions": s["completions"],
        "unique_ratio": unique / s["lines"], "tokens": s["tokens"], "tokens_per_s": s["tokens_per_s"],
        "tokens_per_s_end_to_end": s["tokens_per_s_wall"], "bare_tokens_per_s": bare["bare_tokens_per_s"],
        "ray_overhead_ratio": s["tokens_per_s"] / bare["bare_tokens_per_s"], "seconds": s["seconds"],
        **{k: v for k, v in s.items() if k.startswith("rejected_")},
    }
    command = invoked_command()
    write_record(args.record, metrics, markdown(cfg, metrics, result, command), "docs/results", command=command,
                 extra={"config": cfg.model_dump(mode="json")})
    print(f"pool {metrics['tokens_per_s']:.1f} tokens/s, bare {metrics['bare_tokens_per_s']:.1f} tokens/s, "
          f"ratio {metrics['ray_overhead_ratio']:.3f}; record docs/results/{args.record}.json")
