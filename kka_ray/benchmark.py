"""Detector benchmark: every (normal class, seed) task of a dataset -> AUROC table, CI and a result record."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field
from tqdm import tqdm

from kka_ray.config import (
    ConfigError,
    DatasetConfig,
    DeepSADConfig,
    RayConfig,
    Strict,
    config_diff,
    describe_diff,
    load_config,
    save_config,
)
from kka_ray.data import build_dataset, make_task
from kka_ray.detectors import build_detector
from kka_ray.detectors.base import AnyDetectorConfig
from kka_ray.metrics import auroc
from kka_ray.records import metric_key, write_record
from kka_ray.summary import over_classes

TABLE = "results.parquet"


class BenchmarkConfig(Strict):
    name: str = Field("benchmark", description="Record name: docs/results/<name>.json")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    classes: Literal["all"] | list[str | int | list[str | int]] = Field(
        "all", description="Normal class per task ('all' = each class once); a list item may be a list of "
        "classes that are normal together (UCM's protocol)")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Share of train normals held out (KKA's Eq. 6)")
    detector: AnyDetectorConfig = Field(default_factory=DeepSADConfig, description="Any registered detector's "
                                        "config, chosen by its `name`")
    oracle_anomalies: int = Field(0, ge=0, description="If > 0, also fit with this many real anomalies from "
                                  "the other classes' *training* split: the upper bound for generated ones")
    run_dir: str = Field("runs", description="Outputs go to <run_dir>/<name>/")
    results_dir: str | None = Field("docs/results", description="Where the record goes; None = run dir only")
    ray: RayConfig = Field(default_factory=RayConfig)


def task_list(cfg: BenchmarkConfig, class_names: tuple[str, ...]) -> list[list[str | int]]:
    if cfg.classes == "all":
        return [[c] for c in class_names]
    return [c if isinstance(c, list) else [c] for c in cfg.classes]


def run_task(cfg: BenchmarkConfig, dataset, normal: list, seed: int, workdir: Path) -> dict:
    """Fit on one task's train normals (and, for the oracle, real training anomalies); test AUROC in percent."""
    task = make_task(dataset, cfg.dataset.name, normal, seed=seed, val_fraction=cfg.val_fraction)
    row = {"task": task.name, "normal": "+".join(task.normal_classes), "seed": seed}
    variants = {"": None}
    if cfg.oracle_anomalies:
        variants["oracle_"] = task.oracle_anomalies(cfg.oracle_anomalies)
    for prefix, anomalies in variants.items():
        start = time.perf_counter()
        detector = build_detector(cfg.detector)
        fit = detector.fit(task.train_normal, anomalies, seed=seed, workdir=workdir)
        row[f"{prefix}auroc"] = 100 * auroc(task.test_targets, detector.score(task.test.images))
        row[f"{prefix}final_loss"] = float(fit.get("loss", np.nan))
        row[f"{prefix}seconds"] = time.perf_counter() - start
    return row


def summarise(table: pd.DataFrame, oracle: bool) -> tuple[dict[str, float], pd.DataFrame]:
    """Mean over classes of the per-class means over seeds, with a 95% t-interval over classes; the per-class
    mean and sd over seeds for the page and the plot."""
    cols = ["auroc", "oracle_auroc"] if oracle else ["auroc"]
    summary, means = over_classes(table, cols, class_col="normal")
    metrics: dict[str, float] = {"classes": summary["classes"], "seeds": summary["seeds"]}
    for col, key in (("auroc", "mean_auroc"), ("oracle_auroc", "mean_auroc_oracle")):
        if col not in cols:
            continue
        metrics[key] = summary[col]
        if f"{col}_ci95" in summary:
            metrics[f"{key}_ci95"] = summary[f"{col}_ci95"]
        for cls, value in means[col].items():
            metrics[f"{col}_{metric_key(cls)}"] = float(value)
    metrics["tasks"] = len(table)
    metrics["seconds"] = float(table.filter(like="seconds").to_numpy().sum())
    return metrics, table.groupby("normal", sort=False)[cols].agg(["mean", "std"])


