"""How good an offline prior is: judge accuracy on renders of class prompts of the grey datasets it saw and of
the one it never saw (zero-shot), of unseen paraphrases, of emoji concepts in unseen wordings (judged by coarse
group), and the render pool's throughput against a bare loop over the same pipeline."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from kka_ray.actor_map import driver_blocks
from kka_ray.data import build_dataset
from kka_ray.prior.corpus import NOUNS, pad_to
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


def emoji_prompts(concepts: list) -> list[tuple[str, int]]:
    from kka_ray.data.emoji import GROUPS
    from kka_ray.prior.corpus import with_articles

    groups = list(GROUPS)
    return [(with_articles(t.format(noun=c.name)), groups.index(c.group)) for c in concepts
            for t in HELD_OUT_TEMPLATES]


def class_prompts(class_names: tuple[str, ...]) -> list[tuple[str, int]]:
    """Training-style prompts: the corpus's first template with each class's first wording."""
    return [(f"a photo of a {NOUNS[c][0]}", i) for i, c in enumerate(class_names)]


def paraphrase_prompts(class_names: tuple[str, ...]) -> list[tuple[str, int]]:
    return [(p, i) for i, c in enumerate(class_names) for p in PARAPHRASES.get(c, ())]


GREY = ("fashion_mnist", "mnist")  # the datasets with class judges: seen or never seen by a prior
# Wordings of emoji concepts that no corpus caption uses (kka_ray/prior/corpus.py TEMPLATES).
HELD_OUT_TEMPLATES = ("an icon of a {noun}", "a simple drawing of a {noun}")


def capped(n: int, max_train: int | None) -> slice | np.ndarray:
    """What a judge trains on, as an index: all n (a slice: no copy of the images), or a seeded `max_train` of them
    in order."""
    if not max_train or n <= max_train:
        return slice(None)
    return np.sort(np.random.default_rng(0).choice(n, max_train, replace=False))


def judge_for(datasets: list[str], size: int, epochs: int, max_train: int | None = None
              ) -> tuple[JudgeNet, float, tuple[str, ...]]:
    """A judge trained on the datasets' training images (classes concatenated; a seeded `max_train` per dataset),
    its accuracy on their real test images, and the class names in label order."""
    train, test, names = [], [], []
    for name in datasets:
        ds = build_dataset(name)
        for split, out in (("train", train), ("test", test)):
            data = ds.load(split)
            keep = capped(len(data), max_train) if split == "train" else slice(None)
            out.append((pad_to(data.images[keep], size), data.labels[keep] + len(names)))
        names += list(data.class_names)
    net = train_judge(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), len(names),
                      epochs=epochs)
    acc = float((predict(net, np.concatenate([x for x, _ in test])) == np.concatenate([y for _, y in test])).mean())
    return net, acc, tuple(names)


def emoji_sample(per_group: int, seed: int = 0) -> tuple[list, list]:
    """A fixed, seeded sample of `per_group` concepts of each coarse group, and the other grouped concepts."""
    from kka_ray.data.emoji import GROUPS, EmojiDataset

    rng = np.random.default_rng(seed)
    grouped = [c for c in EmojiDataset().concepts() if c.group]
    sample = []
    for g in GROUPS:
        members = [c for c in grouped if c.group == g]
        sample += [members[i] for i in np.sort(rng.choice(len(members), min(per_group, len(members)), replace=False))]
    chosen = {c.name for c in sample}
    return sample, [c for c in grouped if c.name not in chosen]


def group_judge(train_concepts: list, test_concepts: list, size: int, epochs: int, max_train: int | None = None
                ) -> tuple[JudgeNet, float]:
    """A coarse-group classifier on real emoji images of `train_concepts` (a seeded `max_train` of them, then
    augmented), and its accuracy on the real images of `test_concepts`, concepts it never saw: what a render of
    one may be held to."""
    from kka_ray.data.emoji import GROUPS, EmojiDataset, load_png
    from kka_ray.prior.corpus import augment

    root, groups = EmojiDataset().folder(), list(GROUPS)

    def images(concepts):
        rows = [(load_png(root / s / "64" / f, 28), groups.index(c.group)) for c in concepts for s, f in c.images]
        return pad_to(np.stack([r[0] for r in rows])[..., None], size), np.array([r[1] for r in rows])

    x, y = images(train_concepts)
    keep = capped(len(x), max_train)
    x, y = x[keep], y[keep]
    x = np.concatenate([x, augment(x, 7, np.ones(len(x), bool), np.random.default_rng(0))])
    net = train_judge(x, np.tile(y, 8), len(groups), epochs=epochs, batch_size=128)
    tx, ty = images(test_concepts)
    return net, float((predict(net, tx) == ty).mean())


def render_table(prompts: list[tuple[str, int]], per_prompt: int, first_row: int = 0) -> pa.Table:
    """`per_prompt` rows of each prompt (render seeds 0 ..), row ids from `first_row`."""
    rows = [(text, label, j) for text, label in prompts for j in range(per_prompt)]
    return pa.table({"row_id": np.arange(first_row, first_row + len(rows)), "sentence": [r[0] for r in rows],
                     "label": [r[1] for r in rows], "seed": [r[2] for r in rows], "reason": [""] * len(rows)})


def render_tables(parts: list[tuple[list[tuple[str, int]], int]]) -> list[pa.Table]:
    """One table per (prompts, per_prompt), row ids running on across them, so that their concatenation goes
    through one render pool (its actors load the prior once) and comes back in the parts' order."""
    tables, first = [], 0
    for prompts, per_prompt in parts:
        tables.append(render_table(prompts, per_prompt, first))
        first += len(tables[-1])
    return tables


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
