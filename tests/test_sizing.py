"""The GPU sizing calculator on a hand-made table; every expected number is worked out by hand below."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kka_ray.config import load_config
from kka_ray.sizing import SizingConfig, Throughput, Workload, estimate

ROOT = Path(__file__).resolve().parents[1]


def table(gen_units: float = 1000) -> tuple[Workload, dict[str, Throughput]]:
    """4 tasks of two stages: gen (an actor pool, twice per task), fit (DDP on at most 2 GPUs, once per task)."""
    work = Workload(tasks=4, stages={
        "gen": {"unit": "tokens", "per_run": gen_units, "runs": 2, "parallel": "pool", "max_gpus": 4},
        "fit": {"unit": "images", "per_run": 600, "runs": 1, "parallel": "ddp", "max_gpus": 2},
    })
    speed = {"gen": Throughput(per_s=10, load_s=5, kind="assumption", source="test"),
             "fit": Throughput(per_s=2, load_s=0, kind="assumption", source="test")}
    return work, speed


def test_one_gpu_runs_the_tasks_one_after_another():
    # per task: gen 2 x (5 + 1000/10) = 210 s, fit 600/2 = 300 s; 4 tasks in turn
    e = estimate(*table(), gpus=1, ddp_efficiency=0.75)
    assert e.waves == [(4, 1, 1)]
    assert e.stage_hours == pytest.approx({"gen": 840 / 3600, "fit": 1200 / 3600})
    assert e.wall_hours == pytest.approx(2040 / 3600)
    assert e.gpu_hours == e.busy_gpu_hours == pytest.approx(2040 / 3600)
    assert e.bound == "fit"


def test_a_last_smaller_wave_gets_all_gpus():
    # 3 GPUs: a wave of 3 tasks on 1 GPU each (510 s), then 1 task on 3 GPUs:
    # gen uses 3 actors: 2 x (5 + 1000/30) = 76.667 s; fit uses 2 workers at 0.75: 600 / (2 x 2 x 0.75) = 200 s
    e = estimate(*table(), gpus=3, ddp_efficiency=0.75)
    assert e.waves == [(1, 3, 1), (1, 1, 3)]
    assert e.stage_hours["gen"] * 3600 == pytest.approx(210 + 76 + 2 / 3)
    assert e.stage_hours["fit"] * 3600 == pytest.approx(300 + 200)
    assert e.wall_hours * 3600 == pytest.approx(786 + 2 / 3)
    assert e.gpu_hours * 3600 == pytest.approx(3 * (786 + 2 / 3))
    # busy: 3 x 510, then gen 3 GPUs x 76.667 s + fit 2 GPUs x 200 s (the third GPU idles during fit)
    assert e.busy_gpu_hours * 3600 == pytest.approx(1530 + 230 + 400)
    assert e.bound == "fit"


def test_even_split_and_the_bound_moving_with_size():
    # 8 GPUs: 4 tasks x 2 GPUs: gen 2 x (5 + 50) = 110 s, fit 200 s; every GPU busy
    e = estimate(*table(), gpus=8, ddp_efficiency=0.75)
    assert (e.waves, e.wall_hours * 3600, e.busy_gpu_hours * 3600) == ([(1, 4, 2)], pytest.approx(310),
                                                                         pytest.approx(8 * 310))
    # gen of 3,000 units: 2 x (5 + 300) = 610 s > fit 300 s on 1 GPU; on 16 GPUs (4 each) 2 x (5 + 75) = 160 < 200
    assert estimate(*table(3000), gpus=1, ddp_efficiency=0.75).bound == "gen"
    wide = estimate(*table(3000), gpus=16, ddp_efficiency=0.75)
    assert (wide.bound, wide.wall_hours * 3600) == ("fit", pytest.approx(360))


def test_bad_inputs():
    work, speed = table()
    with pytest.raises(ValueError, match="fit"):
        estimate(work, {"gen": speed["gen"]}, gpus=1)
    with pytest.raises(ValueError, match="gpus"):
        estimate(work, speed, gpus=0)


def test_paper_config_and_job(tmp_path):
    cfg = load_config(SizingConfig, ROOT / "configs/sizing/cifar100_paper.yaml")
    assert set(cfg.workload.stages) == set(cfg.throughput)
    subprocess.run([sys.executable, "jobs/gpu_sizing.py", "--config", "configs/sizing/cifar100_paper.yaml",
                    "--set", "gpus=[1,64]", "--out", str(tmp_path)], cwd=ROOT, check=True, capture_output=True)
    record = json.loads((tmp_path / "gpu-sizing.json").read_text())
    m = record["metrics"]
    assert m["hours_1gpu"] > m["hours_64gpu"] > 0
    assert sum(m[f"{s}_hours_64gpu"] for s in cfg.workload.stages) == pytest.approx(m["hours_64gpu"])
    assert record["cpu_figures"]["generate"] == json.loads(
        (ROOT / "docs/results/perf-cpu.json").read_text())["metrics"]["lm_tokens_per_s"]
    assert "LambdaLabsML/vllm-benchmark" in (tmp_path / "gpu-sizing.md").read_text()
