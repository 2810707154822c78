"""Benchmark summaries over classes. Seeds of one class share its data and its difficulty, so they are not
independent tasks: every column is first averaged over seeds within a class, and the 95% interval is over
classes (the population a result is meant to generalise over)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from kka_ray.metrics import mean_ci


def _mean_and_ci(values: pd.Series, key: str) -> dict[str, float]:
    """`key` = mean of the non-NaN values, `key_ci95` = its 95% t half-width (only with 2 or more values)."""
    values = values.dropna()
    if values.empty:
        return {}
    mean, half = mean_ci(values.to_numpy())
    return {key: mean, **({f"{key}_ci95": half} if np.isfinite(half) else {})}


def over_classes(df: pd.DataFrame, columns: Sequence[str], *, class_col: str = "class", seed_col: str = "seed",
                 reference: str | None = None, prefix: str = "") -> tuple[dict[str, float], pd.DataFrame]:
    """Means over classes of per-class means over seeds, with 95% t-intervals over classes.

    For each column: `{prefix}{col}` and `{prefix}{col}_ci95` (omitted below 2 classes); a row with NaN in a
    column is skipped for that column, and a column with no value at all gives no key. With `reference`, for
    every other column the paired gain `gain_{col}` (and `_ci95`): the mean over classes of per-class mean(col) -
    per-class mean(reference), over the classes that have both. Also `classes`, `seeds` (distinct) and `runs`
    (rows). Returns the metrics and the per-class means (index: class, in order of first appearance)."""
    columns = list(columns)
    if reference is not None and reference not in columns:
        raise ValueError(f"over_classes: reference {reference!r} is not one of the columns {columns}")
    per_class = df.groupby(class_col, sort=False)[columns].mean()  # NaN skipped per column
    metrics: dict[str, float] = {}
    for col in columns:
        metrics.update(_mean_and_ci(per_class[col], f"{prefix}{col}"))
    if reference is not None:
        for col in columns:
            if col != reference:
                metrics.update(_mean_and_ci(per_class[col] - per_class[reference], f"gain_{col}"))
    metrics.update(classes=len(per_class), seeds=int(df[seed_col].nunique()), runs=len(df))
    return metrics, per_class


def provenance(df: pd.DataFrame, unit: str) -> list[dict]:
    """Rows per (commit, machine) that made them: a benchmark resumed across sessions may span several."""
    return [{"commit": None if pd.isna(c) else c, "machine": m, unit: int(n)}  # None: made outside a git checkout
            for (c, m), n in df.groupby(["commit", "machine"], sort=True, dropna=False).size().items()]


def provenance_table(df: pd.DataFrame, unit: str) -> list[str]:
    """provenance() as Markdown lines, for a record's page."""
    return [f"Where the {unit} were made (one resumed across sessions may span several commits and machines; "
            "times compare only within one machine):", "", f"| {unit} | commit | machine |", "|---|---|---|",
            *(f"| {p[unit]} | {short(p['commit'])} | {p['machine']} |" for p in provenance(df, unit))]


def short(commit: str | None) -> str:
    """A commit's first 12 hex digits, keeping a `+modified` mark (a tree with uncommitted changes); records made
    outside a git checkout (a `ray job submit` working dir) have none."""
    return "(no git)" if commit is None else commit[:12] + commit[40:]
