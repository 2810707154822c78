"""Joining a Ray cluster, or starting a local Ray sized for a small machine."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from kka_ray.config import RayConfig

# Quiet, offline defaults; an explicit environment wins.
_ENV_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_TRAIN_V2_ENABLED": "1",
    # Train V2 routes workers' print through a logger and tees it to any swapped sys.stdout: every progress line
    # reached the driver twice, and dill's stdout capture of dis.dis (datasets' fingerprinting in trl) leaked
    # pages of bytecode into the DPO logs. Plain prints reach the driver once through log_to_driver.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    # The Train controller polls its workers every 2 s by default: a finished fit waited up to that long to
    # return, 3-4 s in all per fit (measured). A poll of a local actor costs far less than that.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
    # glibc's malloc starts by mmapping blocks over 128 KB and hands freed heap tops back to the OS, so a fresh
    # process re-faults its activation buffers batch after batch until the thresholds adapt: a Deep SAD
    # autoencoder epoch took 1.45-1.52 s in a new process against 1.06 s in the next fit of the same one, and
    # 1.05 s from the start with these (2-core EPYC). Every Ray worker is a new process. Read at process start, so
    # they reach the workers of a local Ray (started after this) and, from cluster/runtime_env.yaml, a cluster's.
    "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
    "MALLOC_TRIM_THRESHOLD_": str(4 * 2**30),
}


# Ray's own INFO lines (Ray Train's worker-group start-up and checkpoint reports, Ray Data's execution plans)
# repeat for every fit and every pool; the project prints its own progress. KKA_LOG_LEVEL (--verbose / --quiet)
# sets the level of Ray's Python loggers in the driver and of Ray Train's in its controller and workers.
RAY_LOGGERS = ("ray.train", "ray.data", "ray.tune", "ray.air")


def ray_log_level() -> str:
    return os.environ.get("KKA_LOG_LEVEL", "WARNING").upper()


def quiet_ray_loggers() -> None:
    """The driver's Ray loggers at KKA_LOG_LEVEL."""
    import logging

    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(ray_log_level())


def quiet() -> bool:
    """--quiet: no progress lines (warnings, errors and final reports still print)."""
    return os.environ.get("KKA_QUIET", "0") == "1"


# mallopt parameters of the two settings above (glibc's malloc.h).
_MALLOPT = {"MALLOC_MMAP_THRESHOLD_": -3, "MALLOC_TRIM_THRESHOLD_": -1}


def set_env_defaults() -> None:
    for k, v in _ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)
    apply_malloc_settings()


@functools.cache
def apply_malloc_settings() -> dict[str, bool]:
    """The malloc settings for this process too: its environment was read at its start, so a driver started as
    `python jobs/...` (not through make, which exports them) ran its own fits and bare loops without them.
    Returns whether glibc accepted each (empty where the C library is not glibc)."""
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): nothing to set
        return {}
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # mallopt's value is a C int: the 4 GiB trim threshold (read as a size_t from the environment) wrapped to 0
    # there, and glibc accepted it, so the driver handed its heap top back on every free and re-faulted it (about
    # 190x the page faults and 3x the time of a 16 MiB allocation). INT_MAX bytes keeps the heap just the same.
    return {key: mallopt(param, min(int(os.environ.get(key, _ENV_DEFAULTS[key])), 2**31 - 1)) == 1
            for key, param in _MALLOPT.items()}


