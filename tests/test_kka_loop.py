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
from tiny_loop import after_iteration

from kka_ray.config import ConfigError
from kka_ray.loop import KKAConfig, load_run_config, run_loop
from kka_ray.loop_bench import FIXED, fixed_judge_shares


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
        assert state.store.exists(f"iter_{t}/evaluator/deepsad.safetensors"), t
        assert json.loads(state.store.read_text(f"iter_{t}/metrics.json"))["iteration"] == t
        row = state.rows[t]
        assert row["hard"] + row["easy"] == row["new"] and row["hard_in_set"] == sum(a.column("hard").to_pylist())
        n = pq.read_table(f"{root}/iter_{t}/generated.parquet")  # every rendered image of N_t, kept or not
        assert len(n) == row["new"] and n.column("iteration").to_pylist() == [t] * len(n)
        kept = set(n.filter(n.column("in_set")).column("anomaly_id").to_pylist())
        assert kept == set(a.filter(pc.equal(a.column("iteration"), t)).column("anomaly_id").to_pylist())
        assert 0 <= row["auroc"] <= 100
        for stage in ("generate", "clean", "render", "split", "update", "evaluate", "test"):  # stage costs
            assert row[f"{stage}_seconds"] > 0 and row[f"{stage}_rows_per_s"] > 0, (t, stage)
        for stage in ("generate", "clean", "render", "evaluate", "driver"):
            assert 100 < row[f"peak_rss_mb_{stage}"] < 24_000, (t, stage)
        if row.get("pairs"):
            assert row["dpo_seconds"] > row["dpo_step_seconds"] > 0 and row["peak_rss_mb_dpo"] > 100
            assert row["pairs_trained"] == min(row["pairs"], cfg.prefer.steps * cfg.prefer.batch_size)
        assert "generate_seconds" not in a.column_names and "clean_peak_rss_mb" not in a.column_names
    assert state.baseline["select_seconds"] > 0 and state.baseline["peak_rss_mb_select"] > 100
    assert "| 0 s |" in state.store.read_text("report.md") and "CPU capability" in state.store.read_text("report.md")
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
    for f in ("config.yaml", "representatives.parquet", "report.md", "auroc.png", "iter_0/grid.png",
              "iter_0/hard_grid.png", "baseline/evaluator/deepsad.safetensors"):
        assert state.store.exists(f), f
    assert "SAD + KKA(2)" in state.store.read_text("report.md")


def test_resume_refuses_changes_and_unknown_folders(tiny_run, tmp_path):
    _, state = tiny_run
    with pytest.raises(ConfigError, match="evaluator.epochs"):
        load_run_config(state.store.location, ["evaluator.epochs=5"])
    assert load_run_config(state.store.location, ["update.iterations=3"]).update.iterations == 3
    with pytest.raises(ConfigError, match="no config.yaml"):
        load_run_config(str(tmp_path), [])
    assert load_run_config(state.store.location, []).reuse_pretrained is True
    old = yaml.safe_load(state.store.read_text("config.yaml"))
    del old["reuse_pretrained"]  # a run saved before the option continues as it was made
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert load_run_config(str(tmp_path), []).reuse_pretrained is False
    with pytest.raises(ConfigError, match="cannot go further"):  # iteration 2 had no DPO after it
        run_loop(load_run_config(state.store.location, ["update.iterations=3"]), resume=True)


def test_rejudge_lets_the_new_anomalies_replace_the_set(tiny_run, tmp_path):
    """update.rejudge: theta_C of A_0 judges A_0 again at t = 1. Iteration 0 does not depend on it, so a copy
    of the run's iteration 0 continues with it."""
    _, state = tiny_run
    run = after_iteration(state, 0, tmp_path / "rejudged", update={"rejudge": True, "iterations": 1})
    out = run_loop(load_run_config(str(run), []), resume=True)
    a = pq.read_table(run / "iter_1" / "anomalies.parquet")
    assert len(a) == out.rows[0]["anomalies"] and set(a.column("judged_iteration").to_pylist()) == {1}
    old = a.filter(pc.equal(a.column("iteration"), 0))
    # rep: easy old ones go while new hard ones last; so either only hard old ones stay, or every new hard one
    # came in (and no new easy one)
    new = a.filter(pc.equal(a.column("iteration"), 1))
    assert all(new.column("hard").to_pylist())
    assert all(old.column("hard").to_pylist()) or len(new) == out.rows[1]["hard"]
    tree = yaml.safe_load((run / "config.yaml").read_text())
    with pytest.raises(ValueError, match="rep"):
        KKAConfig.model_validate({**tree, "update": {"mode": "add", "rejudge": True}})


