"""Image files decoded straight to the one square shape an ImageSet needs (for sets of mixed sizes)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

DEFAULT_SIZE = 64  # side used when a loader of mixed-size images is given no image_size
MODES = {1: "L", 3: "RGB"}  # channels -> PIL mode


def read_image(path: Path, size: int, channels: int = 3) -> np.ndarray:
    """One file as a (size, size, channels) uint8 array, squashed like `base.resize_images` does."""
    from PIL import Image

    mode = MODES[channels]
    try:
        with Image.open(path) as img:
            img.draft(mode, (size, size))  # JPEGs decode at a reduced scale still >= size: much faster
            out = img.convert(mode).resize((size, size), Image.BILINEAR)
    except FileNotFoundError:
        raise
    except OSError as e:  # PIL's "cannot identify image file" and truncated files land here
        raise ValueError(f"cannot read image {path}: {e}") from e
    return np.asarray(out).reshape(size, size, channels)


def read_images(paths: Sequence[Path], size: int, channels: int = 3) -> np.ndarray:
    out = np.empty((len(paths), size, size, channels), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = read_image(path, size, channels)
    return out
