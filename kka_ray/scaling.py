"""How a detector's fit scales with Ray Train workers: the same fit (data, seed, settings) with 1 worker and with
2, each worker one CPU, so the second worker is added hardware (record `scaling-<detector>`)."""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import Field

from kka_ray.config import DatasetConfig, RayConfig, Strict
from kka_ray.data import build_dataset, make_task
from kka_ray.detectors import build_detector
from kka_ray.detectors.base import AnyDetectorConfig
from kka_ray.detectors.ssd import SSDConfig
from kka_ray.metrics import auroc
from kka_ray.records import write_record
from kka_ray.runtime import init_ray


class ScalingConfig(Strict):
    name: str = Field("scaling-ssd", description="Record name: docs/results/<name>.json")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    normal_class: str | int = Field("t-shirt", description="The task fitted (label 0: fixed, not chosen)")
    seed: int = 0
    detector: AnyDetectorConfig = Field(default_factory=SSDConfig, description="A trainable detector "
                                        "(one whose config has `train`: its Ray Train workers)")
    workers: list[int] = Field(default_factory=lambda: [1, 2], min_length=2, description="Worker counts fitted")
    run_dir: str = "runs/bench"
    results_dir: str | None = "docs/results"
    ray: RayConfig = Field(default_factory=RayConfig)


def with_workers(detector, n: int):
    """The detector config with n Ray Train workers of one CPU (and one torch thread) each."""
    if not hasattr(detector, "train"):
        raise ValueError(f"detector {detector.name!r} has no `train` (Ray Train workers) to scale")
    return detector.model_copy(update={"train": detector.train.model_copy(
        update={"num_workers": n, "cpus_per_worker": 1.0, "torch_threads": 1})})


def run_scaling(cfg: ScalingConfig, command: str) -> dict[str, float]:
    init_ray(cfg.ray)
    dataset = build_dataset(cfg.dataset.name, cfg.dataset.root, cfg.dataset.image_size, cfg.dataset.options)
    task = make_task(dataset, cfg.dataset.name, [cfg.normal_class], seed=cfg.seed)
    workdir = Path(cfg.run_dir) / cfg.name
    metrics: dict[str, float] = {}
    build_detector(with_workers(cfg.detector, 1)).fit(task.train_normal.subset(range(64)), None, seed=cfg.seed,
                                                      workdir=workdir)  # warm: caches, imports, first actor
    for n in cfg.workers:
        detector = build_detector(with_workers(cfg.detector, n))
        start = time.perf_counter()
        detector.fit(task.train_normal, None, seed=cfg.seed, workdir=workdir)
        metrics[f"fit_seconds_{n}w"] = time.perf_counter() - start
        metrics[f"auroc_{n}w"] = 100 * auroc(task.test_targets, detector.score(task.test.images))
    d = cfg.detector.name
    metrics[f"scaling_2v1_{d}"] = metrics["fit_seconds_1w"] / metrics["fit_seconds_2w"]
    lines = [f"# {cfg.name}", "", f"One {d} fit on {cfg.dataset.name} / {cfg.normal_class} (seed {cfg.seed}) "
             "with each worker count, one CPU per worker (DDP: gradients averaged, the data split between "
             "workers).", "", f"Command: `{command}`", "", "| workers | fit s | test AUROC % |", "|---|---|---|"]
    lines += [f"| {n} | {metrics[f'fit_seconds_{n}w']:.0f} | {metrics[f'auroc_{n}w']:.1f} |" for n in cfg.workers]
    lines += ["", f"Speed-up from 1 to 2 workers: **{metrics[f'scaling_2v1_{d}']:.2f}x**.", ""]
    write_record(cfg.name, metrics, "\n".join(lines), [workdir] + ([Path(cfg.results_dir)] if cfg.results_dir else []),
                 command=command, extra={"config": cfg.model_dump(mode="json")})
    return metrics
