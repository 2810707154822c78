"""The Ray Train wiring every trainable detector shares: a TorchTrainer with the config's workers, restarts of a
fit whose worker died, and the fitted weights as the run's one kept checkpoint."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import ray
import ray.train
from pydantic import Field
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

from kka_ray.config import LOCAL_MODE, Strict
from kka_ray.resources import peak_rss_mb
from kka_ray.runtime import trainer_cls
from kka_ray.tracking import fit_run, fit_tracking


class TrainWorkers(Strict):
    """Where a detector's fit runs; every trainable detector's config has these fields under `train`."""

    num_workers: int = Field(1, ge=0, description="Ray Train workers (DDP: gloo on CPU, NCCL on GPU)" + LOCAL_MODE)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    torch_threads: int | None = Field(None, ge=1, description="Threads per worker; None = cpus_per_worker")
    max_failures: int = Field(1, ge=0, description="Ray Train restarts of a fit whose worker died; the fit "
                              "starts again from the beginning")


def fit(fit_fn: Callable, save_fn: Callable, data: dict, cfg, seed: int, name: str, workdir: Path):
    """Ray Train runs `fit_fn(data, cfg, seed, prepare_model=, prepare_loader=, rank=) -> (model, metrics)` on
    each of `cfg.train`'s workers (DDP); rank 0 hands `save_fn(folder, model)`'s folder over as the one kept
    checkpoint. Returns Ray Train's Result."""
    workers = cfg.train
    trainer = trainer_cls()(
        _worker,
        train_loop_config={"fit": fit_fn, "save": save_fn, "cfg_cls": type(cfg), "cfg": cfg.model_dump(),
                           "seed": seed, "data": ray.put(data), **fit_tracking(name)},
        scaling_config=ScalingConfig(num_workers=workers.num_workers, use_gpu=workers.use_gpu,
                                     resources_per_worker={"CPU": workers.cpus_per_worker}),
        run_config=RunConfig(name=f"{name}-{uuid.uuid4().hex[:8]}", storage_path=str(Path(workdir).resolve()),
                             failure_config=FailureConfig(max_failures=workers.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    return trainer.fit()


def _writable(data: dict) -> dict:
    """The object store hands out read-only arrays, which torch.from_numpy warns about: one private copy each."""
    return {k: np.array(v) if isinstance(v, np.ndarray) and not v.flags.writeable else v for k, v in data.items()}


def _worker(config: dict) -> None:
    import ray.train.torch
    import torch

    from kka_ray.ddp import worker_threads

    cfg = config["cfg_cls"](**config["cfg"])
    torch.set_num_threads(worker_threads(cfg.train))
    with fit_run(config):
        model, metrics = config["fit"](_writable(ray.get(config["data"])), cfg, config["seed"],
                                       prepare_model=ray.train.torch.prepare_model,
                                       prepare_loader=ray.train.torch.prepare_data_loader,
                                       rank=ray.train.get_context().get_world_rank())
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if ray.train.get_context().get_world_rank() == 0:
            config["save"](Path(tmp), model)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report({**metrics, "peak_rss_mb": peak_rss_mb()}, checkpoint=checkpoint)
