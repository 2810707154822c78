"""Stage 3 (Eq. 4): anomaly descriptions x_a^t -> images x_a^i at the task's resolution and channels.

Prompts, the language-model pool, the cleaner and the render pool form one lazy Ray Data pipeline: descriptions
stream into the render actors as they are produced, nothing is materialised or written in between.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import ray

from kka_ray.render import RenderConfig, build_renderer
from kka_ray.stages.generate import COST_COLUMNS, GenerateConfig, NormalContext, description_stream, stream_costs
from kka_ray.text.clean import drop_later_copies

if TYPE_CHECKING:  # only named in annotations: selecting (scikit-learn) is not loaded in the actors
    from kka_ray.stages.select import Representative

_RENDER_ONLY = ("image", "rendered", "render_seed", "render_seconds", "render_start", "render_end")


def anomaly_stream(reps: Sequence[Representative], ctx: NormalContext, gen: GenerateConfig, render: RenderConfig,
                   size: int, channels: int, iteration: int = 0, dataset: str | None = None):
    """The lazy pipeline prompts -> LM pool -> cleaner -> render pool (the prior checked against `dataset`)."""
    backend = build_renderer(render, dataset)
    stream = backend.apply(description_stream(reps, ctx, gen, iteration), size, channels)
    return stream, backend.model_id()


@dataclass
class RenderResult:
    anomalies: pa.Table  # kept descriptions with their image (fixed-shape tensor column) and provenance
    rejects: pa.Table  # cleaned-out lines with their reason, never rendered
    stats: dict[str, float]
    costs: dict[str, float]  # per streaming stage: busy seconds, rows/s, peak RSS (generate.stream_costs)

    @property
    def images(self) -> np.ndarray:
        return self.anomalies.column("image").combine_chunks().to_numpy_ndarray()


def collect(stream, renderer_id: str, cleaned: bool = False) -> RenderResult:
    """Run the stream to its end; split rendered anomalies from rejected lines. `cleaned`: the stream came through
    the cleaner (`anomaly_stream`), whose later copies of a kept line are settled here, in generation order."""
    start = time.time()
    columns: dict[str, list] = {}
    try:
        for batch in stream.iter_batches(batch_size=None, batch_format="numpy"):
            for k, v in batch.items():
                columns.setdefault(k, []).append(v)
    except ray.exceptions.RayActorError as e:  # restarted until its limit: a crash that repeats
        cause = " ".join(str(e).split())[:400]
        raise RuntimeError("a stage's actor died and was restarted up to its limit (generate.lm.max_restarts, "
                           f"render.max_restarts); the pass stops here, earlier iterations are kept: {cause}") from e
    data = {k: np.concatenate(v) for k, v in columns.items()}
    if "row_id" in data:  # blocks arrive in completion order; a stable sort restores generation order
        order = np.argsort(data["row_id"], kind="stable")
        data = {k: v[order] for k, v in data.items()}
    kept = data["rendered"].astype(bool)
    if cleaned:  # a later copy that arrived before the first one was rendered, but it is a duplicate
        data["reason"] = np.array(drop_later_copies(data["row_id"], data["sentence"], data["reason"]), dtype=object)
        kept &= data["reason"] == ""
    costs = stream_costs(data)
    meta = {k: v for k, v in data.items() if k not in _RENDER_ONLY and k not in COST_COLUMNS}
    anomalies = pa.table({
        **{k: _column(v[kept]) for k, v in meta.items() if k != "reason"},
        "renderer": [renderer_id] * int(kept.sum()),
        "render_seed": data["render_seed"][kept],
        "render_seconds": data["render_seconds"][kept],
        "image": pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(data["image"][kept])),
    })
    rejects = pa.table({k: _column(v[~kept]) for k, v in meta.items()})
    wall = time.time() - start
    stats = {"anomalies": len(anomalies), "rejected": len(rejects), "seconds": wall,
             "images_per_s_wall": len(anomalies) / wall}
    if kept.any():  # busy span of the render pool: first batch's start to last batch's end
        span = float(data["render_end"][kept].max() - data["render_start"][kept].min())
        stats["images_per_s"] = len(anomalies) / span
    return RenderResult(anomalies, rejects, stats, costs)


def _column(values: np.ndarray) -> pa.Array:
    return pa.array(values.tolist()) if values.dtype == object else pa.array(values)
