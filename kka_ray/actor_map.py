"""Run an image -> array actor over Ray Data and get the results back in input order."""

from __future__ import annotations

import uuid
from collections import OrderedDict

import numpy as np
import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy, TaskPoolStrategy


def driver_blocks(table: pa.Table, n_blocks: int):
    """A Ray Dataset cut into blocks on the driver: a repartition task could starve behind actors holding every
    CPU of a small machine."""
    step = max(1, -(-len(table) // max(1, n_blocks)))
    return ray.data.from_arrow([table.slice(i, step) for i in range(0, len(table), step)])


def pool_map(ds, actor_cls: type, ctor_kwargs: dict, pool):
    """`ds` through a fixed pool of `actor_cls` actors sized by a stage config (`actors`, `batch_size`,
    `cpus_per_actor`, `gpus_per_actor`, `max_restarts`): a dead actor restarts at most `max_restarts` times (Ray
    Data's default is unlimited, which loops forever on a crash that repeats), and its batch is retried until
    then. The retries are not counted separately: when a node dies, every retry sent before Ray declares the node
    dead (15-20 s) fails at once on the old address, and a count of `max_restarts` was spent within seconds
    (the fault job's `worker_node`)."""
    return ds.map_batches(
        actor_cls,
        fn_constructor_kwargs=ctor_kwargs,
        compute=ActorPoolStrategy(size=pool.actors),
        batch_size=pool.batch_size,
        num_cpus=pool.cpus_per_actor,
        num_gpus=pool.gpus_per_actor,
        batch_format="numpy",
        max_restarts=pool.max_restarts,
        max_task_retries=-1,  # until the actor is dead for good (after max_restarts)
    )


# The callables that map_images calls built in this worker process, newest last (one per call, the oldest evicted).
_BUILT: OrderedDict = OrderedDict()
_KEEP = 2


def _built_call(batch: dict, cls: type, kwargs: dict, key: str) -> dict:
    """`cls(**kwargs)(batch)`, building `cls` once per worker process and map_images call (`key`): Ray keeps task
    workers alive between calls, so imports are paid once per process and the model once per call, not per batch.
    A key never outlives its call, so a checkpoint rewritten in place is never served stale."""
    fn = _BUILT.pop(key, None) or cls(**kwargs)
    _BUILT[key] = fn
    while len(_BUILT) > _KEEP:
        _BUILT.popitem(last=False)
    return fn(batch)


def map_images(images: np.ndarray, actor_cls: type, ctor_kwargs: dict, *, output: str, actors: int,
               batch_size: int, num_cpus: float, num_gpus: float = 0.0) -> np.ndarray:
    """`actor_cls(**ctor_kwargs)(batch)` maps {"row", "image"} batches to {"row", output}; rows come back sorted.

    On GPUs a fixed pool of `actors` actors holds the model on its device. On CPUs the map runs as at most `actors`
    Ray tasks, each building `actor_cls` once per worker process (_built_call): a new actor pool started new
    processes that imported torch on every call, seconds each time."""
    if len(images) == 0:
        raise ValueError(f"{actor_cls.__name__}: no images")
    table = pa.table({
        "row": np.arange(len(images)),
        "image": pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(images)),
    })
    ds, common = driver_blocks(table, actors), {"batch_size": batch_size, "batch_format": "numpy",
                                                 "num_cpus": num_cpus, "num_gpus": num_gpus}
    if num_gpus:
        out = ds.map_batches(actor_cls, fn_constructor_kwargs=ctor_kwargs, compute=ActorPoolStrategy(size=actors),
                             **common)
    else:
        out = ds.map_batches(_built_call, fn_kwargs={"cls": actor_cls, "kwargs": ctor_kwargs, "key": uuid.uuid4().hex},
                             compute=TaskPoolStrategy(size=actors), **common)
    rows, values = [], []
    for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
        rows.append(batch["row"])
        values.append(batch[output])
    result = np.empty((len(images), *values[0].shape[1:]), dtype=values[0].dtype)
    result[np.concatenate(rows)] = np.concatenate(values)
    return result
