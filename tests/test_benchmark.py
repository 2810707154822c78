"""The benchmark job end to end on a tiny run: table, record, Markdown, config beside the outputs."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from kka_ray.benchmark import TABLE, BenchmarkConfig, finished_rows, run_benchmark, summarise
from kka_ray.config import ConfigError, load_config, save_config

ROOT = Path(__file__).parents[1]


def tiny_config(tmp_path, **extra) -> BenchmarkConfig:
    overrides = [
        "name=tiny", "classes=[trouser]", "seeds=[0]", "oracle_anomalies=200",
        "detector.epochs=2", "detector.ae_epochs=0", "detector.lr=1e-3", "detector.cpus_per_worker=2",
        "detector.num_workers=0",  # Ray Train's local mode: the fit in this process
        f"run_dir={tmp_path / 'runs'}", f"results_dir={tmp_path / 'results'}",
    ] + [f"{k}={v}" for k, v in extra.items()]
    return load_config(BenchmarkConfig, None, overrides)


def test_summary_means_and_ci():
    table = pd.DataFrame({"normal": ["a", "a", "b", "c"], "seed": [0, 1, 0, 0], "auroc": [80.0, 90.0, 70.0, 60.0],
                          "seconds": [1.0, 1.0, 1.0, 1.0]})
    metrics, per_class = summarise(table, oracle=False)
    assert metrics["auroc_a"] == 85.0 and metrics["mean_auroc"] == pytest.approx(215 / 3)
    # over the 3 class means (85, 70, 60): sd 12.58, t(2 dof) 4.303, not over the 4 tasks
    assert metrics["mean_auroc_ci95"] == pytest.approx(4.302653 * 12.583057 / 3 ** 0.5, rel=1e-5)
    assert (metrics["classes"], metrics["seeds"], metrics["tasks"], metrics["seconds"]) == (3, 2, 4, 4.0)
    assert "mean_auroc_oracle" not in metrics and per_class.loc["a", ("auroc", "std")] == pytest.approx(50 ** 0.5)


def test_resume_refuses_a_changed_config_and_names_the_key(tmp_path):
    cfg = tiny_config(tmp_path)
    run = tmp_path / "runs" / "tiny"
    save_config(cfg, run / "config.yaml")
    pd.DataFrame([{"request": '["trouser"]', "normal": "trouser", "seed": 0, "auroc": 90.0}]).to_parquet(run / TABLE)
    assert finished_rows(run, cfg)[0]["auroc"] == 90.0
    assert finished_rows(run, tiny_config(tmp_path, **{"ray.num_cpus": 1}))  # where it runs may change
    with pytest.raises(ConfigError, match=r"different configuration .*detector\.epochs: 2 -> 3.*remove that folder"):
        finished_rows(run, tiny_config(tmp_path, **{"detector.epochs": 3}))


def test_tiny_benchmark_end_to_end(ray_local, tmp_path):
    cfg = tiny_config(tmp_path)
    metrics = run_benchmark(cfg, command="python jobs/benchmark.py --test", progress=False)
    assert set(metrics) >= {"mean_auroc", "mean_auroc_oracle", "auroc_trouser", "oracle_auroc_trouser", "seconds"}
    assert 50 < metrics["auroc_trouser"] <= 100
    record = json.loads((tmp_path / "results" / "tiny.json").read_text())
    assert record["metrics"] == metrics and record["command"] == "python jobs/benchmark.py --test"
    assert "oracle" in (tmp_path / "results" / "tiny.md").read_text()
    run = tmp_path / "runs" / "tiny"
    assert load_config(BenchmarkConfig, run / "config.yaml") == cfg
    table = pd.read_parquet(run / "results.parquet")
    assert list(table["normal"]) == ["trouser"]
    assert (tmp_path / "results" / "tiny.png").stat().st_size > 1000

    # A rerun of the same configuration finds every task done: nothing is trained again.
    again = run_benchmark(cfg, command="python jobs/benchmark.py --test", progress=False)
    assert again == metrics
    # A different configuration under the same name is refused rather than mixed in.
    with pytest.raises(ConfigError, match="different configuration"):
        run_benchmark(tiny_config(tmp_path, **{"detector.epochs": 3}), command="x", progress=False)


def test_cli_rejects_bad_override():
    out = subprocess.run([sys.executable, "jobs/benchmark.py", "--set", "detector.lr=fast"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode != 0 and "detector.lr" in out.stderr and "'fast'" in out.stderr
