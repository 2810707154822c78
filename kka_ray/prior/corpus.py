"""The captioned corpus the offline prior learns from: training splits of offline datasets, each image captioned
with its class (in several wordings) and simple visual attributes measured from its pixels, so that the text
carries more than the class name and free text written by a language model lands near what the prior knows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field
from scipy import ndimage

from kka_ray.config import Strict
from kka_ray.data import build_dataset
from kka_ray.text.synonyms import SYNONYMS

# Wordings of a class beyond its name; digits get their numeral and word forms.
_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NOUNS: dict[str, tuple[str, ...]] = {
    **{name: (name, *words) for name, words in SYNONYMS.items() if name not in _DIGIT_WORDS},
    **{w: (f"digit {w}", f"number {w}", f"handwritten {d}", f"{w}") for d, w in enumerate(_DIGIT_WORDS)},
}
TEMPLATES = (
    "a photo of a {noun}",
    "a {attr} {noun}",
    "a {size}, {brightness} {noun}",
    "an image of a {noun}, {thickness} and {aspect}",
    "a {noun}",
    "a picture of a {attr} {noun}",
    "a {noun} that is {size} and {brightness}",
    "a {thickness} {noun} on a black background",
)
ATTRIBUTES = {  # attribute -> words for its low, middle and high tercile
    "size": ("small", "medium-sized", "large"),
    "brightness": ("dark", "grey", "bright"),
    "thickness": ("thin", "regular", "thick"),
    "aspect": ("wide", "square", "tall"),
}


class CorpusConfig(Strict):
    datasets: list[str] = Field(default_factory=lambda: ["fashion_mnist", "mnist"],
                                description="Offline datasets whose *training* splits form the corpus")
    exclude: list[str] = Field(default_factory=list, description="Datasets left out, so that their tasks can be "
                               "run without the prior having seen them")
    max_per_dataset: int | None = Field(None, ge=1, description="Seeded subsample per dataset (None = all)")
    image_size: int = Field(32, ge=8, description="Side the prior renders at (28-px data are padded to 32)")
    seed: int = 0


def measure(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image raw attributes of uint8 (N,H,W,1) images: ink area, mean ink brightness, stroke thickness
    (twice the mean distance of ink to background) and bounding-box height/width."""
    grey = images[..., 0].astype(np.float32) / 255.0
    ink = grey > 0.25
    area = ink.mean(axis=(1, 2))
    brightness = np.array([g[m].mean() if m.any() else 0.0 for g, m in zip(grey, ink, strict=True)])
    thickness = np.array([2 * ndimage.distance_transform_edt(m)[m].mean() if m.any() else 0.0 for m in ink])
    rows, cols = ink.any(axis=2), ink.any(axis=1)
    height = rows.sum(axis=1).clip(min=1)
    width = cols.sum(axis=1).clip(min=1)
    return {"size": area, "brightness": brightness, "thickness": thickness, "aspect": height / width}


def attribute_words(raw: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, np.ndarray]:
    """Terciles within each class: a 'large' sandal is large for a sandal, which is what a caption means."""
    words = {}
    for name, values in raw.items():
        out = np.empty(len(values), dtype=object)
        for c in np.unique(labels):
            idx = labels == c
            lo, hi = np.quantile(values[idx], [1 / 3, 2 / 3])
            out[idx] = np.where(values[idx] < lo, ATTRIBUTES[name][0],
                                np.where(values[idx] > hi, ATTRIBUTES[name][2], ATTRIBUTES[name][1]))
        words[name] = out
    return words


@dataclass
class Corpus:
    images: np.ndarray  # uint8 (N, S, S, 1)
    labels: np.ndarray  # index into class_names
    class_names: tuple[str, ...]
    attributes: dict[str, np.ndarray]  # attribute -> word per image

    def captions(self, idx: np.ndarray, rng: np.random.Generator) -> list[str]:
        """A freshly drawn caption per image (template, wording): the variety is the augmentation."""
        out = []
        for i in idx:
            noun = rng.choice(NOUNS[self.class_names[self.labels[i]]])
            attrs = {k: v[i] for k, v in self.attributes.items()}
            attrs["attr"] = attrs[rng.choice(list(ATTRIBUTES))]
            out.append(rng.choice(TEMPLATES).format(noun=noun, **attrs))
        return out


def pad_to(images: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad (black background) to size x size, centred: no resampling blur."""
    h, w = images.shape[1:3]
    if (h, w) == (size, size):
        return images
    if h > size or w > size:
        raise ValueError(f"corpus images are {h}x{w}, larger than image_size {size}")
    top, left = (size - h) // 2, (size - w) // 2
    return np.pad(images, ((0, 0), (top, size - h - top), (left, size - w - left), (0, 0)))


def build_corpus(cfg: CorpusConfig) -> Corpus:
    names = [d for d in cfg.datasets if d not in cfg.exclude]
    if not names:
        raise ValueError(f"corpus: every dataset of {cfg.datasets} is excluded")
    rng = np.random.default_rng(cfg.seed)
    images, labels, class_names = [], [], []
    for name in names:
        data = build_dataset(name).load("train")
        if data.shape[2] != 1:
            raise ValueError(f"corpus: {name} has {data.shape[2]} channels; the prior is trained on grey images")
        unknown = [c for c in data.class_names if c not in NOUNS]
        if unknown:
            raise ValueError(f"corpus: no caption wordings for {name} classes {unknown} (kka_ray/prior/corpus.py)")
        idx = np.arange(len(data))
        if cfg.max_per_dataset and len(idx) > cfg.max_per_dataset:
            idx = np.sort(rng.choice(idx, cfg.max_per_dataset, replace=False))
        images.append(pad_to(data.images[idx], cfg.image_size))
        labels.append(data.labels[idx] + len(class_names))
        class_names += list(data.class_names)
    images_all, labels_all = np.concatenate(images), np.concatenate(labels)
    return Corpus(images_all, labels_all, tuple(class_names), attribute_words(measure(images_all), labels_all))
