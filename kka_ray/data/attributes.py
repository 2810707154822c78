"""What can be measured on an image and said in words: ink area, brightness, stroke thickness and aspect, as
the low, middle or high tercile within the image's class. The prior's captions carry these words, and normals of
datasets without captions are described with them, so that representatives (Eq. 1-2) differ in content."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

ATTRIBUTES = {  # attribute -> words for its low, middle and high tercile
    "size": ("small", "medium-sized", "large"),
    "brightness": ("dark", "grey", "bright"),
    "thickness": ("thin", "regular", "thick"),
    "aspect": ("wide", "square", "tall"),
}


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


def attribute_descriptions(images: np.ndarray, labels: np.ndarray, base: list[str]) -> list[str]:
    """Each image's description with its measured attributes: 'a photo of a shirt, large, dark, thin and tall'."""
    words = attribute_words(measure(to_grey(images)), labels)
    return [f"{b}, {words['size'][i]}, {words['brightness'][i]}, {words['thickness'][i]} and {words['aspect'][i]}"
            for i, b in enumerate(base)]


def to_grey(images: np.ndarray) -> np.ndarray:
    """(N,H,W,C) uint8 -> (N,H,W,1) by ITU-R BT.601 luma (grey images pass through)."""
    if images.shape[-1] == 1:
        return images
    return (images[..., :3] @ np.array([0.299, 0.587, 0.114])).round().astype(np.uint8)[..., None]
