"""Stage 7 (Eq. 8): the anomaly set A_t from A_{t-1} and the new, judged anomalies of iteration t.

As the paper states it: add injects the new *hard* anomalies, A_t = A_{t-1} + hard(N_t). rep keeps the count:
randomly chosen easy anomalies of A_{t-1} are replaced by randomly chosen new hard ones (seeded), as many as
there are of the fewer; hard anomalies always stay, and new easy ones never enter. A_0 is all of N_0 (the
initial set). Each anomaly keeps the verdict it got when it was new, unless
`rejudge`: then the loop judges A_{t-1} again with the current theta_C first. That theta_C was trained to push
A_{t-1} out, so nearly all of it turns easy and A_t follows the tuned model's anomalies; with kept verdicts
the hard anomalies of iteration 0 (judged by theta_C without anomalies) stay for good.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from kka_ray.config import Strict


class UpdateConfig(Strict):
    mode: Literal["add", "rep"] = Field("rep", description="add: inject the new hard anomalies; rep: keep |A| "
                                        "fixed and replace randomly chosen easy anomalies with new hard ones")
    iterations: int = Field(2, ge=0, description="T: DPO rounds after KKA(0); the loop reports KKA(0)..KKA(T)")
    rejudge: bool = Field(False, description="rep only: judge A_{t-1} again with the current theta_C before "
                          "replacing (A_t then follows the tuned model); off: verdicts from when each was new")

    @model_validator(mode="after")
    def _rep_only(self) -> UpdateConfig:
        if self.rejudge and self.mode != "rep":
            raise ValueError(f"update.rejudge applies to mode 'rep' only, got mode {self.mode!r}")
        return self


def update_anomalies(previous: pa.Table, new: pa.Table, mode: str, seed: int) -> pa.Table:
    """Eq. 8. Both tables carry `hard`; kept rows stay in their order, incoming ones follow in generation order."""
    rng = np.random.default_rng(seed)
    hard_new = np.flatnonzero(new.column("hard").to_numpy(zero_copy_only=False))
    if mode == "add":
        keep, chosen = previous, hard_new
    elif mode == "rep":
        easy = np.flatnonzero(~previous.column("hard").to_numpy(zero_copy_only=False))
        n = min(len(easy), len(hard_new))
        dropped = rng.choice(easy, n, replace=False)
        keep = previous.filter(pa.array(~np.isin(np.arange(len(previous)), dropped)))
        chosen = np.sort(rng.choice(hard_new, n, replace=False))
    else:
        raise ValueError(f"update mode must be 'add' or 'rep', got {mode!r}")
    incoming = new.take(pa.array(chosen, type=pa.int64()))
    return pa.concat_tables([keep, incoming.select(keep.column_names)], promote_options="permissive")


def origin_counts(anomalies: pa.Table) -> dict[int, int]:
    """How many anomalies of A come from each generation iteration."""
    counts = pc.value_counts(anomalies.column("iteration")).to_pylist()
    return {int(c["values"]): int(c["counts"]) for c in counts}
