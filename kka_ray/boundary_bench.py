"""Where to put Eq. 6's boundary: the hard share of N_0 under theta_C without anomalies, for boundaries at several
quantiles of the validation normals' distances, over the finished runs of a benchmark. Only validation normals
and generated anomalies are scored (the test split is never read), so the quantile can be chosen from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from kka_ray.detectors.deepsad import DeepSAD
from kka_ray.loop import BASELINE_JUDGE, KKAConfig, load_task
from kka_ray.records import write_record
from kka_ray.runtime import init_ray
from kka_ray.stages.evaluate import hard_easy_split, images_of
from kka_ray.store import RunStore
from kka_ray.summary import over_classes

QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.99, 1.0)


# What judging N_0 depends on. Only these sections of a run's config are read, so runs saved before later
# changes to other stages (e.g. DPO's pair options) can still be judged; they are never resumed from here.
JUDGE_KEYS = ("name", "run_dir", "dataset", "normal_classes", "seed", "val_fraction", "evaluator", "ray")


def judge_config(run_folder: str) -> KKAConfig:
    tree = yaml.safe_load(RunStore(run_folder).read_text("config.yaml"))
    return KKAConfig.model_validate({k: v for k, v in tree.items() if k in JUDGE_KEYS})


def hard_shares(run_folder: str, quantiles: tuple[float, ...] = QUANTILES) -> dict[str, float]:
    """N_0's hard share at each quantile, judged by the run's saved theta_C without anomalies."""
    cfg = judge_config(run_folder)
    init_ray(cfg.ray)
    store = RunStore(run_folder)
    judge = DeepSAD.from_checkpoint(cfg.evaluator, store.path(BASELINE_JUDGE), store.fs)
    task = load_task(cfg)
    n0 = images_of(store.read_table("iter_0/generated.parquet"))
    scores = judge.score(np.concatenate([n0, task.val_normal.images]))
    return {f"q{round(100 * q)}": hard_easy_split(scores[:len(n0)], scores[len(n0):], q).hard_share
            for q in quantiles}


def run_boundary_bench(runs: list[str], name: str, out: Path, command: str) -> dict[str, float]:
    """One row per run folder (its class and seed from its config), summarised over classes."""
    rows = []
    for folder in runs:
        cfg = judge_config(folder)
        rows.append({"class": "+".join(map(str, cfg.normal_classes)), "seed": cfg.seed, **hard_shares(folder)})
    df = pd.DataFrame(rows)
    cols = [f"q{round(100 * q)}" for q in QUANTILES]
    m, per_class = over_classes(df, cols, prefix="hard_share_")
    page = "\n".join([
        f"# {name}", "", f"`{command}`", "",
        "Hard share of N_0 (KKA's first generated anomalies) under theta_C without anomalies, when the boundary "
        "of Eq. 6 is the q-quantile of the validation normals' distances (q = 1: their maximum, the paper's "
        "rule). Only validation normals and generated images are scored. Mean over classes, 95% interval over "
        f"classes; {int(m['classes'])} classes, seeds {sorted(df['seed'].unique().tolist())}.", "",
        "| normal class | " + " | ".join(f"q = {q}" for q in QUANTILES) + " |",
        "| --- |" + " ---: |" * len(QUANTILES),
        *[f"| {c} | " + " | ".join(f"{r[k]:.3f}" for k in cols) + " |" for c, r in per_class.iterrows()],
        "| **mean** | " + " | ".join(f"**{m[f'hard_share_{k}']:.3f}**" for k in cols) + " |", ""])
    write_record(name, m, page, out, command=command, extra={"runs": df.to_dict("records")})
    return m
