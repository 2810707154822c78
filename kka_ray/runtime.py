"""Joining a Ray cluster, or starting a local Ray sized for a small machine."""

from __future__ import annotations

import os

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
}


def set_env_defaults() -> None:
    for k, v in _ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)


def init_ray(cfg: RayConfig | None = None):
    """Connect to `cfg.address` or RAY_ADDRESS when given; otherwise start a fresh local Ray without a dashboard.

    The fresh start is explicit (address "local"): Ray's own default would join whatever cluster
    /tmp/ray/ray_current_cluster last named, which may be stale or a head someone else started.
    Join a `ray start` head with `--address auto` or RAY_ADDRESS (`ray job submit` sets it)."""
    import ray

    set_env_defaults()
    if ray.is_initialized():
        return ray
    cfg = cfg or RayConfig()
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(
            address="local",
            num_cpus=cfg.num_cpus or os.cpu_count(),
            include_dashboard=False,
            object_store_memory=cfg.object_store_mb * 2**20,
            log_to_driver=True,
        )
    ray.data.DataContext.get_current().enable_progress_bars = os.environ.get("KKA_PROGRESS", "1") == "1"
    return ray
