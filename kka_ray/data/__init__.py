"""Datasets by registry. Adding one: a module with a `@DATASETS.register` class, imported here."""

from kka_ray.data import (  # noqa: F401  (importing a loader module registers its datasets)
    cifar100,
    emoji,
    idx,  # fashion_mnist, mnist
    image_folder,
    oxford102,
    ucm_caption,
)
from kka_ray.data.base import DATASETS, ImageDataset, ImageSet
from kka_ray.data.task import OneClassTask, make_task

__all__ = ["DATASETS", "ImageDataset", "ImageSet", "OneClassTask", "make_task", "build_dataset"]


def build_dataset(name: str, root=None, image_size=None, options=None) -> ImageDataset:
    cls = DATASETS.get(name)
    unknown = sorted(set(options or {}) - set(cls.option_names))
    if unknown:  # a typo would otherwise be ignored silently and the default used
        accepted = ", ".join(cls.option_names) or "no options"
        raise ValueError(f"dataset {name}: unknown dataset.options {unknown}; {name} accepts {accepted}")
    return cls(root=root, image_size=image_size, options=dict(options or {}))
