"""Ray set-up choices that keep a normal run's output readable."""

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


FIT = """
import time
from kka_ray.config import DeepSADConfig, RayConfig
from kka_ray.data import build_dataset, make_task
from kka_ray.detectors import build_detector
from kka_ray.runtime import init_ray
init_ray(RayConfig(num_cpus=2))
task = make_task(build_dataset("fashion_mnist"), "fashion_mnist", ["trouser"], seed=0)
det = build_detector(DeepSADConfig(epochs=1, ae_epochs=0, pretrain=False, batch_size=64))
det.fit(task.train_normal.subset(range(128)), None, seed=0, workdir={workdir!r})
time.sleep(3)  # the cleaner's traceback came a few seconds after a fit
"""


def test_a_fit_prints_its_progress_and_no_ray_info_lines(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("KKA_LOG_LEVEL", "KKA_QUIET")}
    out = subprocess.run([sys.executable, "-c", FIT.format(workdir=str(tmp_path))], capture_output=True, text=True,
                         env=env, timeout=300)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-2000:]
    assert "deepsad train epoch 1/1" in log and "PlacementGroupCleaner" not in log
    assert "Reporting training result" not in log and "Requesting resources" not in log


@pytest.mark.parametrize("level", ["INFO", "WARNING"])
def test_ray_train_logs_at_the_chosen_level(ray_local, monkeypatch, level):
    """--verbose (INFO) brings Ray Train's own lines back: its controller and workers log at KKA_LOG_LEVEL."""
    from ray.train import ScalingConfig

    monkeypatch.setenv("KKA_LOG_LEVEL", level)
    trainer = trainer_cls()(lambda config: None, scaling_config=ScalingConfig(num_workers=1))
    assert trainer.run_config.logging_config.log_level == level