def test_fixed_judge_is_iteration_zeros_judge(tiny_run, tmp_path):
    """The benchmark's fixed judge is theta_C without anomalies as the loop saved it: on N_0 it repeats the
    loop's own verdict; the shares are cached in the run folder; a folder without that judge is refused."""
    cfg, state = tiny_run
    shares = fixed_judge_shares(cfg)
    assert list(shares) == ["0", "1", "2"] and all(0 <= s <= 1 for s in shares.values())
    assert shares["0"] == pytest.approx(state.rows[0]["hard_share"])
    assert state.store.read_json(FIXED) == shares
    run = after_iteration(state, 0, tmp_path / "old")
    shutil.rmtree(run / "baseline")
    with pytest.raises(ConfigError, match="baseline/evaluator"):
        fixed_judge_shares(load_run_config(str(run), []))


def test_job_script_reports_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("update:\n  mode: swap\n")
    out = subprocess.run([sys.executable, "jobs/kka_loop.py", "--config", str(bad)], capture_output=True, text=True)
    assert out.returncode != 0 and "update.mode" in out.stderr and "swap" in out.stderr


def test_stage_cost_table_leaves_out_rates_of_instant_stages():
    """A stage that took microseconds (update) shows its seconds but no rate: rows over a timer's noise."""
    from kka_ray.loop import stage_cost_table

    row = {"iteration": 0, "generate_seconds": 45.8, "generate_rows_per_s": 2.1, "update_seconds": 1e-6,
           "update_rows_per_s": 7.3e7, "peak_rss_mb_generate": 1566.0}
    lines = stage_cost_table([row], {"select_seconds": 8.6, "select_rows_per_s": 57.8})
    rates = next(line for line in lines if line.startswith("| 0 rows/s |")).split(" | ")
    assert "2.1" in rates and not any("73000000" in c for c in rates)
    assert "0.0" in next(line for line in lines if line.startswith("| 0 s |")).split(" | ")
    assert "57.8" in next(line for line in lines if line.startswith("| select rows/s |"))


def test_perf_bench_reads_a_runs_stage_costs(tiny_run):
    """jobs/bench_perf.py's demo section: per-stage seconds summed over iterations, peaks maxed, and its page."""

    from kka_ray.perf import run_folder_costs

    _, state = tiny_run
    costs = run_folder_costs(Path(state.store.path("")))
    rows = state.rows
    assert costs["demo_generate_seconds"] == pytest.approx(sum(r["generate_seconds"] for r in rows))
    assert costs["demo_dpo_seconds"] == pytest.approx(sum(r.get("dpo_seconds", 0) for r in rows))
    assert costs["peak_rss_mb_render"] == max(r["peak_rss_mb_render"] for r in rows)
    assert costs["demo_select_seconds"] == state.baseline["select_seconds"]
    assert not any(k.startswith("demo_dpo_step") for k in costs)  # means are not summed
    from kka_ray.commands import bench_perf

    page = bench_perf.markdown(costs | {"dpo_round_s": 9.0, "dpo_step_s": 1.0, "dpo_steps": 16.0}, {}, "cmd",
                               "loop.yaml", dpo_steps=8)
    assert "| demo (minutes, target <= 10) | not measured |" in page and "| loop settings | 1.00 |" in page
    assert "one 16-step round" in page  # the section's own step count, not the invocation's
    assert "Before and after" not in page and "Model load" not in page  # the LM section was not measured


