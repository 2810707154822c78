"""CIFAR-100 from the python pickles, labelled by 20 superclasses (the paper's protocol) or 100 classes."""

from __future__ import annotations

import hashlib
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from kka_ray.data.base import DATASETS, ImageDataset, ImageSet, missing_data_error
from kka_ray.paths import assets_dir

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
MD5 = "eb9058c3a382ffc7106e4002c42a8d85"  # the archive's published checksum (as torchvision checks it)
_DIR = "cifar-100-python"
_FILES = ("train", "test", "meta")
_LABELS = {  # protocol -> (labels key of a split, class-names key of meta)
    "superclass": (b"coarse_labels", b"coarse_label_names"),
    "fine": (b"fine_labels", b"fine_label_names"),
}


class _ArraysOnly(pickle.Unpickler):
    """The CIFAR python files hold dicts of bytes, lists and numpy arrays; any other global (a function, a
    class to construct) in a downloaded or user-placed file is refused instead of run."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-100 file")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        try:
            return _ArraysOnly(f, encoding="bytes").load()
        except pickle.UnpicklingError as e:
            raise ValueError(f"{path}: not a CIFAR-100 python file ({e})") from None


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _FILES)


def download(root: Path) -> None:
    """Fetch the official archive into `root`, check its published MD5, and unpack it there (makes
    root/cifar-100-python). A mismatching download is deleted, never unpacked."""
    root.mkdir(parents=True, exist_ok=True)
    url, md5 = URL, MD5
    part = root / (url.rsplit("/", 1)[1] + ".part")
    try:
        h = hashlib.md5(usedforsecurity=False)
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as f:
            while chunk := response.read(1 << 20):
                h.update(chunk)
                f.write(chunk)
        if h.hexdigest() != md5:
            raise ValueError(f"cifar100: {url} has MD5 {h.hexdigest()}, expected {md5}: a corrupt or substituted "
                             "download, deleted and not unpacked")
        with tarfile.open(part) as tar:
            tar.extractall(root, filter="data")
    except (OSError, tarfile.TarError) as e:  # URLError and timeouts are OSErrors
        raise RuntimeError(
            f"cifar100: could not download and unpack {url} ({e}); fetch it by hand and unpack it into {root}"
        ) from e
    finally:
        part.unlink(missing_ok=True)


@DATASETS.register("cifar100")
@dataclass
class CIFAR100(ImageDataset):
    """options: protocol = "superclass" (default; labels are the 20 coarse classes) or "fine";
    download = true fetches the archive when it is missing. Descriptions always name the fine class."""

    option_names: ClassVar[tuple[str, ...]] = ("protocol", "download")
    domain: ClassVar[str] = "objects"

    def _root(self) -> Path:
        return Path(self.root) if self.root else assets_dir() / "cifar100"

    def _protocol(self) -> str:
        protocol = self.options.get("protocol", "superclass")
        if protocol not in _LABELS:
            raise ValueError(f"cifar100: unknown protocol {protocol!r}; expected one of {tuple(_LABELS)}")
        return protocol

    def _files(self) -> Path:
        root = self._root()
        folder = root / _DIR
        if self.options.get("download") and not _complete(folder):
            download(root)
        if not _complete(folder):
            layout = "\n".join(f"  {folder}/{name}" for name in _FILES)
            hint = f"\n(from {URL}; or set options.download: true)"
            raise missing_data_error("cifar100", root, layout + hint)
        return folder

    def _load(self, split: str) -> ImageSet:
        label_key, names_key = _LABELS[self._protocol()]
        files = self._files()
        meta, data = _unpickle(files / "meta"), _unpickle(files / split)
        fine_names = [n.decode() for n in meta[b"fine_label_names"]]
        fine_texts = [self.describe(n.replace("_", " ")) for n in fine_names]
        images = data[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return ImageSet(
            images=np.ascontiguousarray(images, dtype=np.uint8),
            labels=np.asarray(data[label_key], dtype=np.int64),
            class_names=tuple(n.decode() for n in meta[names_key]),
            descriptions=[fine_texts[y] for y in data[b"fine_labels"]],
            ids=np.array([f"{split}:{i}" for i in range(len(images))]),
            split=split,
        )
