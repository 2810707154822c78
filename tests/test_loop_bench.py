"""The loop benchmark's summary (the paper's Table III over classes and seeds) from hand-made run results."""

import json
from pathlib import Path

import pytest
import yaml

from kka_ray.config import ConfigError, RayConfig
from kka_ray.loop import STATE
from kka_ray.loop_bench import LoopBenchConfig, markdown, run_config, run_one, summarise, table, write
from kka_ray.store import RunStore

T1 = 12.706204736174707  # Student t, 97.5% quantile, 1 degree of freedom (2 classes)


def result(base, aurocs, shares, fixed=None, dpo=()):
    """dpo: (loss, margin, held-out margin) of each round that had pairs, None for one that had none."""
    rows = [{"iteration": t, "auroc": a, "hard_share": s, "hard_in_set": 100 * s, "new": 30, "rejected": 10 + 10 * t}
            for t, (a, s) in enumerate(zip(aurocs, shares, strict=True))]
    for row in rows[:-1]:  # as the loop writes them: every round t < T says how many pairs it had
        row["pairs"] = 0
    for row, d in zip(rows, dpo, strict=False):
        if d is not None:
            row.update(pairs=8, dpo_loss=d[0], dpo_reward_margin=d[1], dpo_heldout_reward_margin=d[2])
    return {"baseline": {"auroc": base}, "rows": rows, **({"fixed": fixed} if fixed else {})}


@pytest.fixture()
def cfg(tmp_path):
    demo = tmp_path / "demo.json"
    demo.write_text(json.dumps({"wall_minutes": 14.5}))
    return LoopBenchConfig(classes=["shirt", "t-shirt"], seeds=[0, 1], run_dir=str(tmp_path / "runs"),
                           results_dir=str(tmp_path / "results"), demo_summary=str(demo))


def test_summary_means_and_keys(cfg):
    results = {("shirt", 0): result(70, [72, 74, 76], [0.1, 0.2, 0.3]),
               ("shirt", 1): result(72, [74, 76, 78], [0.1, 0.3, 0.5]),
               ("t-shirt", 0): result(80, [80, 81, 82], [0.0, 0.1, 0.2]),
               ("t-shirt", 1): result(82, [82, 83, 84], [0.2, 0.2, 0.2])}
    df = table(cfg, results)
    m = summarise(cfg, df)
    assert (m["runs"], m["classes"], m["seeds"]) == (4, 2, 2)
    assert m["auroc_no_anomalies"] == 76 and m["auroc_kka_iter0"] == 77
    assert m["auroc_kka_iter2"] == 80 and m["auroc_kka_iter1"] == 78.5
    assert m["hard_share_iter0"] == pytest.approx(0.1) and m["hard_share_iter2"] == pytest.approx(0.3)
    assert not any("hard_in_set" in k for k in m) and "hard_in_set_iter0" not in df
    assert m["auroc_kka_iter2_t_shirt"] == 83 and m["auroc_no_anomalies_shirt"] == 71
    # 95% intervals over the 2 classes (class means 77 and 83), not over the 4 runs
    assert m["demo_minutes"] == 14.5 and m["auroc_kka_iter2_ci95"] == pytest.approx(T1 * 3)
    # gains paired by class: KKA(2) - no anomalies = 6 (shirt) and 2 (t-shirt); KKA(2) - KKA(0) = 4 and 2
    assert m["gain_kka_iter2"] == pytest.approx(4) and m["gain_kka_iter2_ci95"] == pytest.approx(T1 * 2)
    assert m["gain_kka_iter0"] == pytest.approx(1) and m["gain_kka_iter0_ci95"] == pytest.approx(T1 * 1)
    assert m["gain_final_vs_kka0"] == pytest.approx(3) and m["gain_final_vs_kka0_ci95"] == pytest.approx(T1 * 1)
    assert m["rejected_share_iter0"] == pytest.approx(0.25) and m["rejected_share_iter2"] == pytest.approx(0.5)
    page = markdown(cfg, df, m, "python jobs/bench_kka.py")
    assert "4 of 4 runs" in page and "hard anomalies in A_t" not in page
    assert "| shirt | 71.0 | 73.0 | 75.0 | 77.0 |" in page and "+4.0 ± 25.4 points" in page
    assert "95% t-interval over the 2 classes" in page
    write(cfg, results, "cmd")
    record = json.loads((Path(cfg.results_dir) / "kka-loop-fmnist.json").read_text())
    assert record["metrics"]["runs"] == 4 and len(record["runs"]) == 4
    assert "fixed_judge_runs" not in m and "fixed judge" not in page
    assert m["dpo_rounds_iter0"] == 0 and "dpo_loss_iter0" not in m and "no round had pairs" in page