def test_perf_bench_times_the_run_folder_the_demo_wrote(tmp_path):
    """`make demo` continues kka-demo or starts kka-demo-2, -3: the costs come from the folder it just wrote."""
    import os
    import time

    from kka_ray.perf import run_written_since

    for name, age in (("kka-demo", 100), ("kka-demo-2", 0), ("kka-demo-old", 0), ("other", 0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "state.json").write_text("{}")
        os.utime(tmp_path / name / "state.json", (time.time() - age,) * 2)
    assert run_written_since(tmp_path, "kka-demo", time.time() - 50) == tmp_path / "kka-demo-2"
    with pytest.raises(FileNotFoundError, match="no kka-demo run folder"):
        run_written_since(tmp_path, "kka-demo", time.time() + 50)


def test_perf_bench_restores_the_sections_it_does_not_measure_from_its_record(tmp_path, monkeypatch):
    """The runs/perf cache dies with the machine: a later session's run takes the sections it does not measure
    from the committed record (the ones it measures are measured again), and refuses another CPU kind's record."""
    import json

    from kka_ray.commands import bench_perf
    from kka_ray.store import RunStore

    monkeypatch.setattr(bench_perf, "describe", lambda: {"cpu_capability": "AVX2"})
    record, cache = tmp_path / "perf-cpu-avx2.json", tmp_path / "cache"
    cache.mkdir()
    sections = {s: {"commit": "c0ffee", "date": "2026-12-01", "metrics": {f"{s}_x": 1.0}} for s in ("dpo", "demo")}
    record.write_text(json.dumps({"cpu_capability": "AVX2", "sections": sections}))
    bench_perf.restore_sections(record, RunStore(cache), ["deepsad", "demo"])
    assert sorted(p.name for p in cache.iterdir()) == ["dpo.json"]
    assert json.loads((cache / "dpo.json").read_text()) == sections["dpo"]
    record.write_text(json.dumps({"cpu_capability": "AVX512+avx512_bf16", "sections": sections}))
    with pytest.raises(SystemExit, match="AVX512.*this one has AVX2.*perf-cpu-<kind>"):
        bench_perf.restore_sections(record, RunStore(cache), ["deepsad"])


def test_controls_on_the_tiny_run(tiny_run, tmp_path, monkeypatch):
    """KKA's controls on the tiny run's iteration 0, read back as a T = 0 run: every control has |A_0| images of
    the task's shape; the in-domain control renders A_0's own sentences; a fit is cached, so a rerun refits
    nothing; a run folder of another configuration is refused."""
    from kka_ray.config import save_config
    from kka_ray.controls import ControlsConfig, control_set, run_config, run_controls
    from kka_ray.detectors.deepsad import DeepSAD
    from kka_ray.loop import load_task

    cfg, state = tiny_run
    save_config(cfg, tmp_path / "loop.yaml")
    ctl = ControlsConfig(name="ctl", classes=["shirt"], seeds=[cfg.seed], loop_config=str(tmp_path / "loop.yaml"),
                         controls=["noise"], run_dir=str(tmp_path / "bench"), results_dir=None)
    run = run_config(ctl, "shirt", cfg.seed)
    after_iteration(state, 0, Path(run.run_dir) / run.name, update={"iterations": 0})
    out = run_controls(run, ctl, tmp_path / "work")
    assert out["no_anomalies"] == state.baseline["auroc"] and out["kka0_general"] == state.rows[0]["auroc"]
    assert 0 <= out["noise"] <= 100 and out["anomalies"] == state.rows[0]["anomalies"]
    monkeypatch.setattr(DeepSAD, "fit", lambda *a, **k: pytest.fail("a cached control was fitted again"))
    assert run_controls(run, ctl, tmp_path / "work") == out
    task = load_task(run)
    a0 = pq.read_table(f"{run.run_dir}/{run.name}/iter_0/anomalies.parquet")
    for method in ("noise", "prior_only", "kka0_in_domain", "oracle"):
        got = control_set(method, run, ctl, task, a0)
        assert got.images.shape == (len(a0), *task.train_normal.shape), method
    assert [d[0] for d in control_set("kka0_in_domain", run, ctl, task, a0).descriptions] == \
        a0.column("sentence").to_pylist()
    with pytest.raises(ConfigError, match="prefer.steps"):
        run_controls(run.model_copy(update={"prefer": run.prefer.model_copy(update={"steps": 9})}), ctl, tmp_path)


def test_boundary_bench_hard_shares_rise_with_the_quantile(tiny_run, tmp_path):
    """The boundary benchmark rejudges N_0 with the saved theta_C without anomalies: at q = 1 it is the loop's
    own verdict (the tiny run's split quantile is 0.93: it is between), and the share rises with q."""
    from kka_ray.boundary_bench import run_boundary_bench

    cfg, state = tiny_run
    m = run_boundary_bench([state.store.location], "boundary", tmp_path, "cmd")
    shares = [m[f"hard_share_q{q}"] for q in (50, 75, 90, 95, 99, 100)]
    assert shares == sorted(shares) and 0 <= shares[0] and shares[-1] <= 1
    assert m["hard_share_q90"] <= state.rows[0]["hard_share"] <= m["hard_share_q95"]
    assert json.loads((tmp_path / "boundary.json").read_text())["metrics"]["classes"] == 1


def test_fig4_sets_from_the_tiny_run(tiny_run, tmp_path):
    """Fig. 4's sets from a finished run: hard-only, easy-only and random of one size from N_0 .. N_T with the
    loop's verdicts; k x |N_0| initial anomalies from one more generation at t = 0; the record over classes."""
    import pandas as pd

    from kka_ray.fig4 import Fig4Config, generated_sets, initial_sets, write
    from kka_ray.loop import load_task, run_seeded

    cfg, state = tiny_run
    sets = generated_sets(state.store, 2, seed=0)
    n0 = len(state.store.read_table("iter_0/generated.parquet"))
    assert len({len(t) for t in sets.values()}) == 1 and 0 < len(sets["random"]) <= n0
    assert all(sets["hard_only"].column("hard").to_pylist()) and not any(sets["easy_only"].column("hard").to_pylist())
    initial = initial_sets(run_seeded(cfg), state.store, load_task(cfg), [2])
    extra = initial["initial_2x"]
    assert 0 < len(extra) <= 2 * n0 and set(extra.column("iteration").to_pylist()) == {0}
    rows = [{"class": c, "seed": 0, "hard_only": 80 + k, "easy_only": 78 + k, "random": 79 + k, "initial_2x": 78.5 + k,
             "initial_4x": 79 + k} for k, c in enumerate(("a", "b"))]
    m = write(Fig4Config(results_dir=str(tmp_path)), pd.DataFrame(rows), "cmd")
    assert m["gain_hard_only"] == pytest.approx(2) and m["auroc_initial_4x"] == pytest.approx(79.5)
    assert (tmp_path / "kka-fig4-fmnist.png").is_file()
