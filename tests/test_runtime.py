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


# A process started without MALLOC_*_ in its environment sets them with apply_malloc_settings, then allocates
# and frees a 16 MiB buffer (4096 pages) again and again: it should stay on the heap, faulted in once.
REUSED_BUFFER = """
import resource
import numpy as np
from kka_ray.runtime import apply_malloc_settings
accepted = apply_malloc_settings()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    np.ones(2**21)  # 16 MiB, written, freed at once
print(accepted["MALLOC_TRIM_THRESHOLD_"], (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 50)
"""


def test_the_driver_process_gets_the_malloc_settings_too():
    """Workers read MALLOC_*_ from their environment at start; the driver was already running when the defaults
    were set, so it sets them with mallopt. Checked by what they do, not by mallopt's answer: glibc also
    accepted the 4 GiB trim threshold wrapped to 0 (trim on every free), which re-faulted ~490 pages each time."""
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", REUSED_BUFFER], env=env, capture_output=True, text=True, check=True)
    accepted, faults_per_buffer = out.stdout.split()
    assert accepted == "True" and float(faults_per_buffer) < 50, out.stdout


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
