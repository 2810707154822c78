"""Small pieces every Ray Train loop here needs: the module under DDP, cross-worker sums, progress lines."""

from __future__ import annotations

import time

import ray.train
import torch

from kka_ray.runtime import quiet
from kka_ray.tracking import log_step


def worker_threads(workers) -> int:
    """Torch threads of a fit's process: `torch_threads`, else its CPU share (at least one). `workers`: a config
    with the Ray Train fields (TrainWorkers, or Deep SAD's own)."""
    return workers.torch_threads or max(1, int(workers.cpus_per_worker))


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP (for saving or inspection; train through the wrapper so gradients are synced)."""
    return model.module if hasattr(model, "module") else model


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t


def mean_over_workers(t: torch.Tensor) -> torch.Tensor:
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    return all_reduce_sum(t) / world


def world_rank() -> int:
    """This worker's rank in a Ray Train run; 0 outside one (a bare loop in a plain process)."""
    try:
        return ray.train.get_context().get_world_rank()
    except (RuntimeError, AttributeError):
        return 0


class Progress:
    """Rank 0 prints about ten lines per phase: a print, not ray.train.report, which is a synchronous round
    trip through the controller that cost seconds per call here. A tracked fit's MLflow run gets about a
    hundred points of the loss curve (tracking.log_step)."""

    def __init__(self, phase: str, steps: int):
        self.phase, self.steps, self.start = phase, steps, time.time()
        self.every, self.log_every = max(1, steps // 10), max(1, steps // 100)
        self.rank0 = world_rank() == 0 and not quiet()
        self.key = phase.replace(" ", "_") + "_loss"

    def __call__(self, step: int, loss: float) -> None:
        last = step + 1 == self.steps
        if (step + 1) % self.log_every == 0 or last:
            log_step({self.key: loss}, step + 1)
        if self.rank0 and ((step + 1) % self.every == 0 or last):
            print(f"{self.phase} {step + 1}/{self.steps} loss {loss:.5f} ({time.time() - self.start:.0f} s)",
                  flush=True)