def test_the_record_says_which_commit_and_machine_made_each_run(cfg):
    made = [{"commit": "a" * 40 + "+modified", "machine": "Zen 3"}, {"commit": "b" * 40, "machine": "Zen 3"}]
    results = {("shirt", 0): result(70, [72, 74, 76], [0.1, 0.2, 0.3]) | {"made": made[0]},
               ("shirt", 1): result(72, [74, 76, 78], [0.1, 0.3, 0.5]) | {"made": made[1]},
               ("t-shirt", 0): result(80, [80, 81, 82], [0.0, 0.1, 0.2]) | {"made": made[1]}}
    write(cfg, results, "cmd")
    record = json.loads((Path(cfg.results_dir) / "kka-loop-fmnist.json").read_text())
    assert record["runs_from"] == [{"commit": "a" * 40 + "+modified", "machine": "Zen 3", "runs": 1},
                                   {"commit": "b" * 40, "machine": "Zen 3", "runs": 2}]
    assert [r["commit"] for r in record["runs"]] == ["a" * 40 + "+modified", "b" * 40, "b" * 40]
    page = (Path(cfg.results_dir) / "kka-loop-fmnist.md").read_text()
    assert "| 1 | aaaaaaaaaaaa+modified | Zen 3 |" in page and "| 2 | bbbbbbbbbbbb | Zen 3 |" in page


def test_seeds_are_averaged_within_a_class_first(cfg):
    results = {("shirt", 0): result(70, [72, 74, 76], [0.1, 0.2, 0.3]),
               ("shirt", 1): result(72, [74, 76, 78], [0.1, 0.3, 0.5]),
               ("t-shirt", 0): result(80, [80, 81, 82], [0.0, 0.1, 0.2])}
    df = table(cfg, results)
    m = summarise(cfg, df)
    # classes 71 and 80 (the mean over the 3 runs would be 74); KKA(2): 77 and 82
    assert m["auroc_no_anomalies"] == pytest.approx(75.5) and m["auroc_kka_iter2"] == pytest.approx(79.5)
    assert (m["runs"], m["classes"], m["seeds"]) == (3, 2, 2)
    assert "| **mean** | **75.5** |" in markdown(cfg, df, m, "cmd")


def test_a_run_folder_made_with_another_config_is_refused(cfg):
    run = run_config(cfg, "shirt", 0)
    store = RunStore(f"{run.run_dir}/{run.name}")
    store.write_text("config.yaml", yaml.safe_dump(run.model_dump(mode="json"), sort_keys=False))
    finished = result(70, [72, 74, 76], [0.1, 0.2, 0.3])
    store.write_json(STATE, {"completed": run.update.iterations, **finished})
    assert run_one(run)["baseline"]["auroc"] == 70  # the same run: read back, nothing runs
    assert run_one(run.model_copy(update={"ray": RayConfig(num_cpus=1)}))["rows"]  # where it runs may change
    # a finished run is checked too, and a changed iteration count is a changed benchmark
    changed = cfg.model_copy(update={"loop_overrides": ["prefer.steps=4", "update.iterations=3"]})
    with pytest.raises(ConfigError, match=r"shirt-seed0/config.yaml: .*prefer\.steps: 8 -> 4; "
                                          r"update\.iterations: 2 -> 3; .*or remove"):
        run_one(run_config(changed, "shirt", 0))


