"""Each loader on a tiny fixture written in its real on-disk layout, plus the installed (Fashion-)MNIST."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from kka_ray.data import DATASETS, build_dataset
from kka_ray.data import cifar100 as cifar_module
from kka_ray.data.oxford102 import class_names as flower_names
from kka_ray.data.ucm_caption import CLASSES as UCM_CLASSES


def _write_image(path: Path, size: tuple[int, int], value: int, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 255 - value, 7)).save(path)


# --- registry -------------------------------------------------------------------------------------


def test_all_loaders_are_registered():
    for name in ("cifar100", "oxford102", "ucm_caption", "image_folder", "fashion_mnist", "mnist"):
        assert name in DATASETS


# --- CIFAR-100 ------------------------------------------------------------------------------------

FINE = ["aquarium_fish"] + [f"fine{i}" for i in range(1, 100)]
COARSE = ["aquatic_mammals", "fish"] + [f"coarse{i}" for i in range(2, 20)]


def _cifar_split(fine: list[int], coarse: list[int]) -> dict:
    n = len(fine)
    data = np.arange(n * 3072, dtype=np.int64).reshape(n, 3072).astype(np.uint8)
    return {b"data": data, b"fine_labels": fine, b"coarse_labels": coarse,
            b"filenames": [f"img{i}.png".encode() for i in range(n)]}


def _write_cifar(root: Path) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    parts = {"train": _cifar_split([0, 5, 0], [1, 3, 1]), "test": _cifar_split([7, 0], [2, 1]),
             "meta": {b"fine_label_names": [n.encode() for n in FINE],
                      b"coarse_label_names": [n.encode() for n in COARSE]}}
    for name, obj in parts.items():
        (folder / name).write_bytes(pickle.dumps(obj))
    return folder


def test_cifar100_superclass_protocol(tmp_path):
    _write_cifar(tmp_path)
    train = build_dataset("cifar100", root=tmp_path).load("train")
    assert train.images.shape == (3, 32, 32, 3) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int64 and train.labels.tolist() == [1, 3, 1]
    assert train.class_names == tuple(COARSE)
    assert train.descriptions[0] == ("a photo of a aquarium fish",)  # from the fine class
    assert train.descriptions[1] == ("a photo of a fine5",)
    assert train.ids.tolist() == ["train:0", "train:1", "train:2"] and train.split == "train"
    # CHW rows become HWC pixels: pixel (0, 0) holds the first value of each colour plane
    raw = _cifar_split([0, 5, 0], [1, 3, 1])[b"data"][1]
    assert train.images[1, 0, 0].tolist() == [raw[0], raw[1024], raw[2048]]
    assert build_dataset("cifar100", root=tmp_path).load("test").labels.tolist() == [2, 1]


def test_cifar100_fine_protocol_and_resize(tmp_path):
    _write_cifar(tmp_path)
    test = build_dataset("cifar100", root=tmp_path, image_size=16, options={"protocol": "fine"}).load("test")
    assert test.labels.tolist() == [7, 0] and len(test.class_names) == 100
    assert test.images.shape == (2, 16, 16, 3)
    with pytest.raises(ValueError, match="protocol"):
        build_dataset("cifar100", root=tmp_path, options={"protocol": "coarse"}).load("test")


def test_cifar100_missing_root_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        build_dataset("cifar100", root=tmp_path / "nowhere").load("train")


def test_cifar100_download_unpacks_archive(tmp_path, monkeypatch):
    _write_cifar(tmp_path / "src")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-100-python", arcname="cifar-100-python")
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(archive.getvalue()))
    root = tmp_path / "dl"
    with pytest.raises(ValueError, match="has MD5 .*expected eb9058c3a382ffc7106e4002c42a8d85"):
        build_dataset("cifar100", root=root, options={"download": True}).load("train")
    assert not list(root.iterdir())  # the unverified archive is deleted, nothing unpacked
    monkeypatch.setattr(cifar_module, "MD5", hashlib.md5(archive.getvalue()).hexdigest())
    train = build_dataset("cifar100", root=root, options={"download": True}).load("train")
    assert len(train) == 3
    assert sorted(p.name for p in root.iterdir()) == ["cifar-100-python"]  # the archive is removed


def test_cifar100_download_failure_is_clear(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(RuntimeError, match="could not download.*cifar-100-python.tar.gz"):
        build_dataset("cifar100", root=tmp_path, options={"download": True}).load("train")
    assert not list(tmp_path.iterdir())
    assert cifar_module.URL == "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"


# --- Oxford 102 -----------------------------------------------------------------------------------


def test_oxford102_class_names_file():
    names = flower_names()
    assert len(names) == 102 and len(set(names)) == 102
    assert names[:3] == ("pink primrose", "hard-leaved pocket orchid", "canterbury bells")
    assert names[-1] == "blackberry lily"


def _write_oxford(root: Path) -> None:
    labels = [1, 1, 2, 2, 102, 102]  # image n has class labels[n - 1], 1-based
    sizes = [(40, 30), (30, 50), (64, 64), (20, 20), (50, 40), (33, 44)]
    for n, size in enumerate(sizes, start=1):
        _write_image(root / "jpg" / f"image_{n:05d}.jpg", size, 20 * n)
    savemat(root / "imagelabels.mat", {"labels": np.array([labels])})
    savemat(root / "setid.mat", {"trnid": np.array([[3, 1]]), "valid": np.array([[5]]),
                                 "tstid": np.array([[2, 4, 6]])})
    for n in (1, 3, 5, 2, 4):  # image 6 has no caption file
        cap = root / "text_c10" / f"class_{labels[n - 1]:05d}" / f"image_{n:05d}.txt"
        cap.parent.mkdir(parents=True, exist_ok=True)
        cap.write_text(f"flower {n} first caption\n\nflower {n} second caption\n")


def test_oxford102_splits_labels_captions(tmp_path):
    _write_oxford(tmp_path)
    ds = build_dataset("oxford102", root=tmp_path)
    train, test = ds.load("train"), ds.load("test")
    assert ds.domain == "flowers"
    assert train.images.shape == (3, 64, 64, 3) and train.images.dtype == np.uint8
    assert train.ids.tolist() == ["train:1", "train:3", "train:5"]  # trnid + valid, in image order
    assert train.labels.tolist() == [0, 1, 101] and train.labels.dtype == np.int64
    assert test.ids.tolist() == ["test:2", "test:4", "test:6"] and test.labels.tolist() == [0, 1, 101]
    assert train.class_names == flower_names()
    assert train.descriptions[0] == ("flower 1 first caption", "flower 1 second caption")
    assert test.descriptions[2] == ("a photo of a blackberry lily, a type of flower",)  # no caption file
    assert abs(int(train.images[0, 10, 10, 0]) - 20) <= 3  # image_00001 is the first train row


def test_oxford102_resizes_to_image_size(tmp_path):
    _write_oxford(tmp_path)
    test = build_dataset("oxford102", root=tmp_path, image_size=24).load("test")
    assert test.images.shape == (3, 24, 24, 3)


def test_oxford102_missing_root_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)) as err:
        build_dataset("oxford102", root=tmp_path).load("train")
    assert "setid.mat" in str(err.value) and "downloaded automatically" in str(err.value)


# --- UCM-Captions ---------------------------------------------------------------------------------


def _write_ucm(root: Path) -> None:
    entries = []
    for imgid, split in ((0, "train"), (1, "test"), (100, "val"), (2099, "train"), (1050, "test")):
        name = f"{imgid + 1}.tif"
        _write_image(root / "imgs" / name, (256, 256), imgid % 256)
        sentences = [{"raw": f"scene {imgid} sentence {k} .", "imgid": imgid, "sentid": 5 * imgid + k}
                     for k in range(5)]
        entries.append({"filename": name, "imgid": imgid, "sentences": sentences, "split": split,
                        "sentids": [s["sentid"] for s in sentences]})
    entries.reverse()  # the loader orders by imgid, not by file order
    (root / "dataset.json").write_text(json.dumps({"images": entries, "dataset": "ucm"}))


def test_ucm_caption_splits_labels_sentences(tmp_path):
    _write_ucm(tmp_path)
    ds = build_dataset("ucm_caption", root=tmp_path)
    train, test = ds.load("train"), ds.load("test")
    assert ds.domain == "aerial land-use scenes"
    assert train.ids.tolist() == ["train:1", "train:101", "train:2100"]  # train + val
    assert train.labels.tolist() == [0, 1, 20]
    assert test.ids.tolist() == ["test:2", "test:1051"] and test.labels.tolist() == [0, 10]
    assert len(UCM_CLASSES) == 21 and train.class_names == UCM_CLASSES
    assert train.class_names[0] == "agricultural" and train.class_names[20] == "tenniscourt"
    assert train.descriptions[1] == tuple(f"scene 100 sentence {k} ." for k in range(5))
    assert train.images.shape == (3, 64, 64, 3) and train.images.dtype == np.uint8
    assert build_dataset("ucm_caption", root=tmp_path, image_size=32).load("test").shape == (32, 32, 3)


def test_ucm_caption_missing_root_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "ucm")) as err:
        build_dataset("ucm_caption", root=tmp_path / "ucm").load("test")
    assert "dataset.json" in str(err.value)


# --- image_folder ---------------------------------------------------------------------------------


def _write_folder(root: Path) -> None:
    _write_image(root / "train" / "cat" / "a.png", (10, 12), 10)
    _write_image(root / "train" / "cat" / "b.jpg", (30, 20), 40)
    _write_image(root / "train" / "dog" / "c.bmp", (8, 8), 90)
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    _write_image(root / "test" / "bird" / "d.tiff", (16, 16), 200, mode="L")
    _write_image(root / "test" / "dog" / "e.jpeg", (16, 16), 120)
    rows = ["path,caption", "train/cat/a.png,a sleepy cat", "./train/cat/a.png,a cat on a sofa",
            "test/dog/e.jpeg,a dog"]
    (root / "captions.csv").write_text("\n".join(rows) + "\n")


def test_image_folder_labels_agree_across_splits(tmp_path):
    _write_folder(tmp_path)
    ds = build_dataset("image_folder", root=tmp_path)
    train, test = ds.load("train"), ds.load("test")
    assert train.class_names == test.class_names == ("bird", "cat", "dog")
    assert train.labels.tolist() == [1, 1, 2] and test.labels.tolist() == [0, 2]
    assert train.ids.tolist() == ["train:cat/a.png", "train:cat/b.jpg", "train:dog/c.bmp"]
    assert train.images.shape == (3, 64, 64, 3) and train.images.dtype == np.uint8
    assert test.images.shape == (2, 64, 64, 3)  # the grey tiff is converted to RGB


def test_image_folder_captions_and_fallback(tmp_path):
    _write_folder(tmp_path)
    ds = build_dataset("image_folder", root=tmp_path)
    train, test = ds.load("train"), ds.load("test")
    assert train.descriptions[0] == ("a sleepy cat", "a cat on a sofa")  # two rows, one image
    assert train.descriptions[1:] == [("a photo of a cat",), ("a photo of a dog",)]
    assert test.descriptions == [("a photo of a bird",), ("a dog",)]


def test_image_folder_grey_resize_and_domain(tmp_path):
    _write_folder(tmp_path)
    options = {"channels": 1, "domain": "pets"}
    ds = build_dataset("image_folder", root=tmp_path, image_size=20, options=options)
    train = ds.load("train")
    assert train.images.shape == (3, 20, 20, 1)
    assert abs(int(train.images[2, 5, 5, 0]) - 125) <= 2  # RGB (90, 165, 7) -> luma 125
    assert ds.domain == "pets" and DATASETS.get("image_folder").domain == "objects"
    with pytest.raises(ValueError, match="channels"):
        build_dataset("image_folder", root=tmp_path, options={"channels": 4}).load("train")


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent")):
        build_dataset("image_folder", root=tmp_path / "absent").load("train")
    with pytest.raises(ValueError, match="root"):
        build_dataset("image_folder").load("train")

    _write_folder(tmp_path)
    (tmp_path / "test").rename(tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "test")):
        build_dataset("image_folder", root=tmp_path).load("test")

    (tmp_path / "train" / "fox").mkdir()
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "train" / "fox")):
        build_dataset("image_folder", root=tmp_path).load("train")
    (tmp_path / "train" / "fox").rmdir()

    (tmp_path / "train" / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        build_dataset("image_folder", root=tmp_path).load("train")


def test_image_folder_caption_errors(tmp_path):
    _write_folder(tmp_path)
    (tmp_path / "captions.csv").write_text("path,caption\ntrain/cat/typo.png,a cat\n")
    with pytest.raises(ValueError, match="train/cat/typo.png"):
        build_dataset("image_folder", root=tmp_path).load("train")
    (tmp_path / "captions.csv").write_text("file,text\ntrain/cat/a.png,a cat\n")
    with pytest.raises(ValueError, match="path,caption"):
        build_dataset("image_folder", root=tmp_path).load("train")


# --- the installed IDX sets -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist"])
def test_idx_datasets_load(name):
    ds = build_dataset(name)
    train, test = ds.load("train"), ds.load("test")
    assert len(train) == 60000 and len(test) == 10000
    assert train.shape == test.shape == (28, 28, 1)
    assert len(train.class_names) == 10 and set(np.unique(test.labels)) == set(range(10))
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
