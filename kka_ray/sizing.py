"""GPU sizing on paper: wall time and GPU-hours of a KKA run from per-stage work and per-GPU throughputs.

The model (docs/scaling.md): a run is `tasks` independent tasks; a task is its stages in sequence, each stage
`runs` times (e.g. once per KKA iteration). On N GPUs at most min(tasks, N) tasks run at once, in waves; each
task of a wave gets an equal share of the GPUs, and a stage uses at most `max_gpus` of them: a Ray Data actor
pool (`pool`) scales linearly, Ray Train DDP (`ddp`) by `ddp_efficiency` x GPUs. Every run of a stage
pays its model load once on the wall clock (the actors load side by side) and once per GPU in GPU-hours.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from kka_ray.config import Strict


class Stage(Strict):
    """The work of one stage of one task."""

    unit: str = Field(description="What per_run counts: tokens, images, image passes, steps")
    per_run: float = Field(gt=0, description="Units of work per run")
    runs: int = Field(ge=1, description="Runs per task (e.g. T + 1 iterations)")
    parallel: Literal["pool", "ddp"] = Field(description="pool: independent actors; ddp: Ray Train workers")
    max_gpus: int = Field(1, ge=1, description="The widest useful split of one run")
    source: str = Field("", description="Where per_run and runs come from")


class Workload(Strict):
    tasks: int = Field(ge=1, description="Independent tasks (CIFAR-100: 20 superclasses)")
    stages: dict[str, Stage] = Field(min_length=1, description="Stages of one task, in the order they run")


class Throughput(Strict):
    """One stage's speed on one reference GPU."""

    per_s: float = Field(gt=0, description="Units of work per second on one GPU")
    load_s: float = Field(0.0, ge=0, description="Model load / worker start-up per actor, paid every run")
    kind: Literal["public", "derived", "assumption"] = Field(description="public figure, derived, or assumed")
    source: str = Field(description="URL or paper, or the reasoning behind an assumption")


class Estimate(BaseModel):
    gpus: int
    concurrent_tasks: int
    waves: list[tuple[int, int, int]] = Field(description="(waves, tasks per wave, GPUs per task), in order")
    wall_hours: float
    gpu_hours: float = Field(description="GPUs held for the whole run: gpus x wall")
    busy_gpu_hours: float = Field(description="GPU time doing work or loading models")
    stage_hours: dict[str, float] = Field(description="Wall-clock hours each stage adds; they sum to wall_hours")
    bound: str = Field(description="The stage with the largest share of the wall time")


def stage_seconds(stage: Stage, tp: Throughput, gpus: int, ddp_efficiency: float) -> tuple[float, float]:
    """Wall seconds and GPU-seconds of all runs of one stage of one task given `gpus` GPUs."""
    used = min(gpus, stage.max_gpus)
    speedup = used if stage.parallel == "pool" or used == 1 else used * ddp_efficiency
    per_run = tp.load_s + stage.per_run / (tp.per_s * speedup)
    return stage.runs * per_run, stage.runs * per_run * used


def estimate(workload: Workload, throughput: dict[str, Throughput], gpus: int,
             ddp_efficiency: float = 0.9) -> Estimate:
    """Wall time and GPU-hours of `workload` on `gpus` GPUs with per-GPU `throughput` for each stage."""
    if gpus < 1 or not 0 < ddp_efficiency <= 1:
        raise ValueError(f"need gpus >= 1 and 0 < ddp_efficiency <= 1, got {gpus}, {ddp_efficiency}")
    missing = set(workload.stages) - set(throughput)
    if missing:
        raise ValueError(f"no throughput for stage(s) {sorted(missing)}")
    concurrent = min(workload.tasks, gpus)
    full, rest = divmod(workload.tasks, concurrent)
    # Full waves split the GPUs evenly; a last, smaller wave gives its few tasks the whole cluster.
    waves = [(full, concurrent, gpus // concurrent)] + ([(1, rest, gpus // rest)] if rest else [])
    stage_s = dict.fromkeys(workload.stages, 0.0)
    busy_s = 0.0
    for count, tasks, per_task in waves:
        for name, stage in workload.stages.items():
            wall, busy = stage_seconds(stage, throughput[name], per_task, ddp_efficiency)
            stage_s[name] += count * wall  # the tasks of a wave run side by side: one task's time is the wave's
            busy_s += count * tasks * busy
    wall_h = sum(stage_s.values()) / 3600
    return Estimate(gpus=gpus, concurrent_tasks=concurrent, waves=waves, wall_hours=wall_h,
                    gpu_hours=gpus * wall_h, busy_gpu_hours=busy_s / 3600,
                    stage_hours={k: v / 3600 for k, v in stage_s.items()}, bound=max(stage_s, key=stage_s.get))


class CpuFigure(Strict):
    """A figure measured on this repo's CPU machine, read from a record in docs/results at run time."""

    record: str = Field(description="Record name: docs/results/<record>.json")
    metric: str
    per: str | None = Field(None, description="Divide by this metric of the same record (e.g. seconds per task)")
    unit: str
    note: str = ""


class SizingConfig(Strict):
    name: str = "gpu-sizing"
    reference_gpu: str = Field(description="The GPU the per-GPU figures are for")
    gpus: list[int] = Field(default_factory=lambda: [1, 8, 64], min_length=1)
    ddp_efficiency: float = Field(0.9, gt=0, le=1, description="Speed-up per GPU of a DDP stage beyond one GPU")
    workload: Workload
    throughput: dict[str, Throughput]
    cpu: dict[str, CpuFigure] = Field(default_factory=dict, description="CPU column of the page, by stage")
    records_dir: str = Field("docs/results", description="Where the CPU records are read")
    notes: list[str] = Field(default_factory=list, description="Caveats printed on the page")
