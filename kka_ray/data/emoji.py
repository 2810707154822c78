"""Emoji images as a captioned dataset: the broad, openly licensed part of the general prior's corpus.

The set-up installs the npm packages `emoji-datasource-twitter` (Twemoji images, CC-BY 4.0) and
`emoji-datasource-google` (Noto Emoji images, Apache 2.0) under `<assets>/emoji/<set>/`. A class is one concept,
the emoji's Unicode name, counted once across the sets; each set gives it one image. Flags, symbols (keycaps,
letters, arrows) and skin-tone components are left out: they are glyphs, not things a description would name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from kka_ray.data.base import DATASETS, ImageDataset, ImageSet, missing_data_error
from kka_ray.paths import assets_dir

SETS = ("twitter", "google")
LICENCES = {"twitter": "Twemoji, CC-BY 4.0", "google": "Noto Emoji, Apache 2.0"}
SKIPPED_CATEGORIES = frozenset({"Flags", "Symbols", "Component"})
# Mirrored, these would change meaning: clock faces, writing and pages of text.
NO_FLIP_SUBCATEGORIES = frozenset({"time", "book-paper", "writing", "mail", "alphanum"})
# One rule for every use: transparent pixels become black, the background of the corpus's other grey datasets.
BACKGROUND = 0
# Coarse groups for the prior's emoji-group accuracy: about ten kinds of thing a description may name.
GROUPS: dict[str, tuple[str, ...]] = {
    "mammal": ("animal-mammal",),
    "bird": ("animal-bird",),
    "sea animal": ("animal-marine",),
    "plant": ("plant-flower", "plant-other"),
    "food": ("food-fruit", "food-vegetable", "food-prepared", "food-asian", "food-sweet"),
    "clothing": ("clothing",),
    "vehicle": ("transport-ground", "transport-air", "transport-water"),
    "building": ("place-building", "place-religious"),
    "tool": ("tool",),
    "face": ("face-smiling", "face-affection", "face-tongue", "face-hand", "face-neutral-skeptical",
             "face-sleepy", "face-unwell", "face-hat", "face-glasses", "face-concerned", "face-negative",
             "face-costume"),
}
_LAYOUT = """\
  {root}/<set>/emoji.json   (npm emoji-datasource-<set>@16.0.0, package/emoji.json)
  {root}/<set>/64/<image>.png   (package/img/<set>/64/)   for <set> in twitter, google"""


def noun_of(name: str) -> str:
    """'WOMANS BOOTS' -> "woman's boots"; the Unicode names drop apostrophes that English keeps."""
    words = name.lower().replace("\u2019", "'").split()
    return " ".join({"womans": "woman's", "mans": "man's"}.get(w, w) for w in words)


@dataclass(frozen=True)
class Concept:
    name: str  # the caption noun, from the Unicode name
    wordings: tuple[str, ...]  # the noun and the short names ("t-shirt", "shirt", "tshirt")
    subcategory: str
    images: tuple[tuple[str, str], ...]  # (set, file name)

    @property
    def group(self) -> str | None:
        return next((g for g, subs in GROUPS.items() if self.subcategory in subs), None)


def read_concepts(root: Path, sets: tuple[str, ...] = SETS) -> list[Concept]:
    """Concepts in the sets' emoji.json order, merged by name; an image counts only where its set has the file."""
    merged: dict[str, dict] = {}
    for s in sets:
        meta = root / s / "emoji.json"
        if not meta.is_file():
            raise missing_data_error("emoji", root, _LAYOUT.format(root=root))
        for e in json.loads(meta.read_text(encoding="utf-8")):
            if e["category"] in SKIPPED_CATEGORIES or not e.get(f"has_img_{s}") or not e.get("name"):
                continue
            if not (root / s / "64" / e["image"]).is_file():
                continue
            name = noun_of(e["name"])
            c = merged.setdefault(name, {"sub": e["subcategory"], "short": [], "images": []})
            c["short"] += [n.replace("_", " ") for n in e.get("short_names", [])]
            if all(have != s for have, _ in c["images"]):  # same name twice in one set: keep the first
                c["images"].append((s, e["image"]))
    return [Concept(name, tuple(dict.fromkeys([name, *c["short"]])), c["sub"], tuple(c["images"]))
            for name, c in merged.items()]


def load_png(path: Path, size: int) -> np.ndarray:
    """RGBA PNG -> grey uint8 (size, size): composited onto BACKGROUND, then luma, then an antialiased resize."""
    from PIL import Image

    with Image.open(path) as im:
        rgba = im.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (BACKGROUND, BACKGROUND, BACKGROUND, 255))
    grey = Image.alpha_composite(canvas, rgba).convert("L")
    return np.asarray(grey.resize((size, size), Image.LANCZOS), dtype=np.uint8)


@DATASETS.register("emoji")
@dataclass
class EmojiDataset(ImageDataset):
    """All images in one `train` split (the corpus needs no test split). Options: `sets` (default both), `size`
    (native side, default 28: objects then fill the same central area as the 28-px datasets padded to 32)."""

    option_names: ClassVar[tuple[str, ...]] = ("sets", "size")
    domain: ClassVar[str] = "emoji pictures"
    splits: ClassVar[tuple[str, ...]] = ("train",)

    def folder(self) -> Path:
        return Path(self.root) if self.root else assets_dir() / "emoji"

    def concepts(self) -> list[Concept]:
        sets = tuple(self.options.get("sets", SETS))
        unknown = set(sets) - set(SETS)
        if unknown:
            raise ValueError(f"emoji: unknown sets {sorted(unknown)} in options.sets; expected {SETS}")
        return read_concepts(self.folder(), sets)

    def _load(self, split: str) -> ImageSet:
        size = int(self.options.get("size", 28))
        concepts = self.concepts()
        rows = [(label, s, f) for label, c in enumerate(concepts) for s, f in c.images]
        images = np.stack([load_png(self.folder() / s / "64" / f, size) for _, s, f in rows])[..., None]
        labels = np.array([label for label, _, _ in rows], dtype=np.int64)
        return ImageSet(images=images, labels=labels, class_names=tuple(c.name for c in concepts),
                        descriptions=[(f"a {concepts[label].name}",) for label in labels],
                        ids=np.array([f"{s}:{f}" for _, s, f in rows]), split=split)

    def wordings(self) -> dict[str, tuple[str, ...]]:
        return {c.name: c.wordings for c in self.concepts()}

    def flippable(self) -> dict[str, bool]:
        return {c.name: c.subcategory not in NO_FLIP_SUBCATEGORIES for c in self.concepts()}

    def licences(self) -> dict[str, str]:
        return {s: LICENCES[s] for s in self.options.get("sets", SETS)}
