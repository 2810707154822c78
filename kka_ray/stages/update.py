"""Stage 7 (Eq. 8): the anomaly set A_t from A_{t-1} (judged hard/easy) and the tuned model's new anomalies.

add: A_t = A_{t-1} + new. rep: |A_t| = |A_{t-1}|; the easy anomalies are replaced by new ones, the easiest
(largest distance) first, as far as there are new ones; hard anomalies always stay.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from kka_ray.config import Strict

_JUDGEMENT = ("score", "hard", "judged_iteration")


class UpdateConfig(Strict):
    mode: Literal["add", "rep"] = Field("rep", description="add: append new anomalies; rep: keep |A| fixed and "
                                        "replace easy anomalies with new ones")
    iterations: int = Field(2, ge=0, description="T: DPO rounds after KKA(0); the loop reports KKA(0)..KKA(T)")


def update_anomalies(previous: pa.Table, new: pa.Table, mode: str, seed: int) -> pa.Table:
    """Eq. 8. `previous` carries `hard` and `score`; the result drops judgements (A_t is judged afresh)."""
    if mode == "add":
        keep, incoming = previous, new
    elif mode == "rep":
        easy = np.flatnonzero(~previous.column("hard").to_numpy(zero_copy_only=False))
        n = min(len(easy), len(new))
        scores = previous.column("score").to_numpy()
        dropped = easy[np.argsort(-scores[easy], kind="stable")[:n]]
        keep = previous.filter(pa.array(~np.isin(np.arange(len(previous)), dropped)))
        # a seeded draw, not the first n, so every representative's prompt has a chance to contribute
        picked = np.sort(np.random.default_rng(seed).choice(len(new), size=n, replace=False))
        incoming = new.take(pa.array(picked, type=pa.int64()))
    else:
        raise ValueError(f"update mode must be 'add' or 'rep', got {mode!r}")
    keep = keep.drop_columns([c for c in _JUDGEMENT if c in keep.column_names])
    return pa.concat_tables([keep, incoming.select(keep.column_names)], promote_options="permissive")


def origin_counts(anomalies: pa.Table) -> dict[int, int]:
    """How many anomalies of A come from each generation iteration."""
    counts = pc.value_counts(anomalies.column("iteration")).to_pylist()
    return {int(c["values"]): int(c["counts"]) for c in counts}