def test_a_finished_run_is_archived_and_read_back_from_a_fresh_clone(cfg, tmp_path):
    cfg = cfg.model_copy(update={"archive": str(tmp_path / "kept")})
    run = run_config(cfg, "shirt", 0)
    store = RunStore(f"{run.run_dir}/{run.name}")
    store.write_text("config.yaml", yaml.safe_dump(run.model_dump(mode="json"), sort_keys=False))
    T = run.update.iterations
    for t in range(T + 1):
        store.write_bytes(f"iter_{t}/generated.parquet", b"N_%d" % t)
    store.write_bytes(f"iter_{T}/anomalies.parquet", b"A_T")
    store.write_bytes("iter_0/evaluator/model.safetensors", b"not kept")
    store.write_json(STATE, {"completed": T, **result(70, [72, 74, 76], [0.1, 0.2, 0.3])})
    first = run_one(run, archive=cfg.archive)
    kept = RunStore(f"{cfg.archive}/{run.name}")
    assert first["baseline"]["auroc"] == 70
    assert first["made"] == {k: kept.read_json("archived.json")[k] for k in ("commit", "machine")}
    assert kept.read_bytes(f"iter_{T}/anomalies.parquet") == b"A_T" and kept.read_bytes("iter_1/generated.parquet")
    assert not kept.exists("iter_0/evaluator") and kept.read_json("archived.json")["machine"]
    provenance = kept.read_bytes("archived.json")
    kept.write_bytes("archived.json", b'{"commit": "the code that made it"}')
    again = run_one(run, archive=cfg.archive)  # read from runs/ again: archived once, its provenance kept
    assert kept.read_json("archived.json") == {"commit": "the code that made it"}
    assert again["made"] == {"commit": "the code that made it", "machine": "unknown"}
    kept.write_bytes("archived.json", provenance)
    store.fs.delete_dir(store.root)  # a fresh clone: runs/ is gone, the committed archive is not
    from_clone = run_one(run, archive=cfg.archive)
    assert from_clone["rows"][-1]["auroc"] == 76 and from_clone["made"] == first["made"]
    assert not store.exists(STATE)  # read back, nothing ran
    changed = run_config(cfg.model_copy(update={"loop_overrides": ["prefer.steps=4"]}), "shirt", 0)
    with pytest.raises(ConfigError, match=r"kept/shirt-seed0/config.yaml: .*prefer\.steps: 8 -> 4"):
        run_one(changed, archive=cfg.archive)


def test_dpo_means_cover_the_rounds_that_had_pairs(cfg):
    results = {("shirt", 0): result(70, [72, 74, 76], [0.9, 0.2, 0.3], dpo=[(0.6, 0.2, 0.1), (0.68, 0.02, -0.01)]),
               ("shirt", 1): result(72, [74, 76, 78], [1.0, 0.3, 0.5], dpo=[None, (0.66, 0.04, 0.03)])}
    cfg = cfg.model_copy(update={"loop_overrides": ["prefer.steps=64"]})
    df = table(cfg, results)
    m = summarise(cfg, df)
    assert m["dpo_rounds_iter0"] == 1 and m["dpo_loss_iter0"] == pytest.approx(0.6)
    assert m["dpo_rounds_iter1"] == 2 and m["dpo_reward_margin_iter1"] == pytest.approx(0.03)
    assert m["dpo_margin_heldout_iter0"] == pytest.approx(0.1) and m["dpo_margin_heldout_iter1"] == pytest.approx(0.01)
    page = markdown(cfg, df, m, "cmd")
    assert "round 0 (1 runs): loss 0.600, reward margin 0.200, held-out margin 0.100; round 1 (2 runs): loss " \
           "0.670" in page
    assert "`configs/kka/demo.yaml` with `prefer.steps=64`" in page


def test_fixed_judge_means_cover_runs_that_kept_every_iteration(cfg):
    results = {("shirt", 0): result(70, [72, 74, 76], [0.9, 0.2, 0.3], {"0": 0.9, "1": 0.5, "2": 0.7}),
               ("shirt", 1): result(72, [74, 76, 78], [0.8, 0.3, 0.5], {"0": 0.8, "1": 0.7, "2": 0.9}),
               ("t-shirt", 0): result(80, [80, 81, 82], [0.7, 0.1, 0.2], {"0": None, "1": 0.1, "2": 0.1})}
    df = table(cfg, results)
    m = summarise(cfg, df)
    assert m["fixed_judge_runs"] == 2 and m["hard_share_fixed_iter0"] == pytest.approx(0.85)
    assert m["hard_share_fixed_iter1"] == pytest.approx(0.6) and m["hard_share_fixed_iter2"] == pytest.approx(0.8)
    assert "0.850 -> 0.600 -> 0.800" in markdown(cfg, df, m, "cmd")
    write(cfg, results, "cmd")  # a run without a value gives null in the record (strict JSON)
    runs = json.loads((Path(cfg.results_dir) / "kka-loop-fmnist.json").read_text(),
                      parse_constant=lambda c: pytest.fail(f"{c} in the record"))["runs"]
    assert runs[2]["fixed_hard_share_iter0"] is None and runs[2]["fixed_hard_share_iter1"] == 0.1


def test_run_config_per_class_and_seed(cfg):
    run = run_config(cfg, "t-shirt", 1)
    assert (run.name, run.normal_classes, run.seed) == ("t_shirt-seed1", ["t-shirt"], 1)
    assert run.run_dir.endswith("runs/kka-loop-fmnist") and run.update.mode == "rep"