def markdown(cfg: BenchmarkConfig, metrics: dict[str, float], per_class: pd.DataFrame, command: str) -> str:
    oracle = "oracle_auroc" in per_class.columns.get_level_values(0)
    head = "| normal class | AUROC % (mean ± sd over seeds) |" + (" oracle AUROC % |" if oracle else "")
    lines = [
        f"# {cfg.name}",
        "",
        f"{cfg.detector.name} on {cfg.dataset.name}, one-class protocol: each class in turn is normal, all "
        f"others are anomalies; seeds {cfg.seeds}; {int(metrics['tasks'])} tasks in "
        f"{metrics['seconds'] / 60:.1f} min.",
        "",
        f"Command: `{command}`",
        "",
        head,
        "|---|---|" + ("---|" if oracle else ""),
    ]

    def cell(col: str, cls: str) -> str:
        mean, sd = per_class.loc[cls, (col, "mean")], per_class.loc[cls, (col, "std")]
        return f" {mean:.1f}" + (f" ± {sd:.1f}" if np.isfinite(sd) else "") + " |"

    for cls in per_class.index:
        lines.append(f"| {cls} |" + cell("auroc", cls) + (cell("oracle_auroc", cls) if oracle else ""))
    mean_row = f"| **mean** | **{metrics['mean_auroc']:.1f}**"
    if "mean_auroc_ci95" in metrics:
        mean_row += (f" ± {metrics['mean_auroc_ci95']:.1f} (95% CI over the {metrics['classes']:.0f} classes, seeds "
                     "averaged within each class first)")
    mean_row += " |"
    if oracle:
        mean_row += f" **{metrics['mean_auroc_oracle']:.1f}** |"
    lines += [mean_row, ""]
    if oracle:
        lines += [
            f"The oracle column gives the same detector {cfg.oracle_anomalies} *real* anomalies drawn from the "
            "other classes' training split as labelled anomalies. Generated anomalies (KKA) cannot be expected "
            "to beat it: it is the upper bound they are compared against.",
            "",
        ]
    return "\n".join(lines)


def run_benchmark(cfg: BenchmarkConfig, command: str, progress: bool = True) -> dict[str, float]:
    """Run every task, appending each row to <run>/results.parquet as it completes, then write the record."""
    from kka_ray.runtime import init_ray

    run = Path(cfg.run_dir) / cfg.name
    run.mkdir(parents=True, exist_ok=True)
    rows = finished_rows(run, cfg)
    save_config(cfg, run / "config.yaml")
    init_ray(cfg.ray)
    dataset = build_dataset(cfg.dataset.name, cfg.dataset.root, cfg.dataset.image_size, cfg.dataset.options)
    tasks = [(normal, seed) for normal in task_list(cfg, dataset.load("test").class_names) for seed in cfg.seeds]
    done = {(r["request"], r["seed"]) for r in rows}
    todo = [(n, s) for n, s in tasks if (json.dumps(n), s) not in done]
    if done:
        print(f"{cfg.name}: resuming, {len(tasks) - len(todo)} of {len(tasks)} tasks already in {run / TABLE}")
    for normal, seed in tqdm(todo, desc=cfg.name, unit="task", disable=not progress):
        rows.append({"request": json.dumps(normal), **run_task(cfg, dataset, normal, seed, run / "train")})
        pd.DataFrame(rows).to_parquet(run / TABLE)  # every finished task survives a later failure
        tqdm.write(f"{rows[-1]['task']}: AUROC {rows[-1]['auroc']:.1f}"
                   + (f", oracle {rows[-1]['oracle_auroc']:.1f}" if cfg.oracle_anomalies else ""))
    metrics, per_class = summarise(pd.DataFrame(rows), oracle=cfg.oracle_anomalies > 0)
    page = markdown(cfg, metrics, per_class, command) + f"\n![per-class AUROC]({cfg.name}.png)\n"
    outs = [run] + ([Path(cfg.results_dir)] if cfg.results_dir else [])
    for out in outs:
        out.mkdir(parents=True, exist_ok=True)
        plot_per_class(per_class, out / f"{cfg.name}.png", cfg.name)
    write_record(cfg.name, metrics, page, outs, command=command, extra={"config": cfg.model_dump(mode="json")})
    return metrics


def finished_rows(run: Path, cfg: BenchmarkConfig) -> list[dict]:
    """Rows of an earlier run of the same configuration, so a rerun continues where it stopped."""
    if not (run / TABLE).is_file():
        return []
    saved = load_config(BenchmarkConfig, run / "config.yaml").model_dump(mode="json")
    current = cfg.model_dump(mode="json")
    if changed := config_diff(saved, current, ignore=("ray.",)):  # where it runs is not what it measures
        raise ConfigError(f"{run} holds results of a different configuration ({run / 'config.yaml'} -> now): "
                          f"{describe_diff(saved, current, changed)}; choose another `name` or `run_dir`, or remove "
                          "that folder")
    return pd.read_parquet(run / TABLE).to_dict("records")


def plot_per_class(per_class: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [c for c in ("auroc", "oracle_auroc") if c in per_class.columns.get_level_values(0)]
    x = np.arange(len(per_class))
    width = 0.8 / len(cols)
    fig, ax = plt.subplots(figsize=(1 + 0.8 * len(per_class), 3.5))
    for i, col in enumerate(cols):
        ax.bar(x + i * width, per_class[(col, "mean")], width, yerr=per_class[(col, "std")].fillna(0),
               label="no anomalies" if col == "auroc" else "oracle (real anomalies)")
    ax.set_xticks(x + width * (len(cols) - 1) / 2, per_class.index, rotation=30, ha="right")
    ax.set_ylabel("test AUROC %")
    ax.set_ylim(max(0, float(per_class.xs("mean", axis=1, level=1).min().min()) - 10), 100)
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
