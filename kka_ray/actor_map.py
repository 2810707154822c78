"""Run an image -> array actor over Ray Data and get the results back in input order."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy


def driver_blocks(table: pa.Table, n_blocks: int):
    """A Ray Dataset cut into blocks on the driver: a repartition task could starve behind actors holding every
    CPU of a small machine."""
    step = max(1, -(-len(table) // max(1, n_blocks)))
    return ray.data.from_arrow([table.slice(i, step) for i in range(0, len(table), step)])


def pool_map(ds, actor_cls: type, ctor_kwargs: dict, pool):
    """`ds` through a fixed pool of `actor_cls` actors sized by a stage config (`actors`, `batch_size`,
    `cpus_per_actor`, `gpus_per_actor`, `max_restarts`): a dead actor restarts, and its batch is retried, at most
    `max_restarts` times (Ray Data's default is unlimited, which loops forever on a crash that repeats)."""
    return ds.map_batches(
        actor_cls,
        fn_constructor_kwargs=ctor_kwargs,
        compute=ActorPoolStrategy(size=pool.actors),
        batch_size=pool.batch_size,
        num_cpus=pool.cpus_per_actor,
        num_gpus=pool.gpus_per_actor,
        batch_format="numpy",
        max_restarts=pool.max_restarts,
        max_task_retries=pool.max_restarts,
    )


def map_images(images: np.ndarray, actor_cls: type, ctor_kwargs: dict, *, output: str, actors: int,
               batch_size: int, num_cpus: float, num_gpus: float = 0.0) -> np.ndarray:
    """`actor_cls(**ctor_kwargs)(batch)` maps {"row", "image"} batches to {"row", output}; rows come back sorted."""
    if len(images) == 0:
        raise ValueError(f"{actor_cls.__name__}: no images")
    table = pa.table({
        "row": np.arange(len(images)),
        "image": pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(images)),
    })
    out = driver_blocks(table, actors).map_batches(
        actor_cls,
        fn_constructor_kwargs=ctor_kwargs,
        compute=ActorPoolStrategy(size=actors),
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=num_cpus,
        num_gpus=num_gpus,
    )
    rows, values = [], []
    for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
        rows.append(batch["row"])
        values.append(batch[output])
    result = np.empty((len(images), *values[0].shape[1:]), dtype=values[0].dtype)
    result[np.concatenate(rows)] = np.concatenate(values)
    return result
