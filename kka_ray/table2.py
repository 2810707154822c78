"""The paper's Table II on this project's detectors: each detector without anomalies, with noise images, with
KKA's anomaly sets (rep, add) and with real anomalies (oracle), over every class of a dataset.

KKA's sets come from loop runs made once per task (a loop benchmark's run folders) and are reused by every
detector; noise and oracle sets have as many images as KKA's. Rows are appended to `<run>/results.parquet` as
fits finish, so an interrupted job resumes; frozen-backbone features are cached under `<run>/train/features`.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import yaml
from pydantic import Field, model_validator
from tqdm import tqdm

from kka_ray.benchmark import task_list
from kka_ray.config import ConfigError, DatasetConfig, RayConfig, Strict, config_diff, describe_diff, load_config
from kka_ray.controls import noise_images
from kka_ray.data import build_dataset, make_task
from kka_ray.data.base import ImageSet
from kka_ray.detectors import build_detector
from kka_ray.detectors.base import DETECTORS, AnyDetectorConfig
from kka_ray.figures import training_curves, tsne_panels
from kka_ray.loop import KKAConfig
from kka_ray.metrics import auroc
from kka_ray.records import made_here, metric_key, write_record
from kka_ray.stages.evaluate import anomaly_set
from kka_ray.store import RunStore
from kka_ray.summary import over_classes, provenance, provenance_table

Variant = Literal["none", "noise", "kka_rep", "kka_add", "oracle"]
VARIANTS: tuple[str, ...] = ("none", "noise", "kka_rep", "kka_add", "oracle")
TABLE = "results.parquet"


class KKARuns(Strict):
    folder: str = Field(description="A loop benchmark's folder holding one run per task, named "
                        "<class>-seed<seed> (e.g. runs/bench/kka-loop-fmnist)")
    iteration: int | None = Field(None, ge=0, description="A_t of this iteration; None = each run's last")


class FiguresConfig(Strict):
    detector: str | None = Field("simplenet", description="Record name of the detector whose fits on the first "
                                 "class and seed (in config order, never chosen by AUROC) give Fig. 5 (t-SNE of its "
                                 "embedding) and Fig. 6 (training curves): it must offer embed() and a monitor; "
                                 "None = no figures")
    samples: int = Field(300, ge=10, description="Test normals, and as many test anomalies, in the t-SNE")
    monitor_anomalies: int = Field(300, ge=10, description="Unused generated anomalies (from the kka_rep runs, "
                                   "never in A_t) against validation normals in Fig. 6's separation curve")


class Table2Config(Strict):
    name: str = Field("table2-fmnist", description="Record name: docs/results/<name>.json")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    classes: Literal["all"] | list[str | int] = Field("all", description="Normal class per task ('all' = each "
                                                      "class once, never a choice by test AUROC)")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Share of train normals held out (as the loop runs)")
    detectors: dict[str, AnyDetectorConfig] = Field(description="Record name (sad, simplenet, ...) -> any "
                                                    "registered detector's config")
    variants: dict[str, list[Variant]] = Field(description="Record name -> the variants it is fitted with")
    kka_rep: KKARuns | None = Field(None, description="Loop runs in rep mode (variant kka_rep)")
    kka_add: KKARuns | None = Field(None, description="Loop runs in add mode (variant kka_add)")
    figures: FiguresConfig = Field(default_factory=FiguresConfig)
    run_dir: str = Field("runs/bench", description="Outputs go to <run_dir>/<name>/")
    results_dir: str | None = "docs/results"
    archive: str | None = Field(None, description="Folder, committed with the record, that holds the rows, the "
                                "config and the figure data after every fit, so a fresh clone resumes the table "
                                "instead of refitting it (the run folder, with its training files, stays local)")
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _consistent(self):
        if unknown := set(self.variants) - set(self.detectors):
            raise ValueError(f"variants name detectors that are not configured: {sorted(unknown)}")
        if self.figures.detector is not None:
            if self.figures.detector not in self.variants:
                raise ValueError(f"figures.detector {self.figures.detector!r} is not one of the detectors run: "
                                 f"{sorted(self.variants)}")
            kind = self.detectors[self.figures.detector].name
            if not hasattr(DETECTORS.get(kind), "embed"):
                able = [n for n in DETECTORS.names() if hasattr(DETECTORS.get(n), "embed")]
                raise ValueError(f"figures.detector {self.figures.detector!r} is a {kind}, which has no embedding "
                                 f"and training monitor for Fig. 5-6; detectors that have them: {able}")
        used = {v for vs in self.variants.values() for v in vs}
        for variant in ("kka_rep", "kka_add"):
            if variant in used and getattr(self, variant) is None:
                raise ValueError(f"variant {variant} is used but `{variant}` (its loop runs) is not set")
        if used & {"noise", "oracle"} and self.kka_rep is None and self.kka_add is None:
            raise ValueError("noise and oracle sets are sized like KKA's: set kka_rep or kka_add")
        return self


def loop_run(runs: KKARuns, dataset: str, cls: str | int, seed: int, val_fraction: float) -> tuple[RunStore, int]:
    """The loop run for (cls, seed), checked to be the same task, and the iteration whose A_t is used."""
    store = RunStore(f"{runs.folder}/{metric_key(str(cls))}-seed{seed}")
    if not store.exists("config.yaml") or not store.exists("state.json"):
        raise FileNotFoundError(f"{store.location}: no finished KKA loop run for class {cls!r}, seed {seed} (run "
                                "the loop benchmark that writes it first)")
    run = KKAConfig.model_validate(yaml.safe_load(store.read_text("config.yaml")))
    same = (run.dataset.name, [str(c) for c in run.normal_classes], run.seed, run.val_fraction)
    if same != (dataset, [str(cls)], seed, val_fraction):
        raise ConfigError(f"{store.location}: a run of task {same}, expected "
                          f"{(dataset, [str(cls)], seed, val_fraction)}")
    last = store.read_state("state.json")["completed"]
    t = last if runs.iteration is None else runs.iteration
    if t > last:
        raise ValueError(f"{store.location}: iteration {t} asked, the run completed {last}")
    return store, t


def anomaly_sets(cfg: Table2Config, task, cls, seed: int) -> tuple[dict[str, ImageSet | None], dict[str, str]]:
    """Every variant's anomalies for one task (None for `none`), and where KKA's came from."""
    sets: dict[str, ImageSet | None] = {"none": None}
    sources = {}
    for variant in ("kka_rep", "kka_add"):
        if (runs := getattr(cfg, variant)) is not None:
            store, t = loop_run(runs, cfg.dataset.name, cls, seed, cfg.val_fraction)
            sets[variant] = anomaly_set(store.read_table(f"iter_{t}/anomalies.parquet"))
            sources[variant] = f"{store.location}/iter_{t}"
    kka = sets.get("kka_rep") or sets.get("kka_add")
    if kka is not None:
        n = len(kka)
        rng = np.random.default_rng([seed, VARIANTS.index("noise")])
        noise = noise_images(n, task.train_normal.shape, rng)
        sets["noise"] = ImageSet(images=noise, labels=np.zeros(n, np.int64), class_names=("noise",),
                                 descriptions=[("",)] * n, ids=np.array([f"noise:{i}" for i in range(n)]),
                                 split="noise")
        sets["oracle"] = task.oracle_anomalies(n, seed=seed)
    return sets, sources


def unused_generated(store: RunStore, final: int, n: int, seed: int) -> ImageSet:
    """Up to `n` anomalies the loop run generated in iterations 0..final that are not in its A_final: no fit
    here trains on them, so they can measure separation during training without touching the test split."""
    used = set(store.read_table(f"iter_{final}/anomalies.parquet").column("anomaly_id").to_pylist())
    parts = [store.read_table(f"iter_{t}/generated.parquet") for t in range(final + 1)]
    table = pa.concat_tables([p.select(parts[0].column_names) for p in parts])
    keep = [i for i, a in enumerate(table.column("anomaly_id").to_pylist()) if a not in used]
    if not keep:
        raise ValueError(f"{store.location}: every generated anomaly is in A_{final}; none is left to monitor with")
    picked = np.sort(np.random.default_rng(seed).permutation(keep)[:n])
    return anomaly_set(table.take(pa.array(picked)))


def fit_one(cfg: Table2Config, det_name: str, variant: str, task, anomalies: ImageSet | None, seed: int,
            workdir: Path, monitor: tuple[ImageSet, ImageSet] | None = None):
    """One fit and its test AUROC; returns the row and the fitted detector."""
    start = time.perf_counter()
    detector = build_detector(cfg.detectors[det_name])
    extra = {} if monitor is None else {"monitor": monitor}
    fit = detector.fit(task.train_normal, anomalies, seed=seed, workdir=workdir, **extra)
    fit_seconds = time.perf_counter() - start
    score = 100 * auroc(task.test_targets, detector.score(task.test.images))
    row = {"detector": det_name, "variant": variant, "auroc": score, "generated": float(fit.get("generated", 0)),
           "given": 0 if anomalies is None else len(anomalies), "fit_seconds": fit_seconds,
           "seconds": time.perf_counter() - start,
           "loss_curve": json.dumps([float(x) for x in fit.get("loss_curve") or []]),
           "monitor_curve": json.dumps([float(x) for x in fit.get("monitor_curve") or []])}
    return row, detector


FIGURE_VARIANTS = ("none", "kka_rep")
KEPT = ("config.yaml", TABLE, *(f"figures/{v}.npz" for v in FIGURE_VARIANTS))  # what the archive holds


def figure_data(cfg: Table2Config, task, seed: int, detector, row: dict) -> bytes:
    """Fig. 5 and 6's inputs from one figure fit, as an npz (no pickles): the embedding of a fixed test sample
    (`samples` normals and as many anomalies, drawn with the seed) and the training curves."""
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.permutation(np.flatnonzero(task.test_targets == t))[:cfg.figures.samples]
                          for t in (0, 1)])
    buf = io.BytesIO()
    np.savez(buf, embedding=detector.embed(task.test.images[idx]), targets=task.test_targets[idx],
             loss=np.asarray(json.loads(row["loss_curve"])), separation=np.asarray(json.loads(row["monitor_curve"])))
    return buf.getvalue()


def write_figures(cfg: Table2Config, store: RunStore, outs: list[Path], normal: str) -> list[str]:
    """Fig. 5 and Fig. 6 PNGs, of the task whose normal class is `normal`, next to each record, from the saved
    figure data; the file names written."""
    present = [v for v in FIGURE_VARIANTS if store.exists(f"figures/{v}.npz")]
    if not present:
        return []
    data = {v: np.load(io.BytesIO(store.read_bytes(f"figures/{v}.npz")), allow_pickle=False) for v in present}
    label = {"none": "without anomalies", "kka_rep": "with KKA (rep)"}
    det = cfg.figures.detector
    fig5 = tsne_panels({f"{det} {label[v]}": (d["embedding"], d["targets"]) for v, d in data.items()},
                       f"Fig. 5: {det}'s embedding of test images, normal class {normal}")
    fig6 = training_curves({label[v]: {"loss": list(d["loss"]), "separation": list(d["separation"])}
                            for v, d in data.items()}, f"Fig. 6: {det}'s training, normal class {normal}")
    names = [f"{cfg.name}-fig5.png", f"{cfg.name}-fig6.png"]
    for out in outs:
        for name, png in zip(names, (fig5, fig6), strict=True):
            RunStore(out).write_bytes(name, png)
    return names


def run_table2(cfg: Table2Config, command: str, progress: bool = True) -> dict[str, float]:
    from kka_ray.runtime import init_ray

    run = Path(cfg.run_dir) / cfg.name
    store = RunStore(run)
    kept = RunStore(cfg.archive) if cfg.archive else None
    if kept and not store.exists(TABLE):
        kept.copy_into(store, KEPT)
    rows = finished_rows(store, cfg)
    store.write_text("config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    init_ray(cfg.ray)
    dataset = build_dataset(cfg.dataset.name, cfg.dataset.root, cfg.dataset.image_size, cfg.dataset.options)
    classes = [c[0] for c in task_list(cfg, dataset.load("test").class_names)]  # type: ignore[arg-type]
    done = {(r["normal_request"], r["seed"], r["detector"], r["variant"]) for r in rows}
    jobs = [(c, s, d, v) for c in classes for s in cfg.seeds for d, vs in cfg.variants.items() for v in vs]
    todo = [j for j in jobs if (str(j[0]), *j[1:]) not in done]
    if done:
        print(f"{cfg.name}: resuming, {len(jobs) - len(todo)} of {len(jobs)} fits already in {run / TABLE}")
    task_key, task, sets, sources = None, None, {}, {}
    figure_task = (classes[0], cfg.seeds[0])
    made_by = made_here()
    for cls, seed, det_name, variant in tqdm(todo, desc=cfg.name, unit="fit", disable=not progress):
        if task_key != (cls, seed):  # jobs are ordered by task: each task's data and sets are built once
            task = make_task(dataset, cfg.dataset.name, [cls], seed=seed, val_fraction=cfg.val_fraction)
            sets, sources = anomaly_sets(cfg, task, cls, seed)
            task_key = (cls, seed)
        figure = (det_name == cfg.figures.detector and variant in FIGURE_VARIANTS and (cls, seed) == figure_task)
        monitor = None
        if figure and cfg.kka_rep is not None:
            loop, t = loop_run(cfg.kka_rep, cfg.dataset.name, cls, seed, cfg.val_fraction)
            monitor = (task.val_normal, unused_generated(loop, t, cfg.figures.monitor_anomalies, seed))
        row, detector = fit_one(cfg, det_name, variant, task, sets[variant], seed, run / "train", monitor)
        if figure:
            store.write_bytes(f"figures/{variant}.npz", figure_data(cfg, task, seed, detector, row))
        rows.append({"normal_request": str(cls), "normal": task.normal_classes[0], "seed": seed, **row, **made_by,
                     "source": sources.get(variant, "")})
        store.write_table(TABLE, pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False))
        if kept:
            store.copy_into(kept, KEPT)
        tqdm.write(f"{task.name} {det_name} {variant}: AUROC {row['auroc']:.1f} ({row['seconds']:.0f} s)")
    table = pd.DataFrame(rows)
    metrics = summarise(table, cfg)
    outs = [run] + ([Path(cfg.results_dir)] if cfg.results_dir else [])
    normal = table.loc[table["normal_request"] == str(figure_task[0]), "normal"].iloc[0]
    figures = write_figures(cfg, store, outs, str(normal))
    page = markdown(cfg, table, metrics, command) + "".join(f"\n![{name}]({name})\n" for name in figures)
    if figures:
        page += ("\nFig. 6's separation uses generated anomalies the fit never saw, not test data; a detector trained "
                 "with KKA's anomalies has seen their kind, so its curve runs high by construction and says nothing "
                 "of test AUROC.\n")
    write_record(cfg.name, metrics, page, outs, command=command,
                 extra={"config": cfg.model_dump(mode="json"), "kka_runs": sorted(set(table["source"]) - {""}),
                        "fits_from": provenance(table, "fits")})
    return metrics


# Keys that change how fast a frozen or eval-mode network is run, never what it computes for an image.
HOW_IT_RUNS = (*(f"backbone.{k}" for k in ("batch_size", "actors", "cpus_per_actor", "gpus_per_actor", "device")),
               "score_batch_size", "score_actors")


def finished_rows(store: RunStore, cfg: Table2Config) -> list[dict]:
    """Rows of an earlier run of the same configuration; where it runs may differ, what it measures may not, and
    a detector with no fit in the table yet may still be configured anew."""
    if not store.exists(TABLE):
        return []
    saved = load_config(Table2Config, store.path("config.yaml")).model_dump(mode="json")
    current = cfg.model_dump(mode="json")
    rows = store.read_table(TABLE).to_pandas()
    where = ("ray.", "run_dir", "results_dir", "archive", "variants", "classes",  # more variants/classes extend it
             *(f"detectors.{d}." for d in {*saved["detectors"], *current["detectors"]} - set(rows["detector"])))
    changed = [k for k in config_diff(saved, current, ignore=where) if not k.endswith(HOW_IT_RUNS)]
    if changed:
        raise ConfigError(f"{store.location} holds results of a different configuration: "
                          f"{describe_diff(saved, current, changed)}; choose another `name` or remove that folder")
    return rows.to_dict("records")


def wide(table: pd.DataFrame, value: str) -> pd.DataFrame:
    """One row per (class, seed), one column per `<detector>_<variant>`."""
    out = table.pivot_table(index=["normal", "seed"], columns=["detector", "variant"], values=value, sort=False)
    out.columns = [f"{d}_{v}" for d, v in out.columns]
    return out.reset_index()


def summarise(table: pd.DataFrame, cfg: Table2Config) -> dict[str, float]:
    """auroc_<d>_<v> (+ _ci95) over classes, seeds averaged first; gain_<d>_<v> paired against <d>_none;
    generated_<d>_<v> (the detector's own synthetic samples) and given_<d>_<v> (noise / KKA / real anomalies
    given) per task; fit_minutes_<d> per fit."""
    aurocs = wide(table, "auroc")
    metrics: dict[str, float] = {}
    for det_name, variants in cfg.variants.items():
        cols = [f"{det_name}_{v}" for v in variants if f"{det_name}_{v}" in aurocs]
        reference = f"{det_name}_none" if f"{det_name}_none" in cols else None
        part, _ = over_classes(aurocs, cols, class_col="normal", reference=reference, prefix="auroc_")
        metrics.update(part)
        mine = table[table["detector"] == det_name]
        for v, group in mine.groupby("variant"):
            metrics[f"generated_{det_name}_{v}"] = float(group["generated"].mean())
            metrics[f"given_{det_name}_{v}"] = float(group["given"].mean())
        metrics[f"fit_minutes_{det_name}"] = float(mine["fit_seconds"].mean() / 60)
    metrics["minutes"] = float(table["seconds"].sum() / 60)
    return metrics


def _count(metrics: dict, det_name: str, variant: str) -> str:
    own, given = metrics.get(f"generated_{det_name}_{variant}", 0), metrics.get(f"given_{det_name}_{variant}", 0)
    if not given:
        return f"{own:,.0f}"
    return f"{own:,.0f} ({given:,.0f})" if own else f"({given:,.0f})"


def markdown(cfg: Table2Config, table: pd.DataFrame, metrics: dict[str, float], command: str) -> str:
    lines = [f"# {cfg.name}", "",
             f"The paper's Table II on {cfg.dataset.name}: {metrics['classes']:.0f} classes, seeds {cfg.seeds}, one "
             "fit per detector and variant per task, all at a fixed budget (no choice by test AUROC). KKA's sets "
             "are each loop run's A_t; noise and oracle sets have as many images.", "",
             f"Command: `{command}`", "",
             *provenance_table(table, "fits"), "",
             "| detector | variant | AUROC % (95% CI over classes) | gain vs none | generated (given) | fit min |",
             "|---|---|---|---|---|---|"]
    for det_name, variants in cfg.variants.items():
        for v in variants:
            key = f"{det_name}_{v}"
            if f"auroc_{key}" not in metrics:
                continue
            ci = metrics.get(f"auroc_{key}_ci95")
            gain = metrics.get(f"gain_{key}")
            gain_ci = metrics.get(f"gain_{key}_ci95")
            lines.append(f"| {det_name} | {v} | {metrics[f'auroc_{key}']:.1f}" + (f" ± {ci:.1f}" if ci else "")
                         + " | " + ("" if gain is None else f"{gain:+.1f}" + (f" ± {gain_ci:.1f}" if gain_ci else ""))
                         + f" | {_count(metrics, det_name, v)} | {metrics[f'fit_minutes_{det_name}']:.1f} |")
    per_class = wide(table, "auroc").groupby("normal", sort=False).mean(numeric_only=True).drop(columns="seed")
    lines += ["", "## Per class (AUROC %, mean over seeds)", "",
              "| class | " + " | ".join(per_class.columns) + " |", "|---|" + "---|" * len(per_class.columns)]
    for cls, values in per_class.iterrows():
        lines.append(f"| {cls} | " + " | ".join("" if np.isnan(x) else f"{x:.1f}" for x in values) + " |")
    return "\n".join(lines) + "\n"
