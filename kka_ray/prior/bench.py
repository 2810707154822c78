"""How good the offline prior is: judge accuracy on renders of class prompts and of unseen paraphrases, and the
render pool's throughput against a bare loop over the same pipeline."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from kka_ray.actor_map import driver_blocks
from kka_ray.data import build_dataset
from kka_ray.prior.corpus import NOUNS, Corpus, pad_to
from kka_ray.prior.judge import JudgeNet, predict, train_judge
from kka_ray.render import RenderConfig, build_renderer
from kka_ray.render.diffusers_backend import DiffusersRenderer
from kka_ray.stages.render import collect

# Wordings that never appear in the corpus's captions (kka_ray/prior/corpus.py NOUNS and TEMPLATES).
PARAPHRASES: dict[str, tuple[str, ...]] = {
    "t-shirt": ("a short-sleeved cotton top",),
    "trouser": ("a pair of long pants",),
    "pullover": ("a knitted sweater",),
    "dress": ("an elegant evening gown",),
    "coat": ("a warm winter jacket",),
    "sandal": ("an open summer shoe with straps",),
    "shirt": ("a long-sleeved blouse with buttons",),
    "sneaker": ("a pair of trainers",),
    "bag": ("a leather handbag",),
    "ankle boot": ("a leather boot",),
    **{w: (f"the numeral {w}",) for w in ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                                          "nine")},
}


def class_prompts(class_names: tuple[str, ...]) -> list[tuple[str, int]]:
    """Training-style prompts: the corpus's first template with each class's first wording."""
    return [(f"a photo of a {NOUNS[c][0]}", i) for i, c in enumerate(class_names)]


def paraphrase_prompts(class_names: tuple[str, ...]) -> list[tuple[str, int]]:
    return [(p, i) for i, c in enumerate(class_names) for p in PARAPHRASES.get(c, ())]


def judge_for(corpus: Corpus, datasets: list[str], epochs: int) -> tuple[JudgeNet, float]:
    """Train the judge on the corpus (training images) and measure it on the datasets' real test images."""
    net = train_judge(corpus.images, corpus.labels, len(corpus.class_names), epochs=epochs)
    images, labels, offset = [], [], 0
    for name in datasets:
        test = build_dataset(name).load("test")
        images.append(pad_to(test.images, corpus.images.shape[1]))
        labels.append(test.labels + offset)
        offset += len(test.class_names)
    acc = float((predict(net, np.concatenate(images)) == np.concatenate(labels)).mean())
    return net, acc


def render_table(prompts: list[tuple[str, int]], per_prompt: int) -> pa.Table:
    rows = [(text, label, j) for text, label in prompts for j in range(per_prompt)]
    return pa.table({"row_id": np.arange(len(rows)), "sentence": [r[0] for r in rows], "label": [r[1] for r in rows],
                     "seed": [r[2] for r in rows], "reason": [""] * len(rows)})


def render_pool(table: pa.Table, cfg: RenderConfig, size: int) -> tuple[np.ndarray, dict]:
    backend = build_renderer(cfg)
    result = collect(backend.apply(driver_blocks(table, 2 * cfg.actors), size, 1), backend.model_id())
    return result.images, result.stats  # collect() returns rows in row_id order


def render_bare(table: pa.Table, cfg: RenderConfig, size: int) -> tuple[np.ndarray, float]:
    """The same actor class in a plain loop, timed from the first batch's start to the last batch's end."""
    actor = DiffusersRenderer(cfg.model_dump(), size, 1)
    out, start = [], time.time()
    for i in range(0, len(table), cfg.batch_size):
        part = table.slice(i, cfg.batch_size)
        out.append(actor({k: np.array(part.column(k).to_pylist(), dtype=object if k in ("sentence", "reason")
                                      else None) for k in ("sentence", "seed", "reason")})["image"])
    return np.concatenate(out), len(table) / (time.time() - start)


def grid(images: np.ndarray, labels: list[str], per_row: int, path: Path) -> None:
    """One row per prompt, `per_row` samples each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(images) // per_row
    fig, axes = plt.subplots(rows, per_row, figsize=(per_row * 0.8 + 2.6, rows * 0.8))
    for r in range(rows):
        for c in range(per_row):
            ax = axes[r, c]
            ax.imshow(images[r * per_row + c, ..., 0], cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(labels[r], rotation=0, ha="right", va="center", fontsize=7)
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=100)
    plt.close(fig)
