"""Experiment tracking with MLflow: one MLflow run per KKA run (the resolved config as params, the baseline and
final metrics, the report), a nested run per iteration (its metrics, grids and tables). By default a SQLite
store inside the run folder (`mlflow.db`, artifacts in `mlflow-artifacts/`), so every run folder carries its own
tracking; `tracking.uri` or MLFLOW_TRACKING_URI sends it to a team's server instead. `tracking.enabled: false`
turns it off. Every Ray Train fit of a tracked run (theta_C, DPO, detectors) logs its curves from its rank-0
worker to a run of its own nested under the KKA run."""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from pydantic import Field

from kka_ray.config import Strict, _flatten
from kka_ray.store import RunStore, is_uri

TRACKING_FILE = "tracking.json"  # the parent MLflow run id, so a resumed run logs into the same one
# Where fits started now log their curves (set by Tracker.fits on the driver), and the rank-0 worker's (client,
# run id) while its fit runs (fit_run); None outside.
_FIT_PARENT: ContextVar[dict | None] = ContextVar("kka_fit_parent", default=None)
_WORKER_MLFLOW = None


class TrackingConfig(Strict):
    enabled: bool = Field(True, description="Log the run to MLflow")
    uri: str | None = Field(None, description="MLflow tracking URI; None = MLFLOW_TRACKING_URI, else a SQLite store "
                            "in the run folder (sqlite:///<run>/mlflow.db)")
    experiment: str = Field("kka-ray", description="MLflow experiment name")


def numeric(metrics: dict) -> dict[str, float]:
    """The finite numbers (and booleans as 0/1) of a metrics row; MLflow takes nothing else."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, int | float) and math.isfinite(value):
            out[key] = float(value)
    return out


class Tracker:
    """A KKA run's MLflow run; every method does nothing when tracking is off. Only MlflowClient calls: the
    fluent API's set_tracking_uri also sets MLFLOW_TRACKING_URI in the process environment, which then sent
    every later run of the process (and its subprocesses) to this run's store."""

    def __init__(self, cfg: TrackingConfig, store: RunStore, name: str, params: dict):
        self.store, self.client, self.run_id = store, None, None
        self.local = not is_uri(store.location)  # files are logged from a local run folder only
        if not cfg.enabled:
            return
        uri = cfg.uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri is None:
            if not self.local:
                print(f"[kka] tracking off: the run folder {store.location} is not local; set tracking.uri or "
                      "MLFLOW_TRACKING_URI to track it", flush=True)
                return
            uri = f"sqlite:///{Path(store.location).resolve()}/mlflow.db"
        import mlflow

        self.uri = uri
        self.client = client = mlflow.MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(cfg.experiment)
        if experiment is None:
            artifacts = Path(store.location).resolve() / "mlflow-artifacts"
            self.experiment = client.create_experiment(
                cfg.experiment, artifact_location=artifacts.as_uri() if self.local and uri.startswith("sqlite:///")
                else None)
        else:
            self.experiment = experiment.experiment_id
        saved = store.read_json(TRACKING_FILE) if store.exists(TRACKING_FILE) else {}
        if saved.get("uri") == uri:  # a resumed run continues its MLflow run
            self.run_id = saved["run_id"]
        else:
            self.run_id = client.create_run(self.experiment, run_name=name,
                                            tags={"kka.run_folder": store.location}).info.run_id
            client.log_batch(self.run_id, params=[mlflow.entities.Param(k, str(v)[:6000])
                                                  for k, v in _flatten(params).items()])
            store.write_json(TRACKING_FILE, {"uri": uri, "run_id": self.run_id})

    def _metrics(self, run_id: str, metrics: dict, step: int) -> None:
        log_metrics(self.client, run_id, metrics, step)

    def _files(self, run_id: str, rels: list[str], folder: str | None = None) -> None:
        for rel in rels if self.local else []:
            if self.store.exists(rel):
                self.client.log_artifact(run_id, self.store.path(rel), artifact_path=folder)

    def log(self, metrics: dict, step: int = 0) -> None:
        if self.client is not None:
            self._metrics(self.run_id, metrics, step)

    def iteration(self, t: int, metrics: dict, artifacts: list[str]) -> None:
        """A nested run `iter_<t>` with the iteration's metrics and files (run-folder relative paths); the
        parent also gets the metrics at step t, for curves over iterations."""
        if self.client is None:
            return
        self._metrics(self.run_id, metrics, t)
        child = self.client.create_run(self.experiment, run_name=f"iter_{t}",
                                       tags={"mlflow.parentRunId": self.run_id}).info.run_id
        self._metrics(child, metrics, 0)
        self._files(child, artifacts, f"iter_{t}")
        self.client.set_terminated(child)

    def artifacts(self, rels: list[str]) -> None:
        if self.client is not None:
            self._files(self.run_id, rels)

    @contextmanager
    def fits(self, label: str):
        """Ray Train fits started inside log their curves to MLflow runs "<label> <fit>" under this run."""
        parent = {"uri": self.uri, "experiment_id": self.experiment, "parent": self.run_id, "label": label} \
            if self.client is not None else None
        token = _FIT_PARENT.set(parent)
        try:
            yield
        finally:
            _FIT_PARENT.reset(token)


