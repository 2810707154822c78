"""Oxford 102 Flowers with the per-image captions of Reed et al. (2016), in their release layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from kka_ray.data.base import DATASETS, ImageDataset, ImageSet, missing_data_error
from kka_ray.data.imagefile import DEFAULT_SIZE, read_images
from kka_ray.paths import assets_dir

# The 102 names in label order, as in clip-benchmark 1.6.2's clip_benchmark/datasets/en_classnames.json.
CLASSES_FILE = Path(__file__).with_name("oxford102_classes.txt")
_SPLITS = {"train": ("trnid", "valid"), "test": ("tstid",)}
_LAYOUT = """\
  {root}/jpg/image_00001.jpg ... image_08189.jpg
  {root}/imagelabels.mat              ('labels': 1-based class of each image)
  {root}/setid.mat                    ('trnid', 'valid', 'tstid': 1-based image numbers)
  {root}/text_c10/class_00001/image_00001.txt ...   (optional captions, one per line)
The images and .mat files come from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ and the captions
from Reed et al.'s release (a Google Drive archive); neither is downloaded automatically."""


def class_names() -> tuple[str, ...]:
    return tuple(CLASSES_FILE.read_text().splitlines())


def _captions(path: Path) -> tuple[str, ...]:
    if not path.is_file():
        return ()
    return tuple(line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip())


@DATASETS.register("oxford102")
@dataclass
class Oxford102(ImageDataset):
    """Train = the official train + validation images, test = the official test images; resized on load."""

    domain: ClassVar[str] = "flowers"

    def _root(self) -> Path:
        return Path(self.root) if self.root else assets_dir() / "oxford102"

    def describe(self, class_name: str) -> tuple[str, ...]:
        return (f"a photo of a {class_name}, a type of flower",)

    def _load(self, split: str) -> ImageSet:
        from scipy.io import loadmat

        root = self._root()
        if not all(p.exists() for p in (root / "jpg", root / "imagelabels.mat", root / "setid.mat")):
            raise missing_data_error("oxford102", root, _LAYOUT.format(root=root))
        names = class_names()
        all_labels = loadmat(root / "imagelabels.mat")["labels"].ravel().astype(np.int64) - 1
        setid = loadmat(root / "setid.mat")
        numbers = np.sort(np.concatenate([setid[key].ravel() for key in _SPLITS[split]]).astype(np.int64))
        labels = all_labels[numbers - 1]
        stems = [f"image_{n:05d}" for n in numbers]
        descriptions = [
            _captions(root / "text_c10" / f"class_{y + 1:05d}" / f"{stem}.txt") or self.describe(names[y])
            for stem, y in zip(stems, labels, strict=True)
        ]
        files = [root / "jpg" / f"{stem}.jpg" for stem in stems]
        return ImageSet(
            images=read_images(files, self.image_size or DEFAULT_SIZE),
            labels=labels,
            class_names=names,
            descriptions=descriptions,
            ids=np.array([f"{split}:{n}" for n in numbers]),
            split=split,
        )
