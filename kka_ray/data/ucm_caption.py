"""UCM-Captions (Qu et al. 2016): the 2100 UC Merced land-use images with five sentences each."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from kka_ray.data.base import DATASETS, ImageDataset, ImageSet, missing_data_error
from kka_ray.data.imagefile import DEFAULT_SIZE, read_images
from kka_ray.paths import assets_dir

# dataset.json carries no class field. The images keep UC Merced's order: 100 per class, classes in
# alphabetical order, `imgid` 0-based and the file named imgid + 1 ("1.tif" is imgid 0, whose sentences
# describe farmland, i.e. class 0 "agricultural"). So the class is imgid // 100.
CLASSES = (
    "agricultural", "airplane", "baseballdiamond", "beach", "buildings", "chaparral", "denseresidential",
    "forest", "freeway", "golfcourse", "harbor", "intersection", "mediumresidential", "mobilehomepark",
    "overpass", "parkinglot", "river", "runway", "sparseresidential", "storagetanks", "tenniscourt",
)
PER_CLASS = 100
_SPLITS = {"train": ("train", "val"), "test": ("test",)}
_LAYOUT = """\
  {root}/imgs/1.tif ... 2100.tif
  {root}/dataset.json   (Karpathy style: images[].filename, imgid, split, sentences[].raw)
From the UCM-Captions release of Qu et al. (2016) on Baidu/Mega drives: it is not downloaded automatically."""


def _label(entry: dict) -> int:
    label = entry["imgid"] // PER_CLASS
    if not 0 <= label < len(CLASSES):
        raise ValueError(f"ucm_caption: imgid {entry['imgid']} of {entry['filename']} is outside 0..2099")
    return label


@DATASETS.register("ucm_caption")
@dataclass
class UCMCaption(ImageDataset):
    """Train = the release's train + val images, test = its test images; resized on load."""

    domain: ClassVar[str] = "aerial land-use scenes"

    def _root(self) -> Path:
        return Path(self.root) if self.root else assets_dir() / "ucm_caption"

    def _load(self, split: str) -> ImageSet:
        root = self._root()
        if not (root / "imgs").is_dir() or not (root / "dataset.json").is_file():
            raise missing_data_error("ucm_caption", root, _LAYOUT.format(root=root))
        entries = json.loads((root / "dataset.json").read_text())["images"]
        entries = sorted((e for e in entries if e["split"] in _SPLITS[split]), key=lambda e: e["imgid"])
        labels = np.array([_label(e) for e in entries], dtype=np.int64)
        files = [root / "imgs" / e["filename"] for e in entries]
        return ImageSet(
            images=read_images(files, self.image_size or DEFAULT_SIZE),
            labels=labels,
            class_names=CLASSES,
            descriptions=[
                tuple(s["raw"].strip() for s in e["sentences"]) or self.describe(CLASSES[y])
                for e, y in zip(entries, labels, strict=True)
            ],
            ids=np.array([f"{split}:{Path(e['filename']).stem}" for e in entries]),
            split=split,
        )
