"""Ray set-up choices that keep a normal run's output readable."""

import os
import subprocess
import sys

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


# What Ray worker processes unpickle, and the libraries they must not load: each process pays its own imports
# (seconds on a small CPU), and Ray starts one per fit, actor pool and DPO round.
WORKER_IMPORTS = {
    "deepsad-train": ("kka_ray.detectors.trainer, kka_ray.detectors.deepsad.train, kka_ray.config; "
                      "from kka_ray.detectors import DETECTORS; DETECTORS.get('deepsad')",
                      ("sklearn", "transformers", "diffusers", "kka_ray.detectors.knn", "kka_ray.detectors.ssd",
                       "kka_ray.detectors.simplenet")),
    "dpo": ("kka_ray.stages.prefer", ("sklearn", "diffusers", "kka_ray.stages.select")),
    "lm-clean-render": ("kka_ray.stages.render", ("sklearn", "kka_ray.stages.select", "kka_ray.features")),
}


@pytest.mark.parametrize("worker", sorted(WORKER_IMPORTS))
def test_worker_processes_import_only_what_they_use(worker):
    modules, banned = WORKER_IMPORTS[worker]
    code = (f"import sys, {modules}; "
            f"print(sorted(m for m in sys.modules if m.startswith({banned!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", worker
