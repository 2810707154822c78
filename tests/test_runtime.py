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


@pytest.mark.parametrize("level", ["INFO", "WARNING"])
def test_ray_train_logs_at_the_chosen_level(ray_local, monkeypatch, level):
    """--verbose (INFO) brings Ray Train's own lines back: its controller and workers log at KKA_LOG_LEVEL."""
    from ray.train import ScalingConfig

    monkeypatch.setenv("KKA_LOG_LEVEL", level)
    trainer = trainer_cls()(lambda config: None, scaling_config=ScalingConfig(num_workers=1))
    assert trainer.run_config.logging_config.log_level == level
