"""The captioned corpus the offline prior learns from: training splits of offline datasets, each image captioned
with its class (in several wordings) and simple visual attributes measured from its pixels, so that the text
carries more than the class name and free text written by a language model lands near what the prior knows.

A dataset that names its own classes' wordings (`wordings()`, e.g. emoji: Unicode name and short names) uses
them; the grey 28-px datasets use NOUNS. The corpus records what it holds (datasets, images, concepts, licences),
so that a prior can be refused for a task whose dataset it has seen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from pydantic import Field

from kka_ray.config import Strict
from kka_ray.data import build_dataset
from kka_ray.data.attributes import ATTRIBUTES, attribute_words, measure
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


class CorpusConfig(Strict):
    datasets: list[str] = Field(default_factory=lambda: ["emoji", "mnist"],
                                description="Offline datasets whose *training* splits form the corpus (default: the "
                                "general prior's, emoji + MNIST)")
    exclude: list[str] = Field(default_factory=list, description="Datasets left out, so that their tasks can be "
                               "run without the prior having seen them")
    max_per_dataset: int | None = Field(20000, ge=1, description="Seeded subsample per dataset (None = all)")
    augment: dict[str, int] = Field(default_factory=lambda: {"emoji": 5}, description="Dataset -> extra "
                                    "augmented copies of each image (random scale 0.8-1, shift <= 2 px, mirror "
                                    "where it keeps meaning)")
    image_size: int = Field(32, ge=8, description="Side the prior renders at (28-px data are padded to 32)")
    seed: int = 0


def with_articles(text: str) -> str:
    """'a ice skate' -> 'an ice skate': captions read like the sentences a language model writes."""
    return re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", text)


@dataclass
class Corpus:
    images: np.ndarray  # uint8 (N, S, S, 1)
    labels: np.ndarray  # index into class_names
    class_names: tuple[str, ...]
    nouns: tuple[tuple[str, ...], ...]  # per class: its wordings in captions
    attributes: dict[str, np.ndarray]  # attribute -> word per image
    sources: dict[str, dict]  # dataset -> images, classes, licence

    def captions(self, idx: np.ndarray, rng: np.random.Generator) -> list[str]:
        """A freshly drawn caption per image (template, wording): the variety is the augmentation."""
        out = []
        for i in idx:
            noun = rng.choice(self.nouns[self.labels[i]])
            attrs = {k: v[i] for k, v in self.attributes.items()}
            attrs["attr"] = attrs[rng.choice(list(ATTRIBUTES))]
            out.append(with_articles(rng.choice(TEMPLATES).format(noun=noun, **attrs)))
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


def augment(images: np.ndarray, copies: int, flippable: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`copies` variants of each (N,S,S,1) image, variant-major: the object scaled by 0.8-1 (antialiased), moved
    by up to 2 px and mirrored (where `flippable`), on the corpus's one background, black."""
    from PIL import Image

    n, size = len(images), images.shape[1]
    out = np.empty((copies * n, size, size, 1), dtype=np.uint8)
    for k in range(copies):
        for i, img in enumerate(images):
            side = int(round(size * rng.uniform(0.8, 1.0)))
            small = np.asarray(Image.fromarray(img[..., 0]).resize((side, side), Image.LANCZOS))
            if flippable[i] and rng.random() < 0.5:
                small = small[:, ::-1]
            canvas = np.zeros((size, size), dtype=np.uint8)
            centre = (size - side) // 2
            top, left = (int(np.clip(centre + rng.integers(-2, 3), 0, size - side)) for _ in range(2))
            canvas[top:top + side, left:left + side] = small
            out[k * n + i, ..., 0] = canvas
    return out


