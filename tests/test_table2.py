"""The Table II job end to end on a tiny config: KKA's set read from a loop run, noise and oracle sets sized
like it, every detector and variant fitted, a record with the issue's keys, resumable and extendable."""

import json
import shutil

import pandas as pd
import pytest
from test_detectors import TINY

from kka_ray.config import ConfigError
from kka_ray.summary import short
from kka_ray.table2 import Table2Config, run_table2


def tiny_table2(tmp_path, runs, variants):
    return Table2Config.model_validate({
        "name": "table2-tiny", "classes": ["shirt"], "seeds": [3], "run_dir": str(tmp_path / "bench"),
        "results_dir": str(tmp_path / "results"), "archive": str(tmp_path / "kept"), "kka_rep": {"folder": str(runs)},
        "detectors": {"sad": {"name": "deepsad", **TINY["deepsad"]}, "knn": {"name": "knn", **TINY["knn"]},
                      # in Ray Train's local mode (tests/test_deepsad_ray.py: the same fit as on a worker)
                      "simplenet": {"name": "simplenet", **TINY["simplenet"], "train": {"num_workers": 0}}},
        "variants": variants, "figures": {"detector": "simplenet" if "simplenet" in variants else None,
                                          "samples": 40, "monitor_anomalies": 20}})


@pytest.fixture
def loop_runs(tiny_run, tmp_path):
    """The session's tiny loop run (shirt, seed 3) in a loop benchmark's layout."""
    cfg, _ = tiny_run
    runs = tmp_path / "loops"
    shutil.copytree(f"{cfg.run_dir}/{cfg.name}", runs / "shirt-seed3")
    return runs


def test_table2_end_to_end(ray_local, loop_runs, tmp_path, monkeypatch):
    # Deep SAD goes through the same fit(normals, anomalies) as these two (tests/test_detectors.py fits it).
    variants = {"knn": ["noise", "oracle"], "simplenet": ["none", "kka_rep"]}
    cfg = tiny_table2(tmp_path, loop_runs, variants)
    metrics = run_table2(cfg, command="pytest", progress=False)
    for key in ("auroc_simplenet_none", "auroc_simplenet_kka_rep", "gain_simplenet_kka_rep", "auroc_knn_noise",
                "auroc_knn_oracle", "generated_simplenet_kka_rep", "given_simplenet_kka_rep",
                "fit_minutes_simplenet", "fit_minutes_knn", "classes"):
        assert key in metrics, key
    record = json.loads((tmp_path / "results" / "table2-tiny.json").read_text())
    assert record["kka_runs"] == [f"{loop_runs}/shirt-seed3/iter_2"]
    assert [p["fits"] for p in record["fits_from"]] == [4] and record["fits_from"][0]["commit"] == record["commit"]
    table = pd.read_parquet(tmp_path / "bench" / "table2-tiny" / "results.parquet")
    assert len(table) == 4
    given = table.set_index(["detector", "variant"])["given"]
    n = given[("simplenet", "kka_rep")]
    assert n > 0 and given[("knn", "noise")] == n and given[("knn", "oracle")] == n
    assert given[("simplenet", "none")] == 0
    assert metrics["gain_simplenet_kka_rep"] == pytest.approx(metrics["auroc_simplenet_kka_rep"]
                                                              - metrics["auroc_simplenet_none"])
    # Fig. 5 and 6 from the simplenet fits of the first task, with a separation point per epoch.
    page = (tmp_path / "results" / "table2-tiny.md").read_text()
    assert "table2-tiny-fig5.png" in page and f"| 4 | {short(record['commit'])} |" in page
    assert (tmp_path / "results" / "table2-tiny-fig6.png").stat().st_size > 0
    curve = json.loads(table.set_index(["detector", "variant"]).loc[("simplenet", "kka_rep"), "monitor_curve"])
    assert len(curve) == TINY["simplenet"]["epochs"] and all(0 <= x <= 1 for x in curve)
    # More variants extend the table: only the new fit runs.
    more = tiny_table2(tmp_path, loop_runs, {**variants, "knn": ["noise", "oracle", "none"]})
    run_table2(more, command="pytest", progress=False)
    assert len(pd.read_parquet(tmp_path / "bench" / "table2-tiny" / "results.parquet")) == 5
    # A fresh clone (no run folder) resumes from the committed archive: nothing is refitted.
    before = json.loads((tmp_path / "results" / "table2-tiny.json").read_text())["metrics"]
    shutil.rmtree(tmp_path / "bench")
    monkeypatch.setattr("kka_ray.table2.fit_one", lambda *a, **k: pytest.fail("a finished fit ran again"))
    assert run_table2(more, command="pytest", progress=False) == pytest.approx(before)
    assert len(pd.read_parquet(tmp_path / "bench" / "table2-tiny" / "results.parquet")) == 5
    assert (tmp_path / "bench" / "table2-tiny" / "figures" / "kka_rep.npz").is_file()
    # How fast a network runs (batch sizes, workers) is not what it measures: the table still resumes.
    dumped = more.model_dump()
    dumped["detectors"]["knn"]["backbone"].update(batch_size=7, actors=2)
    assert run_table2(Table2Config.model_validate(dumped), command="pytest", progress=False) == pytest.approx(before)
    # A detector with no fit in the table yet (sad) may be configured anew; one with fits may not.
    dumped["detectors"]["sad"]["epochs"] += 1
    assert run_table2(Table2Config.model_validate(dumped), command="pytest", progress=False) == pytest.approx(before)
    dumped["detectors"]["knn"]["k"] += 1
    with pytest.raises(ConfigError, match="detectors.knn.k"):
        run_table2(Table2Config.model_validate(dumped), command="pytest", progress=False)
    # Any other change is another benchmark.
    changed = more.model_copy(update={"seeds": [4]})
    with pytest.raises(ConfigError, match="different configuration"):
        run_table2(changed, command="pytest", progress=False)


