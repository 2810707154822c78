"""Ray set-up choices that keep a normal run's output readable."""

import os

import pytest

from kka_ray.runtime import dashboard_running, trainer_cls


def test_no_placement_group_cleaner_without_a_dashboard(ray_local):
    """Ray 2.60's cleaner polls the State API (a dashboard service): without a dashboard it crashed with a
    30-line traceback after every fit. The project's local Ray has no dashboard, so its trainers drop it."""
    from ray.train import ScalingConfig
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    assert not dashboard_running()
    trainer = trainer_cls()(lambda config: None, scaling_config=ScalingConfig(num_workers=1))
    callbacks = trainer._create_default_callbacks()
    assert callbacks and not any(isinstance(c, PlacementGroupCleanerCallback) for c in callbacks)


@pytest.mark.parametrize("level", ["INFO", "WARNING"])
def test_ray_train_logs_at_the_chosen_level(ray_local, monkeypatch, level):
    """--verbose (INFO) brings Ray Train's own lines back: its controller and workers log at KKA_LOG_LEVEL."""
    from ray.train import ScalingConfig

    monkeypatch.setenv("KKA_LOG_LEVEL", level)
    trainer = trainer_cls()(lambda config: None, scaling_config=ScalingConfig(num_workers=1))
    assert trainer.run_config.logging_config.log_level == level


def test_local_ray_workers_start_with_fixed_malloc_thresholds(ray_local):
    """glibc reads its thresholds when a process starts: they must be in each worker's initial environment
    (a fresh worker ran Deep SAD epochs 30% slower without them)."""
    import ray

    @ray.remote
    def start_environment() -> dict:
        with open("/proc/self/environ", "rb") as f:
            pairs = [kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv]
        return {k.decode(): v.decode() for k, v in pairs if k.startswith(b"MALLOC_")}

    keys = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")  # set by set_env_defaults unless given
    assert ray.get(start_environment.remote()) == {k: os.environ[k] for k in keys}


def test_the_driver_process_gets_the_malloc_settings_too():
    """Workers read MALLOC_*_ from their environment at start; the driver was already running when the defaults
    were set, so it sets them with mallopt (glibc accepts both values)."""
    import sys

    from kka_ray.runtime import apply_malloc_settings

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    assert apply_malloc_settings() == {"MALLOC_MMAP_THRESHOLD_": True, "MALLOC_TRIM_THRESHOLD_": True}
