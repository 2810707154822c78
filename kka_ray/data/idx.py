"""Fashion-MNIST and MNIST from the IDX files (gzipped or not) that the set-up installs."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from kka_ray.data.base import DATASETS, ImageDataset, ImageSet, missing_data_error
from kka_ray.paths import assets_dir

_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: Path, dims: int) -> np.ndarray:
    """The uint8 array of an IDX file (1 dim for labels, 3 for images), its header checked against its size."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # a cut-off gzip stream is an EOFError
        raise ValueError(f"{path}: unreadable IDX file ({e})") from None
    header = 4 + 4 * dims
    if len(raw) < header or raw[:4] != bytes([0, 0, 8, dims]):
        raise ValueError(f"{path}: not a uint8 IDX file with {dims} dimension(s) (magic {raw[:4].hex() or 'none'})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    if len(raw) - header != int(np.prod(shape)):
        raise ValueError(f"{path}: truncated or padded IDX file: its header says {shape}, "
                         f"{int(np.prod(shape))} bytes of data, and it holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    return None


@dataclass
class IdxDataset(ImageDataset):
    """A 28x28 grey dataset in the IDX layout; subclasses name the classes and the default root."""

    names: ClassVar[tuple[str, ...]] = ()
    default_root: ClassVar[str] = ""

    def _root(self) -> Path:
        return Path(self.root) if self.root else Path(self.default_root.format(assets=assets_dir()))

    def _load(self, split: str) -> ImageSet:
        root = self._root()
        img_file, lab_file = (_find(root, stem) for stem in _FILES[split])
        if img_file is None or lab_file is None:
            layout = "\n".join(f"  {root}/{s}[.gz]" for s in _FILES[split])
            raise missing_data_error(type(self).__name__, root, layout)
        labels = read_idx(lab_file, 1).astype(np.int64)
        images = read_idx(img_file, 3)
        if images.shape != (len(labels), 28, 28):
            raise ValueError(f"{img_file}: {images.shape} images for {len(labels)} labels in {lab_file}; "
                             "expected 28x28, one per label")
        images = images[..., None].copy()
        descriptions = [self.describe(self.names[y]) for y in range(len(self.names))]
        return ImageSet(
            images=images,
            labels=labels,
            class_names=self.names,
            descriptions=[descriptions[y] for y in labels],
            ids=np.array([f"{split}:{i}" for i in range(len(labels))]),
            split=split,
        )


@DATASETS.register("fashion_mnist")
@dataclass
class FashionMNIST(IdxDataset):
    domain: ClassVar[str] = "clothing items"
    names: ClassVar[tuple[str, ...]] = (
        "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
    )
    default_root: ClassVar[str] = "/usr/share/datasets/fashion-mnist"


@DATASETS.register("mnist")
@dataclass
class MNIST(IdxDataset):
    domain: ClassVar[str] = "handwritten digits"
    names: ClassVar[tuple[str, ...]] = (
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    )
    default_root: ClassVar[str] = "{assets}/mnist"

    def describe(self, name: str) -> tuple[str, ...]:
        return (f"a handwritten digit {name}",)