def init_ray(cfg: RayConfig | None = None):
    """Connect to `cfg.address` or RAY_ADDRESS when given; otherwise start a fresh local Ray without a dashboard.

    The fresh start is explicit (address "local"): Ray's own default would join whatever cluster
    /tmp/ray/ray_current_cluster last named, which may be stale or a head someone else started.
    Join a `ray start` head with `--address auto` or RAY_ADDRESS (`ray job submit` sets it)."""
    import ray

    set_env_defaults()
    quiet_ray_loggers()
    if ray.is_initialized():
        return ray
    cfg = cfg or RayConfig()
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # A single local node has no preemption to watch (it ends the run with it); the watcher is one more actor
        # per fit to start on the fit's critical path. A user's explicit setting still wins.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        ray.init(
            address="local",
            num_cpus=cfg.num_cpus or os.cpu_count(),
            include_dashboard=False,
            object_store_memory=cfg.object_store_mb * 2**20,
            log_to_driver=True,
            runtime_env={"env_vars": {k: os.environ[k] for k in ("KKA_QUIET",) if k in os.environ}},
        )
    ray.data.DataContext.get_current().enable_progress_bars = os.environ.get("KKA_PROGRESS", "1") == "1"
    return ray


def dashboard_running() -> bool:
    """Whether the connected Ray has a dashboard (and with it the State API)."""
    import ray._private.worker

    return bool(ray._private.worker.get_dashboard_url())


@functools.cache
def trainer_cls():
    """Ray Train's TorchTrainer with its log level from KKA_LOG_LEVEL, and without its placement-group cleaner on
    a Ray without a dashboard: the cleaner (Ray 2.60) polls the State API, which lives in the dashboard, and there
    it crashes with a 30-line traceback on every fit, cleaning nothing. With a dashboard (a `ray start` head, a
    cluster) it is kept. With `num_workers=0` it runs Ray Train's local mode: the fit runs in the calling process,
    without the controller and worker actors whose start costs 4-6 s a fit on 2 cores (see `_local_fit`)."""
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    class Trainer(TorchTrainer):
        def __init__(self, train_loop_per_worker, *args, run_config=None, **kwargs):
            from ray.train import LoggingConfig, RunConfig

            run_config = run_config or RunConfig()
            run_config.logging_config = LoggingConfig(log_level=ray_log_level())  # its controller and workers
            super().__init__(_quiet_worker(train_loop_per_worker, ray_log_level()), *args, run_config=run_config,
                             **kwargs)

        def _initialize_and_run_local_controller(self, train_func):
            return super()._initialize_and_run_local_controller(
                _local_fit(train_func, Path(self.run_config.storage_path) / self.run_config.name))

        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            if dashboard_running():
                return callbacks
            return [c for c in callbacks if not isinstance(c, PlacementGroupCleanerCallback)]

    return Trainer


def _local_fit(train_func, folder: Path):
    """`train_func` for Ray Train's local mode. There a reported checkpoint stays the folder the function named,
    and ours are temporary folders: each is copied under the run's storage, as a worker's report would be, and
    replaces the one before (the fits keep one checkpoint). The function sets its own torch threads; the calling
    process gets its own back."""
    import itertools
    import shutil

    import ray.train
    import torch
    from ray.train.v2._internal.execution.train_fn_utils import get_train_fn_utils

    def run():
        utils = get_train_fn_utils()
        report, numbers = utils.report, itertools.count()

        def persisted(metrics, checkpoint=None, **kwargs):
            if checkpoint is not None:
                folder.mkdir(parents=True, exist_ok=True)
                final = folder / f"checkpoint_{next(numbers):06d}"
                tmp = folder / f".{final.name}.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                checkpoint.to_directory(str(tmp))
                tmp.rename(final)
                for old in folder.glob("checkpoint_*"):
                    if old != final:
                        shutil.rmtree(old)
                checkpoint = ray.train.Checkpoint(str(final))
            report(metrics, checkpoint, **kwargs)

        utils.report = persisted
        threads = torch.get_num_threads()
        try:
            return train_func()
        finally:
            torch.set_num_threads(threads)

    return run


def _quiet_worker(loop, level: str):
    """`loop(config)` with Ray Train's per-report INFO line at `level` too: it logs through a logger named by
    its file path, outside `ray.train` (Ray 2.60), which LoggingConfig does not reach."""

    @functools.wraps(loop)
    def run(config):
        import logging

        from ray.train.v2._internal.execution import context

        logging.getLogger(context.__file__).setLevel(level)
        return loop(config)

    return run
