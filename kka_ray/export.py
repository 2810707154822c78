"""A run's anomaly set A_t as image folders other tools read, so generated anomalies can train any detector.

- `anomalib`: anomalib's `Folder` layout: `normal/` (the task's training normals) and `abnormal/` (A_t), one PNG
  per image; `Folder(name=..., root=DEST, normal_dir="normal", abnormal_dir="abnormal")` reads it.
- `image_folder`: this project's own layout (`kka_ray/data/image_folder.py`): `train/<normal class>/` (the task's
  training normals), `train/generated_anomaly/` (A_t), `test/<class>/` (the task's test split by class) and
  `captions.csv` (each generated anomaly's description as its caption).

Both write a `manifest.json` naming the run, the iteration and the counts. The destination must not exist
(nothing is overwritten); the folder is built under a temporary name and renamed when complete.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from PIL import Image

from kka_ray.data import build_dataset
from kka_ray.loop import STATE, load_run_config, load_task
from kka_ray.records import metric_key
from kka_ray.stages.evaluate import images_of
from kka_ray.store import RunStore

Format = Literal["anomalib", "image_folder"]
GENERATED = "generated_anomaly"


def _save(images: np.ndarray, folder: Path, names: list[str]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for img, name in zip(images, names, strict=True):
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(folder / name)
    return names


def _names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}_{i:05d}.png" for i in range(n)]


def anomaly_table(run: str, iteration: int | None, hard_only: bool) -> tuple[pa.Table, int]:
    """A_t of a run (t = the last completed iteration when None), optionally only its hard anomalies."""
    store = RunStore(run)
    if not store.exists(STATE):
        raise FileNotFoundError(f"{run}: no {STATE} there (not a KKA run folder, or no iteration finished yet)")
    completed = store.read_state(STATE)["completed"]
    t = completed if iteration is None else iteration
    if completed is None or completed < 0 or t > completed or t < 0:
        raise ValueError(f"{run}: iteration {t} is not finished (completed: {completed})")
    table = store.read_table(f"iter_{t}/anomalies.parquet")
    if hard_only:
        table = table.filter(table.column("hard"))
    if len(table) == 0:
        raise ValueError(f"{run}: A_{t} has no {'hard ' if hard_only else ''}anomaly to export")
    return table, t


def export_run(run: str, dest: str | Path, fmt: Format, iteration: int | None = None,
               hard_only: bool = False) -> dict:
    """Write A_t (and the task's images) to `dest` in `fmt`; returns the manifest."""
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} already exists; choose a new destination (nothing is overwritten)")
    table, t = anomaly_table(run, iteration, hard_only)
    cfg = load_run_config(run, [])
    task = load_task(cfg)
    tmp = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    anomalies, sentences = images_of(table), table.column("sentence").to_pylist()
    normal = metric_key("+".join(task.normal_classes))
    counts = {"normal": len(task.train_normal), "generated": len(anomalies)}
    if fmt == "anomalib":
        _save(task.train_normal.images, tmp / "normal", _names("normal", len(task.train_normal)))
        _save(anomalies, tmp / "abnormal", _names("generated", len(anomalies)))
    elif fmt == "image_folder":
        _save(task.train_normal.images, tmp / "train" / normal, _names("normal", len(task.train_normal)))
        names = _save(anomalies, tmp / "train" / GENERATED, _names("generated", len(anomalies)))
        test = task.test
        for label, cls in enumerate(test.class_names):
            idx = np.flatnonzero(test.labels == label)
            if len(idx):
                _save(test.images[idx], tmp / "test" / metric_key(cls), _names("test", len(idx)))
        counts["test"] = len(test)
        with open(tmp / "captions.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "caption"])
            writer.writerows((f"train/{GENERATED}/{n}", s) for n, s in zip(names, sentences, strict=True))
    else:
        raise ValueError(f"unknown export format {fmt!r}; expected anomalib or image_folder")
    manifest = {"run": str(run), "iteration": t, "format": fmt, "hard_only": hard_only, "dataset": cfg.dataset.name,
                "normal_classes": [str(c) for c in cfg.normal_classes], "counts": counts}
    if fmt == "image_folder":  # the dataset config that reads it back in this project
        domain = build_dataset(cfg.dataset.name, cfg.dataset.root, cfg.dataset.image_size, cfg.dataset.options).domain
        manifest["dataset_config"] = {"name": "image_folder", "root": str(dest), "image_size": int(anomalies.shape[1]),
                                      "options": {"channels": int(anomalies.shape[-1]), "domain": domain}}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.rename(dest)
    return manifest