def _wordings(ds, class_names: tuple[str, ...], name: str) -> list[tuple[str, ...]]:
    own = ds.wordings() if hasattr(ds, "wordings") else {}
    unknown = [c for c in class_names if c not in own and c not in NOUNS]
    if unknown:
        raise ValueError(f"corpus: no caption wordings for {name} classes {unknown[:5]} (kka_ray/prior/corpus.py)")
    return [own.get(c) or NOUNS[c] for c in class_names]


def build_corpus(cfg: CorpusConfig) -> Corpus:
    names = [d for d in cfg.datasets if d not in cfg.exclude]
    if not names:
        raise ValueError(f"corpus: every dataset of {cfg.datasets} is excluded")
    unknown = sorted(set(cfg.augment) - set(names))
    if unknown:
        raise ValueError(f"corpus.augment names {unknown}, which are not among the corpus datasets {names}")
    rng = np.random.default_rng(cfg.seed)
    images, labels, class_names, nouns, sources = [], [], [], [], {}
    for name in names:
        ds = build_dataset(name)
        data = ds.load("train")
        if data.shape[2] != 1:
            raise ValueError(f"corpus: {name} has {data.shape[2]} channels; the prior is trained on grey images")
        nouns += _wordings(ds, data.class_names, name)
        idx = np.arange(len(data))
        if cfg.max_per_dataset and len(idx) > cfg.max_per_dataset:
            idx = np.sort(rng.choice(idx, cfg.max_per_dataset, replace=False))
        own, own_labels = pad_to(data.images[idx], cfg.image_size), data.labels[idx]
        if cfg.augment.get(name):
            flips = ds.flippable() if hasattr(ds, "flippable") else {}
            can_flip = np.array([flips.get(data.class_names[y], False) for y in own_labels])
            own = np.concatenate([own, augment(own, cfg.augment[name], can_flip, rng)])
            own_labels = np.tile(own_labels, cfg.augment[name] + 1)
        images.append(own)
        labels.append(own_labels + len(class_names))
        sources[name] = {"images": len(own), "source_images": len(idx), "classes": len(np.unique(own_labels)),
                         "licence": ds.licences() if hasattr(ds, "licences") else LICENCES.get(name, "")}
        class_names += list(data.class_names)
    images_all, labels_all = np.concatenate(images), np.concatenate(labels)
    return Corpus(images_all, labels_all, tuple(class_names), tuple(nouns),
                  attribute_words(measure(images_all), labels_all), sources)


# Licences of the built-in grey datasets, recorded with every prior trained on them.
LICENCES = {"fashion_mnist": "Fashion-MNIST, MIT", "mnist": "MNIST (Y. LeCun, C. Cortes), CC BY-SA 3.0"}


def corpus_summary(corpus: Corpus) -> dict:
    """What a prior has seen: recorded beside its weights, checked before it renders for a task."""
    return {"datasets": sorted(corpus.sources), "images": int(len(corpus.images)),
            "concepts": int(len(np.unique(corpus.labels))), "sources": corpus.sources}


def vocabulary(datasets: list[str]) -> list[tuple[str, ...]]:
    """The wordings of every class a corpus of these datasets captions: what its prior can be asked to draw."""
    out = []
    for name in datasets:
        ds = build_dataset(name)
        # A dataset with its own wordings lists its classes without decoding its images (emoji: ~2,800 PNGs).
        classes = tuple(ds.wordings()) if hasattr(ds, "wordings") else ds.load("train").class_names
        out += _wordings(ds, classes, name)
    return out


def random_captions(vocab: list[tuple[str, ...]], n: int, rng: np.random.Generator) -> list[str]:
    """Captions in the corpus's own style for uniformly drawn classes, wordings, templates and attribute words."""
    out = []
    for _ in range(n):
        words = {k: rng.choice(v) for k, v in ATTRIBUTES.items()}
        words["attr"] = words[rng.choice(list(ATTRIBUTES))]
        noun = rng.choice(vocab[rng.integers(len(vocab))])
        out.append(with_articles(rng.choice(TEMPLATES).format(noun=noun, **words)))
    return out
