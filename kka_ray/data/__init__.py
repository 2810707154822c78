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
    return DATASETS.get(name)(root=root, image_size=image_size, options=dict(options or {}))
