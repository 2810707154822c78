"""The in-memory image table every dataset loader yields, and the dataset registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from kka_ray.registry import Registry


@dataclass(frozen=True)
class ImageSet:
    """Images with labels and text, one row per image.

    images: (N, H, W, C) uint8. labels: (N,) int64 index into class_names.
    descriptions: per image, one or more texts (captions, or class-name templates).
    ids: stable per-image identifiers such as "train:123", kept through subsetting.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    descriptions: list[tuple[str, ...]]
    ids: np.ndarray
    split: str

    def __post_init__(self):
        n = len(self.images)
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be (N,H,W,C) uint8, got {self.images.shape} {self.images.dtype}")
        for name, col in (("labels", self.labels), ("descriptions", self.descriptions), ("ids", self.ids)):
            if len(col) != n:
                raise ValueError(f"{name} has {len(col)} rows, images have {n}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, idx: np.ndarray) -> ImageSet:
        idx = np.asarray(idx)
        return ImageSet(
            images=self.images[idx],
            labels=self.labels[idx],
            class_names=self.class_names,
            descriptions=[self.descriptions[i] for i in idx],
            ids=self.ids[idx],
            split=self.split,
        )


@dataclass
class ImageDataset(ABC):
    """Base of every loader: `load(split)` returns the split as an ImageSet.

    Subclasses set `domain` (the word KKA's prompt uses for what the data show) and implement
    `_load`. `image_size` resizes every image to a square of that side (None keeps the native size).
    """

    root: Path | None = None
    image_size: int | None = None
    options: dict = field(default_factory=dict)

    domain: ClassVar[str] = "objects"
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    option_names: ClassVar[tuple[str, ...]] = ()  # the keys `options` may hold; others are refused by name

    def load(self, split: str) -> ImageSet:
        if split not in self.splits:
            raise ValueError(f"{type(self).__name__}: unknown split {split!r}; expected one of {self.splits}")
        data = self._load(split)
        if self.image_size and data.images.shape[1:3] != (self.image_size, self.image_size):
            data = ImageSet(
                images=resize_images(data.images, self.image_size),
                labels=data.labels,
                class_names=data.class_names,
                descriptions=data.descriptions,
                ids=data.ids,
                split=data.split,
            )
        return data

    @abstractmethod
    def _load(self, split: str) -> ImageSet:
        """Read one split at its native size."""

    def describe(self, class_name: str) -> tuple[str, ...]:
        """Descriptions for datasets without captions (METHOD.md: 'a photo of a {class}')."""
        return (f"a photo of a {class_name}",)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 (N,H,W,C) batch to (N,size,size,C) with PIL's bilinear filter."""
    from PIL import Image

    out = np.empty((len(images), size, size, images.shape[3]), dtype=np.uint8)
    for i, img in enumerate(images):
        pil = Image.fromarray(img[..., 0] if img.shape[2] == 1 else img)
        arr = np.asarray(pil.resize((size, size), Image.BILINEAR))
        out[i] = arr.reshape(size, size, -1)
    return out


def missing_data_error(dataset: str, root: Path, layout: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{dataset}: no data under {root}. Expected layout:\n{layout}\n"
        "Download it there (or pass the dataset's `root` in the config)."
    )


DATASETS: Registry[type[ImageDataset]] = Registry("dataset")
