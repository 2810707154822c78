"""Users' own images: one folder per split, one sub-folder per class, and optional captions in a CSV."""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import ClassVar

import numpy as np

from kka_ray.data.base import DATASETS, ImageDataset, ImageSet, missing_data_error
from kka_ray.data.imagefile import DEFAULT_SIZE, MODES, read_images

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_LAYOUT = """\
  {root}/train/<class>/<image>.png|jpg|jpeg|bmp|tif|tiff
  {root}/test/<class>/<image>...
  {root}/captions.csv   (optional; header `path,caption`, path relative to {root}, one row per caption)"""


def _key(path: str | Path) -> str:
    """A path relative to root in one spelling, so CSV rows match files ("./train\\a.png" = "train/a.png")."""
    return PurePosixPath(str(path).replace("\\", "/")).as_posix()


def read_captions(path: Path) -> dict[str, list[str]]:
    """captions.csv as {relative path: its captions}; a missing file means no captions."""
    if not path.is_file():
        return {}
    captions: dict[str, list[str]] = defaultdict(list)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not {"path", "caption"} <= set(reader.fieldnames or ()):
            raise ValueError(f"image_folder: {path} needs the header `path,caption`, got {reader.fieldnames}")
        for row in reader:
            if row["path"] and (row["caption"] or "").strip():
                captions[_key(row["path"])].append(row["caption"].strip())
    return captions


def _class_dirs(folder: Path) -> list[Path]:
    return [d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")]


def _images(class_dir: Path) -> list[Path]:
    files = sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"image_folder: class folder {class_dir} has no {'/'.join(EXTENSIONS)} image")
    return files


def _split_captions(path: Path, split: str, keys: list[str]) -> dict[str, tuple[str, ...]]:
    """The captions of one split's images; a row naming no image of the split is an error (likely a typo)."""
    captions = read_captions(path)
    unmatched = sorted({k for k in captions if k.startswith(f"{split}/")} - set(keys))
    if unmatched:
        raise ValueError(f"image_folder: {path} names no image file at {', '.join(unmatched[:5])}")
    return {k: tuple(captions[k]) for k in keys if k in captions}


@DATASETS.register("image_folder")
@dataclass
class ImageFolder(ImageDataset):
    """options: channels = 3 (RGB, default) or 1 (grey); domain = what the images show, for KKA's prompt
    (default "objects"). Labels index the class folders of both splits in sorted order, so train and test
    agree even when a split lacks a class."""

    option_names: ClassVar[tuple[str, ...]] = ("channels", "domain")
    domain: ClassVar[str] = "objects"

    def __post_init__(self):
        if "domain" in self.options:
            self.domain = str(self.options["domain"])  # type: ignore[misc]  # per-instance, unlike built-ins

    def _root(self) -> Path:
        if self.root is None:
            raise ValueError("image_folder: set dataset.root to the folder holding train/ and test/")
        root = Path(self.root)
        if not root.is_dir():
            raise missing_data_error("image_folder", root, _LAYOUT.format(root=root))
        return root

    def _channels(self) -> int:
        channels = self.options.get("channels", 3)
        if channels not in MODES:
            raise ValueError(f"image_folder: options.channels must be 1 or 3, got {channels}")
        return channels

    def _class_names(self, root: Path) -> tuple[str, ...]:
        folders = [root / s for s in self.splits if (root / s).is_dir()]
        return tuple(sorted({d.name for folder in folders for d in _class_dirs(folder)}))

    def _load(self, split: str) -> ImageSet:
        root, channels = self._root(), self._channels()
        folder = root / split
        if not folder.is_dir():
            raise missing_data_error("image_folder", folder, _LAYOUT.format(root=root))
        names = self._class_names(root)
        files = [(p, names.index(d.name)) for d in sorted(_class_dirs(folder)) for p in _images(d)]
        if not files:
            raise missing_data_error("image_folder", folder, _LAYOUT.format(root=root))
        keys = [_key(p.relative_to(root)) for p, _ in files]
        captions = _split_captions(root / "captions.csv", split, keys)
        labels = np.array([y for _, y in files], dtype=np.int64)
        descriptions = [captions.get(k) or self.describe(names[y]) for k, y in zip(keys, labels, strict=True)]
        return ImageSet(
            images=read_images([p for p, _ in files], self.image_size or DEFAULT_SIZE, channels),
            labels=labels,
            class_names=names,
            descriptions=descriptions,
            ids=np.array([f"{split}:{_key(p.relative_to(folder))}" for p, _ in files]),
            split=split,
        )
