"""The Ray Train wiring every trainable detector shares: a TorchTrainer with the config's workers, restarts of a
fit whose worker died, and the fitted weights as the run's one kept checkpoint."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import ray
import ray.train
from pydantic import Field
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

from kka_ray.config import Strict
from kka_ray.runtime import trainer_cls


class TrainWorkers(Strict):
    """Where a detector's fit runs; every trainable detector's config has these fields under `train`."""

    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP: gloo on CPU, NCCL on GPU)")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    torch_threads: int | None = Field(None, ge=1, description="Threads per worker; None = cpus_per_worker")
    max_failures: int = Field(1, ge=0, description="Ray Train restarts of a fit whose worker died; the fit "
                              "starts again from the beginning")


def fit(loop: Callable[[dict], None], config: dict, workers: TrainWorkers, name: str, workdir: Path):
    """`loop(config)` on every worker; returns Ray Train's Result (metrics and checkpoint of rank 0's last
    report)."""
    trainer = trainer_cls()(
        loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=workers.num_workers, use_gpu=workers.use_gpu,
                                     resources_per_worker={"CPU": workers.cpus_per_worker}),
        run_config=RunConfig(name=f"{name}-{uuid.uuid4().hex[:8]}", storage_path=str(Path(workdir).resolve()),
                             failure_config=FailureConfig(max_failures=workers.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    return trainer.fit()


def set_threads(workers: TrainWorkers) -> None:
    import torch

    torch.set_num_threads(workers.torch_threads or max(1, int(workers.cpus_per_worker)))


def report_final(metrics: dict, write: Callable[[Path], None]) -> None:
    """Report the fit's metrics; rank 0 also hands over the checkpoint folder `write(folder)` fills."""
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if ray.train.get_context().get_world_rank() == 0:
            write(Path(tmp))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)
