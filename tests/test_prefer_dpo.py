"""DPO in Ray Train on a tiny Llama: a fresh adapter against the base, then the next round continues that adapter
with the previous model as its reference."""

from pathlib import Path

import pyarrow as pa
import pytest
from safetensors.numpy import load_file

from kka_ray.llm import LMConfig
from kka_ray.stages.prefer import PreferConfig, adapter_files, run_dpo

PROMPT = [{"role": "user", "content": "describe clothing"}]


def pairs(n=4, heldout=0):
    return pa.Table.from_pylist([{"cluster": 0, "prompt": PROMPT, "chosen_id": f"h{i}", "chosen": "a red shoe",
                                  "rejected_id": f"e{i}", "rejected": "a cat", "heldout": i >= n}
                                 for i in range(n + heldout)])


def saved_adapter(checkpoint, to: Path) -> Path:
    import shutil

    with checkpoint.as_directory() as d:
        shutil.copytree(adapter_files(Path(d)), to)
    return to


@pytest.mark.parametrize("precompute_ref, num_workers", [(False, 1), (True, 0)])
def test_second_round_continues_the_first_with_it_as_reference(ray_local, tiny, tmp_path, precompute_ref,
                                                                num_workers):
    """Either way the reference is computed (in each step, or once before training: the demo's setting), on a
    Ray Train worker and in Ray Train's local mode (the tiny loop's; it saves a worker's start per round)."""
    lm = LMConfig(model=tiny["lm"])
    cfg = PreferConfig(steps=3, batch_size=2, learning_rate=1e-2, max_length=256, cpus_per_worker=1,
                       num_workers=num_workers, target_modules=["q_proj", "v_proj"], precompute_ref=precompute_ref)
    first, m1 = run_dpo(pairs(heldout=2), lm, cfg, seed=0, workdir=tmp_path / "w")
    a1 = saved_adapter(first, tmp_path / "a1")
    assert m1["step"] == 3 and m1["rewards/margins"] > 0  # it learnt to prefer the chosen text
    assert m1["round_steps"] == 3 and m1["round_reward_margin"] > 0
    # the held-out pairs, evaluated after the last step and never trained on, carry the same preference
    assert m1["heldout_reward_margin"] > 0 and m1["heldout_reward_accuracy"] == 1.0
    assert m1["step_seconds"] > 0 and m1["setup_seconds"] > 0  # stage costs for the loop's metrics
    # One step of the next round: the policy starts as the first round's model; if the reference is that same
    # model the first loss is exactly log 2 and the reward margin 0 (against the base it would not be).
    second, m2 = run_dpo(pairs(), lm.model_copy(update={"adapter": str(a1)}), cfg.model_copy(update={"steps": 1}),
                         seed=1, workdir=tmp_path / "w")
    assert m2["loss"] == pytest.approx(0.6931, abs=1e-3) and m2["rewards/margins"] == pytest.approx(0, abs=1e-3)
    a2 = saved_adapter(second, tmp_path / "a2")
    w1, w2 = load_file(a1 / "adapter_model.safetensors"), load_file(a2 / "adapter_model.safetensors")
    assert w1.keys() == w2.keys() and any(abs(w1[k] - w2[k]).max() > 0 for k in w1)  # the same adapter, moved


def test_no_pairs_is_an_error(ray_local, tiny, tmp_path):
    with pytest.raises(ValueError, match="at least one preference pair"):
        run_dpo(pairs(0), LMConfig(model=tiny["lm"]), PreferConfig(), seed=0, workdir=tmp_path)


def test_a_round_whose_worker_dies_is_restarted(ray_local, monkeypatch, tmp_path):
    """A lost DPO worker (a preempted node) restarts the round, as many times as `max_failures` allows, instead
    of ending the loop (the fault job kills one for real: jobs/bench_faults.py)."""
    import kka_ray.stages.prefer as prefer

    seen = {}

    class Trainer:
        def __init__(self, fn, *, run_config, **kwargs):
            seen["max_failures"] = run_config.failure_config.max_failures

        def fit(self):
            raise RuntimeError("stop here")

    monkeypatch.setattr(prefer, "trainer_cls", lambda: Trainer)
    with pytest.raises(RuntimeError, match="stop here"):
        run_dpo(pairs(), LMConfig(model="unused"), PreferConfig(max_failures=2), seed=0, workdir=tmp_path)
    assert seen["max_failures"] == 2
    assert PreferConfig().max_failures >= 1
