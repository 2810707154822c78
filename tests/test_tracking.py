"""MLflow tracking of a KKA run: the tiny run's own SQLite store holds its params, a nested run per iteration
with metrics and files, and the report; off with one switch."""

import os

import mlflow
import pytest

from kka_ray.store import RunStore
from kka_ray.tracking import TRACKING_FILE, Tracker, TrackingConfig, numeric


def test_the_tiny_run_is_tracked_in_its_folder(tiny_run):
    cfg, state = tiny_run
    run = RunStore(f"{cfg.run_dir}/{cfg.name}")
    saved = run.read_json(TRACKING_FILE)
    assert saved["uri"].startswith("sqlite:///") and saved["uri"].endswith(f"{cfg.name}/mlflow.db")
    client = mlflow.MlflowClient(tracking_uri=saved["uri"])
    parent = client.get_run(saved["run_id"])
    assert parent.data.params["update.mode"] == "rep" and parent.data.params["seed"] == "3"
    history = client.get_metric_history(parent.info.run_id, "auroc")
    assert [m.step for m in history] == [0, 1, 2]
    assert [m.value for m in history] == pytest.approx([r["auroc"] for r in state.rows])
    assert "report.md" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    # mlflow's fluent set_tracking_uri and set_experiment also set these variables, which then sent every later
    # run to this store (the tiny run's fits ran in this process: Ray Train's local mode)
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_EXPERIMENT_ID" not in os.environ
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    iterations = [c for c in children if " " not in c.info.run_name]
    assert sorted(c.info.run_name for c in iterations) == ["iter_0", "iter_1", "iter_2"]
    # every Ray Train fit logged its curve from its rank-0 worker (tracking.fit_run), nested under the KKA run
    fits = {c.info.run_name: c.info.run_id for c in children if " " in c.info.run_name}
    epochs = client.get_metric_history(fits["baseline deepsad"], "deepsad_train_epoch_loss")
    assert [m.step for m in epochs] == list(range(1, cfg.evaluator.epochs + 1))
    for t, row in enumerate(state.rows):
        assert f"iter_{t} deepsad" in fits
        if row.get("pairs_trained"):
            losses = client.get_metric_history(fits[f"iter_{t} dpo"], "loss")
            assert [m.step for m in losses] == list(range(1, cfg.prefer.steps + 1))
    assert any(r.get("pairs_trained") for r in state.rows)
    for child in iterations:
        t = int(child.info.run_name.split("_")[1])
        assert child.data.metrics["hard_share"] == pytest.approx(state.rows[t]["hard_share"])
        files = {a.path for a in client.list_artifacts(child.info.run_id, f"iter_{t}")}
        assert {f"iter_{t}/grid.png", f"iter_{t}/metrics.json", f"iter_{t}/generated.parquet"} <= files


def test_tracking_off_writes_nothing(tmp_path):
    store = RunStore(tmp_path)
    tracker = Tracker(TrackingConfig(enabled=False), store, "off", {"a": 1})
    tracker.log({"x": 1.0})
    tracker.iteration(0, {"x": 1.0}, ["nothing"])
    assert list(tmp_path.iterdir()) == []


def test_only_finite_numbers_are_logged():
    assert numeric({"a": 1, "b": True, "c": float("nan"), "d": "text", "e": 2.5}) == {"a": 1.0, "b": 1.0, "e": 2.5}


def test_a_benchmark_record_is_logged_once_to_mlflow(tmp_path, monkeypatch):
    from kka_ray.records import write_record

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("KKA_TRACKING", "1")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "bench-x.png").write_bytes(b"png")
    write_record("bench-x", {"auroc": 91.5, "classes": 10}, "# bench-x\n", [tmp_path / "a", tmp_path / "b"],
                 command="python jobs/x.py", extra={"config": {"detector": {"name": "knn", "k": 2}}})
    assert (tmp_path / "b" / "bench-x.json").is_file()
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("kka-ray-benchmarks").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "bench-x" and run.data.metrics == {"auroc": 91.5, "classes": 10.0}
    assert run.data.params == {"detector.name": "knn", "detector.k": "2"}
    assert run.data.tags["command"] == "python jobs/x.py"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"bench-x.json", "bench-x.md",
                                                                         "bench-x.png"}
