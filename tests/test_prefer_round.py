"""round_means: a DPO round's figures are the means over its steps, from a log_history as trl writes it."""

import math

import pytest

from kka_ray.stages.prefer import round_means


def step(n: int, loss: float, margin: float, accuracy: float) -> dict:
    """One `logging_steps=1` entry as the Trainer and trl's DPOTrainer log it."""
    return {"loss": loss, "grad_norm": 1.0, "learning_rate": 5e-5, "rewards/chosen": margin / 2,
            "rewards/rejected": -margin / 2, "rewards/margins": margin, "rewards/accuracies": accuracy,
            "epoch": n / 3, "step": n}


def test_means_over_every_step_not_the_last():
    history = [step(1, 0.6931, 0.0, 0.0), step(2, 0.65, 0.1, 0.5), step(3, 0.5, 0.5, 1.0),
               {"step_seconds": 2.0, "setup_seconds": 5.0},  # entries without a loss are not steps
               {"train_loss": 0.61, "train_runtime": 9.0, "epoch": 1.0, "step": 3}]
    m = round_means(history)
    assert m["round_steps"] == 3
    assert m["round_loss"] == pytest.approx((0.6931 + 0.65 + 0.5) / 3)
    assert m["round_reward_margin"] == pytest.approx(0.2) and m["round_reward_accuracy"] == pytest.approx(0.5)


def test_a_figure_no_step_logged_is_nan():
    m = round_means([{"loss": 0.7, "step": 1}])
    assert m["round_loss"] == 0.7 and m["round_steps"] == 1
    assert math.isnan(m["round_reward_margin"]) and math.isnan(m["round_reward_accuracy"])
    assert round_means([])["round_steps"] == 0


def test_sizing_grid_items_and_a_bad_one_named():
    from kka_ray.commands.bench_dpo_sizing import grid_items, setting_key
    from kka_ray.config import ConfigError

    assert grid_items("16:5e-4, 8:1e-3:2") == [(16, 5e-4, None), (8, 1e-3, 2)]
    assert setting_key(8, 1e-3, 2) != setting_key(8, 1e-3)
    with pytest.raises(ConfigError, match="'8-1e-3'"):
        grid_items("16:5e-4,8-1e-3")
