"""How kNN's head variant should join the head's logit to the kNN distance, judged without the test split (record
`knn-combine-<dataset>`): each Table II task's validation normals against real anomalies from the other classes'
*train* images, scored by kNN alone and by the head variant (fitted on KKA's set) in each `combine` mode; and, if
asked, by a score-level ensemble of kNN with another Table II detector fitted on KKA's set (this project's own
variant), joined the same ways."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field
from tqdm import tqdm

from kka_ray.benchmark import task_list
from kka_ray.config import ConfigError, RayConfig, Strict, load_config
from kka_ray.data import build_dataset, make_task
from kka_ray.detectors.knn import KNN, KNNConfig
from kka_ray.detectors.knn.model import combine, knn_distance, standardiser
from kka_ray.metrics import auroc
from kka_ray.records import write_record
from kka_ray.runtime import init_ray
from kka_ray.summary import over_classes
from kka_ray.table2 import Table2Config, anomaly_sets


class KNNCombineConfig(Strict):
    name: str = Field("knn-combine-mnist", description="Record name: docs/results/<name>.json")
    table2: str = Field("configs/table2/mnist.yaml", description="Table II config whose dataset, classes, seeds, "
                        "validation share, kNN detector and KKA sets (kka_rep) are used, and whose feature cache "
                        "(<run_dir>/<name>/train/features) is shared")
    detector: str = Field("knn", description="The Table II detector entry to check (a knn)")
    modes: list[Literal["sum", "one_sided"]] = Field(default_factory=lambda: ["sum", "one_sided"], min_length=1)
    ensemble: str | None = Field(None, description="A Table II detector entry (e.g. sad) fitted on KKA's set whose "
                                 "score, standardised on its training normals, joins kNN's standardised distance in "
                                 "each mode (columns ensemble_<mode>); None: kNN's own head only")
    real_anomalies: int = Field(400, ge=1, description="Other classes' train images drawn per task")
    draw_seed: int = Field(1, description="Seed of that draw (Table II's oracle variant draws with the task seed)")
    results_dir: str | None = "docs/results"
    ray: RayConfig = Field(default_factory=RayConfig)


def run_knn_combine(cfg: KNNCombineConfig, command: str, progress: bool = True) -> dict[str, float]:
    t2 = load_config(Table2Config, cfg.table2)
    knn = t2.detectors.get(cfg.detector)
    if not isinstance(knn, KNNConfig):
        raise ConfigError(f"{cfg.table2}: detectors.{cfg.detector} is {getattr(knn, 'name', 'missing')}, not a knn")
    if t2.kka_rep is None:
        raise ConfigError(f"{cfg.table2}: no kka_rep runs to fit the head on")
    if cfg.ensemble is not None and cfg.ensemble not in t2.detectors:
        raise ConfigError(f"ensemble: {cfg.table2} has no detector {cfg.ensemble!r} (it has "
                          f"{', '.join(t2.detectors)})")
    init_ray(cfg.ray)
    dataset = build_dataset(t2.dataset.name, t2.dataset.root, t2.dataset.image_size, t2.dataset.options)
    workdir = Path(t2.run_dir) / t2.name / "train"
    rows = []
    tasks = [(c[0], s) for c in task_list(t2, dataset.load("test").class_names) for s in t2.seeds]  # type: ignore[arg-type]
    for cls, seed in tqdm(tasks, desc=cfg.name, unit="task", disable=not progress):
        task = make_task(dataset, t2.dataset.name, [cls], seed=seed, val_fraction=t2.val_fraction)
        kka = anomaly_sets(t2, task, cls, seed)[0]["kka_rep"]
        real = task.oracle_anomalies(cfg.real_anomalies, seed=cfg.draw_seed)
        images = np.concatenate([task.val_normal.images, real.images])
        targets = np.r_[np.zeros(len(task.val_normal)), np.ones(len(real))]
        detector = KNN(knn)
        detector.fit(task.train_normal, kka, seed=seed, workdir=workdir)
        # One fit serves every mode: the modes differ only in how `combine` joins the two standardised parts,
        # and the standardised distance ranks as kNN alone does (same bank, same k).
        z_knn, z_head = detector.parts(images)
        row = {"class": task.normal_classes[0], "seed": seed, "kka": len(kka), "none": 100 * auroc(targets, z_knn)}
        for mode in cfg.modes:  # an empty KKA set leaves no head: the variant is then kNN alone
            row[mode] = row["none"] if z_head is None else 100 * auroc(targets, combine(z_knn, z_head, mode))
        if cfg.ensemble is not None:
            z_member = ensemble_member(t2, cfg.ensemble, task, kka, seed, workdir, images)
            if z_head is None:  # without a head, parts() gave the raw distance
                z_knn = standardiser(knn_distance(detector.bank, detector.bank, knn.k, exclude_self=True))(z_knn)
            row["member"] = 100 * auroc(targets, z_member)
            for mode in cfg.modes:
                row[f"ensemble_{mode}"] = 100 * auroc(targets, combine(z_knn, z_member, mode))
        rows.append(row)
        tqdm.write(f"{task.name}: " + ", ".join(f"{m} {row[m]:.1f}" for m in columns(cfg)))
    table = pd.DataFrame(rows)
    metrics, per_class = over_classes(table, columns(cfg), reference="none", prefix="auroc_")
    if {"sum", "one_sided"} <= set(cfg.modes):
        table["one_sided_vs_sum"] = table["one_sided"] - table["sum"]
        metrics.update(over_classes(table, ["one_sided_vs_sum"], prefix="gain_")[0])
    write_record(cfg.name, metrics, page(cfg, t2, per_class, metrics, command),
                 [Path(t2.run_dir) / cfg.name] + ([Path(cfg.results_dir)] if cfg.results_dir else []), command=command,
                 extra={"config": cfg.model_dump(mode="json"), "table2_config": t2.model_dump(mode="json")})
    return metrics


def columns(cfg: KNNCombineConfig) -> list[str]:
    ensemble = ["member", *(f"ensemble_{m}" for m in cfg.modes)] if cfg.ensemble else []
    return ["none", *cfg.modes, *ensemble]


def ensemble_member(t2: Table2Config, name: str, task, kka, seed: int, workdir: Path,
                    images: np.ndarray) -> np.ndarray:
    """Table II's detector `name` fitted on the task's normals and KKA's set: its scores of `images`, standardised
    by its scores of those training normals (as kNN's distance is, leave-one-out); one scoring pass for both."""
    from kka_ray.detectors import build_detector

    member = build_detector(t2.detectors[name])
    member.fit(task.train_normal, kka, seed=seed, workdir=workdir / name)
    n = len(task.train_normal)
    scores = member.score(np.concatenate([task.train_normal.images, images]))
    return standardiser(scores[:n])(scores[n:])


def page(cfg: KNNCombineConfig, t2: Table2Config, per_class: pd.DataFrame, metrics: dict, command: str) -> str:
    modes = columns(cfg)
    ci = lambda k: f" ± {metrics[k + '_ci95']:.1f}" if k + "_ci95" in metrics else ""  # noqa: E731
    lines = [f"# {cfg.name}", "",
             f"kNN on {t2.dataset.name} (the `{cfg.detector}` detector of `{cfg.table2}`), judged on each task's "
             f"validation normals against {cfg.real_anomalies} other-class images of the *train* split (never the "
             "test split): `none` is kNN alone; the others add a logistic head fitted on KKA's set (kka_rep), its "
             "standardised logit summed as it is (`sum`) or only where positive (`one_sided`)"
             + (f"; `member` is Table II's `{cfg.ensemble}` fitted on KKA's set alone, and `ensemble_<mode>` joins its "
                "score, standardised on its training normals, to kNN's in that mode (this project's own score-level "
                "ensemble)" if cfg.ensemble else "")
             + ". AUROC %, mean over classes with its 95% interval.", "", f"Command: `{command}`", "",
             "| " + " | ".join(modes) + " |", "|" + "---|" * len(modes),
             "| " + " | ".join(f"{metrics[f'auroc_{m}']:.1f}{ci(f'auroc_{m}')}" for m in modes) + " |", "",
             "Paired against kNN alone: " + ", ".join(f"{m} {metrics[f'gain_{m}']:+.1f}{ci(f'gain_{m}')}"
                                                      for m in modes[1:]) + "."]
    if "gain_one_sided_vs_sum" in metrics:
        lines += ["", f"One-sided against sum: {metrics['gain_one_sided_vs_sum']:+.1f}"
                  f"{ci('gain_one_sided_vs_sum')}."]
    lines += ["", "| class | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
    lines += [f"| {c} | " + " | ".join(f"{r[m]:.1f}" for m in modes) + " |" for c, r in per_class.iterrows()]
    return "\n".join(lines) + "\n"