def test_table2_config_errors(tmp_path):
    with pytest.raises(ValueError, match="not configured"):
        tiny_table2(tmp_path, tmp_path, {"ssd": ["none"]})
    with pytest.raises(ValueError, match="sized like KKA"):
        Table2Config.model_validate({"detectors": {"knn": {"name": "knn"}}, "variants": {"knn": ["noise"]},
                                     "figures": {"detector": None}})
    with pytest.raises(ValueError, match="figures.detector 'simplenet' is not one of the detectors run"):
        Table2Config.model_validate({"detectors": {"knn": {"name": "knn"}}, "variants": {"knn": ["none"]}})
    with pytest.raises(ValueError, match="'knn' is a knn, which has no embedding"):
        Table2Config.model_validate({"detectors": {"knn": {"name": "knn"}}, "variants": {"knn": ["none"]},
                                     "figures": {"detector": "knn"}})


def test_missing_loop_run_is_named(ray_local, tmp_path):
    cfg = tiny_table2(tmp_path, tmp_path / "nowhere", {"knn": ["kka_rep"]})
    with pytest.raises(FileNotFoundError, match="no finished KKA loop run for class 'shirt', seed 3"):
        run_table2(cfg, command="pytest", progress=False)


def test_knn_combine_check_reads_a_table2_config(ray_local, loop_runs, tmp_path):
    """The kNN head check (record knn-combine-<dataset>) on the tiny Table II config: kNN alone and the head
    variant in both modes, judged on validation normals against other classes' train images."""
    import yaml

    from kka_ray.knn_combine import KNNCombineConfig, run_knn_combine

    t2 = tmp_path / "table2.yaml"
    t2.write_text(yaml.safe_dump(tiny_table2(tmp_path, loop_runs, {"knn": ["none"]}).model_dump(mode="json")))
    cfg = KNNCombineConfig(name="knn-combine-tiny", table2=str(t2), real_anomalies=30, ensemble="sad",
                           results_dir=str(tmp_path / "results"))
    metrics = run_knn_combine(cfg, command="pytest", progress=False)
    for key in ("auroc_none", "auroc_sum", "auroc_one_sided", "gain_sum", "gain_one_sided", "gain_one_sided_vs_sum",
                "auroc_member", "auroc_ensemble_sum", "gain_ensemble_one_sided"):
        assert key in metrics, key
    assert metrics["gain_one_sided_vs_sum"] == pytest.approx(metrics["auroc_one_sided"] - metrics["auroc_sum"])
    page = (tmp_path / "results" / "knn-combine-tiny.md").read_text()
    assert "| shirt |" in page and "*train* split (never the test split)" in page
    assert "`ensemble_<mode>` joins its score" in page
    assert "| none | sum | one_sided | member | ensemble_sum | ensemble_one_sided |" in page
    with pytest.raises(ConfigError, match="ensemble: .* has no detector 'ssd'"):
        run_knn_combine(cfg.model_copy(update={"ensemble": "ssd"}), command="pytest", progress=False)
    with pytest.raises(ConfigError, match="detectors.sad is deepsad, not a knn"):
        run_knn_combine(cfg.model_copy(update={"detector": "sad"}), command="pytest", progress=False)