def fit_tracking(name: str) -> dict:
    """train_loop_config entries that make the fit started now log its curves (none outside Tracker.fits)."""
    parent = _FIT_PARENT.get()
    return {"mlflow": {**parent, "name": f"{parent['label']} {name}"}} if parent else {}


@contextmanager
def fit_run(config: dict):
    """In a Ray Train worker (or the driver, in local mode): the fit's nested MLflow run while it trains, on rank 0
    only. MlflowClient calls only, like Tracker's: the fluent API's set_tracking_uri and set_experiment would set
    the process's MLFLOW_* variables, and a local-mode fit runs in the driver."""
    global _WORKER_MLFLOW
    import ray.train

    spec = config.get("mlflow")
    if spec is None or ray.train.get_context().get_world_rank() != 0:
        yield
        return
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=spec["uri"])
    run_id = client.create_run(spec["experiment_id"], run_name=spec["name"],
                               tags={"mlflow.parentRunId": spec["parent"]}).info.run_id
    _WORKER_MLFLOW = (client, run_id)
    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status=status)
        _WORKER_MLFLOW = None


def log_step(metrics: dict, step: int) -> None:
    """A point of the running fit's curves (nothing outside fit_run or on ranks other than 0)."""
    if _WORKER_MLFLOW is not None:
        log_metrics(*_WORKER_MLFLOW, metrics, step)


def log_metrics(client, run_id: str, metrics: dict, step: int) -> None:
    """The numeric entries of `metrics` at `step`, in one call."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in numeric(metrics).items()])


BENCHMARKS = "kka-ray-benchmarks"


def track_record(record: dict, folder: Path) -> str | None:
    """A benchmark record as an MLflow run of the experiment kka-ray-benchmarks: its metrics, its config as
    params, commit / machine / command as tags, the record and the files beside it named like it as artifacts.
    To MLFLOW_TRACKING_URI, else a SQLite store at runs/mlflow.db; KKA_TRACKING=0 turns it off. Returns the
    run id (None when off)."""
    if os.environ.get("KKA_TRACKING", "1") == "0":
        return None
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri is None:
        Path("runs").mkdir(exist_ok=True)
        uri = f"sqlite:///{Path('runs/mlflow.db').resolve()}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(BENCHMARKS)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        BENCHMARKS, artifact_location=(Path(uri.removeprefix("sqlite:///")).parent / "mlflow-artifacts").as_uri()
        if uri.startswith("sqlite:///") else None)
    tags = {k: str(record.get(k)) for k in ("commit", "machine", "command", "date")}
    run = client.create_run(experiment_id, run_name=record["name"], tags=tags)
    params = _flatten(record["config"]) if isinstance(record.get("config"), dict) else {}
    client.log_batch(run.info.run_id, metrics=[
        mlflow.entities.Metric(k, v, int(time.time() * 1000), 0) for k, v in numeric(record["metrics"]).items()],
        params=[mlflow.entities.Param(k, str(v)[:6000]) for k, v in params.items()])
    for path in sorted(Path(folder).glob(f"{record['name']}*")):
        if path.is_file():
            client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id)
    return run.info.run_id
