"""The whole KKA loop on tiny models (tiny Llama, tiny diffusion pipeline) and Fashion-MNIST: two DPO rounds,
checkpoints, resume after a stop between iterations, and the error paths of a run folder."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from tiny_loop import tiny_config

from kka_ray.config import ConfigError
from kka_ray.loop import KKAConfig, load_run_config, run_loop
from kka_ray.loop_bench import FIXED, fixed_judge_shares

# Timing columns differ between runs by nature; everything else must be identical.
TIMING = {"generation_seconds", "batch_start", "batch_end", "render_seconds"}


def stable(table):
    return table.drop_columns([c for c in table.column_names if c in TIMING])


def test_loop_runs_all_iterations_with_checkpoints(tiny_run):
    cfg, state = tiny_run
    root = state.store.path("")
    assert state.completed == 2 and [r["iteration"] for r in state.rows] == [0, 1, 2]
    n0 = state.rows[0]["anomalies"]
    for t in range(3):
        a = pq.read_table(f"{root}/iter_{t}/anomalies.parquet")
        assert len(a) == n0  # rep mode keeps |A| fixed
        for col in ("anomaly_id", "sentence", "prompt", "image", "score", "hard", "iteration", "model", "adapter",
                    "renderer", "render_seed", "seed", "judged_iteration"):
            assert col in a.column_names, (t, col)
        # every anomaly keeps the verdict of the theta_C that judged it when it was new
        assert a.column("judged_iteration").to_pylist() == a.column("iteration").to_pylist()
        assert max(a.column("iteration").to_pylist()) <= t
        assert state.store.exists(f"iter_{t}/evaluator/deepsad.pt"), t
        assert json.loads(state.store.read_text(f"iter_{t}/metrics.json"))["iteration"] == t
        row = state.rows[t]
        assert row["hard"] + row["easy"] == row["new"] and row["hard_in_set"] == sum(a.column("hard").to_pylist())
        n = pq.read_table(f"{root}/iter_{t}/generated.parquet")  # every rendered image of N_t, kept or not
        assert len(n) == row["new"] and n.column("iteration").to_pylist() == [t] * len(n)
        kept = set(n.filter(n.column("in_set")).column("anomaly_id").to_pylist())
        assert kept == set(a.filter(pc.equal(a.column("iteration"), t)).column("anomaly_id").to_pylist())
        assert 0 <= row["auroc"] <= 100
    adapter = ""  # the model that generates: the base, then the latest DPO adapter
    for t in range(3):
        adapters = set(pq.read_table(f"{root}/iter_{t}/anomalies.parquet").filter(
            pc.equal(pc.field("iteration"), t)).column("adapter").to_pylist())
        assert adapters <= {adapter}, t  # (rep mode may keep no new anomaly when all were hard)
        if t == 2:
            break
        row = state.rows[t]
        # DPO runs exactly when the split gave both hard and easy anomalies, and then the next iteration uses it
        assert (row["pairs"] > 0) == (row["hard"] > 0 and row["easy"] > 0), t
        assert state.store.exists(f"iter_{t}/adapter/adapter_config.json") == (row["pairs"] > 0)
        adapter = f"iter_{t}/adapter" if row["pairs"] else adapter
        assert row["next_adapter"] == adapter
    assert adapter, "no DPO round ran in the tiny loop: retune tiny_config's split.quantile so one does"
    for f in ("config.yaml", "representatives.parquet", "report.md", "auroc.png", "iter_0/grid.png"):
        assert state.store.exists(f), f
    assert "SAD + KKA(2)" in state.store.read_text("report.md")


def test_resume_after_a_stop_gives_identical_tables(tiny_run, tiny, tmp_path):
    cfg, state = tiny_run
    other = tiny_config(tiny, tmp_path)
    stopped = run_loop(other, stop_after=0)
    assert stopped.completed == 0 and not stopped.store.exists("iter_1")
    with pytest.raises(ConfigError, match="--resume"):
        run_loop(other)  # the folder holds a run: refuse to start over it
    resumed = run_loop(load_run_config(stopped.store.location, []), resume=True)
    assert resumed.completed == 2
    for t in range(3):
        for name in ("anomalies", "generated", "rejects"):
            a = stable(pq.read_table(f"{state.store.path('')}/iter_{t}/{name}.parquet"))
            b = stable(pq.read_table(f"{resumed.store.path('')}/iter_{t}/{name}.parquet"))
            assert a.equals(b), (t, name)
    assert [r["auroc"] for r in resumed.rows] == [r["auroc"] for r in state.rows]


def test_resume_refuses_changes_and_unknown_folders(tiny_run, tmp_path):
    _, state = tiny_run
    with pytest.raises(ConfigError, match="evaluator.epochs"):
        load_run_config(state.store.location, ["evaluator.epochs=5"])
    assert load_run_config(state.store.location, ["update.iterations=3"]).update.iterations == 3
    with pytest.raises(ConfigError, match="no config.yaml"):
        load_run_config(str(tmp_path), [])
    with pytest.raises(ConfigError, match="cannot go further"):  # iteration 2 had no DPO after it
        run_loop(load_run_config(state.store.location, ["update.iterations=3"]), resume=True)


def test_rejudge_lets_the_new_anomalies_replace_the_set(tiny_run, tmp_path):
    """update.rejudge: theta_C of A_0 judges A_0 again at t = 1. Iteration 0 does not depend on it, so a copy
    of the run's iteration 0 continues with it."""
    _, state = tiny_run
    run = tmp_path / "rejudged"
    shutil.copytree(Path(state.store.path("")), run, ignore=shutil.ignore_patterns("iter_1", "iter_2"))
    saved = json.loads((run / "state.json").read_text())
    (run / "state.json").write_text(json.dumps({**saved, "completed": 0, "rows": saved["rows"][:1]}))
    tree = yaml.safe_load((run / "config.yaml").read_text())
    tree.update(name="rejudged", run_dir=str(tmp_path))
    tree["update"].update(rejudge=True, iterations=1)
    (run / "config.yaml").write_text(yaml.safe_dump(tree))
    out = run_loop(load_run_config(str(run), []), resume=True)
    a = pq.read_table(run / "iter_1" / "anomalies.parquet")
    assert len(a) == out.rows[0]["anomalies"] and set(a.column("judged_iteration").to_pylist()) == {1}
    old = a.filter(pc.equal(a.column("iteration"), 0))
    # rep: every easy old one goes while new ones last; so either only hard old ones stay, or all new ones came in
    assert all(old.column("hard").to_pylist()) or len(a) - len(old) == out.rows[1]["new"]
    with pytest.raises(ValueError, match="rep"):
        KKAConfig.model_validate({**tree, "update": {"mode": "add", "rejudge": True}})


def test_fixed_judge_refits_iteration_zeros_judge(tiny_run):
    """The benchmark's fixed judge is theta_C without anomalies fitted again with the run's seed: on N_0 it
    repeats the loop's own verdict; the shares are cached in the run folder."""
    cfg, state = tiny_run
    shares = fixed_judge_shares(cfg)
    assert list(shares) == ["0", "1", "2"] and all(0 <= s <= 1 for s in shares.values())
    assert shares["0"] == pytest.approx(state.rows[0]["hard_share"])
    assert state.store.read_json(FIXED) == shares


def test_job_script_reports_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("update:\n  mode: swap\n")
    out = subprocess.run([sys.executable, "jobs/kka_loop.py", "--config", str(bad)], capture_output=True, text=True)
    assert out.returncode != 0 and "update.mode" in out.stderr and "swap" in out.stderr
