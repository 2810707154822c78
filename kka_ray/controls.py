"""KKA's controls: what KKA(0) adds over anomalies that need no language model, and over a prior that has seen
the dataset. Per (normal class, seed), one KKA loop run to T = 0 gives SAD without anomalies and SAD + KKA(0) with
the general prior; then the same SAD detector (same config, seed and autoencoder pretraining) is trained with as
many anomalies as KKA(0)'s set from each control:

- noise: Gaussian, uniform and blurred-Gaussian images, no text at all;
- prior_only: the general prior's renders of random captions from its own vocabulary (no language model, no
  representatives): what the prior alone gives;
- kka0_in_domain: KKA(0)'s very descriptions, rendered with the same seeds by the in-domain prior (one that saw
  the dataset): how much of KKA(0) a generative copy of the test anomaly classes would explain;
- oracle: real anomalies from the training split's other classes.

Each control's result is cached in the run folder (`controls.json`), so an interrupted benchmark resumes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import Field
from scipy import ndimage

from kka_ray.actor_map import driver_blocks
from kka_ray.config import RayConfig, Strict, load_config
from kka_ray.data import build_dataset
from kka_ray.data.base import ImageSet
from kka_ray.detectors.deepsad import DeepSAD
from kka_ray.figures import gains_plot, image_grid
from kka_ray.loop import BASELINE_JUDGE, KKAConfig, load_task
from kka_ray.loop_bench import run_one
from kka_ray.metrics import auroc
from kka_ray.prior.corpus import random_captions, vocabulary
from kka_ray.records import metric_key, write_record
from kka_ray.render import RenderConfig, build_renderer, resolve_render
from kka_ray.render.prior import GENERAL, prior_corpus, prior_dir
from kka_ray.runtime import init_ray
from kka_ray.stages.render import collect
from kka_ray.store import RunStore
from kka_ray.summary import over_classes

Control = Literal["noise", "prior_only", "kka0_in_domain", "oracle"]
METHODS = ("no_anomalies", "noise", "prior_only", "kka0_general", "kka0_in_domain", "oracle")
CACHE = "controls.json"


class ControlsConfig(Strict):
    name: str = Field("kka-controls-fmnist", description="Record name: docs/results/<name>.json")
    classes: Literal["all"] | list[str | int] = Field("all", description="Normal classes ('all' = every class "
                                                      "of the dataset, never a choice by test AUROC)")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    loop_config: str = Field("configs/kka/demo.yaml", description="KKA run config every run starts from; its "
                             "name, normal_classes, seed, run_dir and update.iterations (0) are set per run")
    loop_overrides: list[str] = Field(default_factory=list, description="`key.path=value` changes to it")
    controls: list[Control] = Field(default_factory=lambda: ["noise", "prior_only", "kka0_in_domain", "oracle"])
    in_domain_prior: str = Field("in-domain", description="The shipped prior that has seen the dataset")
    run_dir: str = "runs/bench"
    results_dir: str | None = "docs/results"
    ray: RayConfig = Field(default_factory=RayConfig, description="Where every run and fit goes")


def run_config(cfg: ControlsConfig, cls: str | int, seed: int) -> KKAConfig:
    base = load_config(KKAConfig, cfg.loop_config, cfg.loop_overrides)
    return base.model_copy(update={
        "name": f"{metric_key(str(cls))}-seed{seed}", "normal_classes": [cls], "seed": seed,
        "run_dir": f"{cfg.run_dir}/{cfg.name}", "update": base.update.model_copy(update={"iterations": 0}),
        "ray": cfg.ray})


def noise_images(n: int, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Thirds of Gaussian (mean 128, sd 64), uniform, and Gaussian blurred with sigma 1.5 (then restretched)."""
    gauss = rng.normal(128, 64, (n, *shape))
    uniform = rng.uniform(0, 256, (n, *shape))
    blurred = np.stack([ndimage.gaussian_filter(g, sigma=(1.5, 1.5, 0)) for g in gauss])
    blurred = 128 + (blurred - blurred.mean()) * (64 / max(blurred.std(), 1e-6))
    kind = np.arange(n) % 3
    out = np.where(kind[:, None, None, None] == 0, gauss, np.where(kind[:, None, None, None] == 1, uniform, blurred))
    return np.clip(out, 0, 255).round().astype(np.uint8)


def render_sentences(sentences: list[str], seeds: np.ndarray, render: RenderConfig, shape: tuple[int, int, int],
                     dataset: str) -> np.ndarray:
    """Render in the given order with the render pool; seeds as the loop gives them (render_seed of seed, text)."""
    table = pa.table({"row_id": np.arange(len(sentences)), "sentence": sentences,
                      "seed": np.asarray(seeds, dtype=np.int64), "reason": [""] * len(sentences)})
    backend = build_renderer(render, dataset)
    size, _, channels = shape
    return collect(backend.apply(driver_blocks(table, 2 * render.actors), size, channels), backend.model_id()).images


def control_set(method: Control, run: KKAConfig, cfg: ControlsConfig, task, kka0: pa.Table) -> ImageSet:
    """The control's anomalies, as many as KKA(0)'s set, from the run's seed."""
    n, shape = len(kka0), task.train_normal.shape
    rng = np.random.default_rng([run.seed, METHODS.index(method)])
    if method == "oracle":
        return task.oracle_anomalies(n, seed=run.seed)
    if method == "noise":
        images, texts = noise_images(n, shape, rng), [""] * n
    elif method == "prior_only":
        general = resolve_render(run.render, run.dataset.name)
        texts = random_captions(vocabulary(vocabulary_datasets(general)), n, rng)
        images = render_sentences(texts, rng.integers(0, 2**31, n), general, shape, run.dataset.name)
    else:  # kka0_in_domain: the same descriptions and seeds, another prior
        render = run.render.model_copy(update={"model": None, "prior": cfg.in_domain_prior,
                                               "allow_prior_overlap": True})
        texts = kka0.column("sentence").to_pylist()
        images = render_sentences(texts, kka0.column("seed").to_numpy(), render, shape, run.dataset.name)
    return ImageSet(images=images, labels=np.zeros(n, dtype=np.int64), class_names=(method,),
                    descriptions=[(t,) for t in texts], ids=np.array([f"{method}:{i}" for i in range(n)]),
                    split=method)


def vocabulary_datasets(render: RenderConfig) -> list[str]:
    """The corpus of the prior that renders (a shipped one, or a folder recording its corpus); for any other
    model (a hub id), the shipped general prior's: a broad vocabulary either way."""
    corpus = prior_corpus(Path(render.model)) if render.model and Path(render.model).is_dir() else None
    return (corpus or prior_corpus(prior_dir(render.prior if render.model is None else GENERAL[0])))["datasets"]


def run_controls(run: KKAConfig, cfg: ControlsConfig, workdir: Path) -> dict[str, float]:
    """AUROC of every method for one (class, seed): the loop run's two, then each control's (cached)."""
    loop = run_one(run)
    store = RunStore(f"{run.run_dir}/{run.name}")
    done = store.read_json(CACHE) if store.exists(CACHE) else {}
    out = {"no_anomalies": loop["baseline"]["auroc"], "kka0_general": loop["rows"][0]["auroc"]}
    todo = [m for m in cfg.controls if m not in done]
    if todo:
        init_ray(run.ray)  # a finished loop run is read back without starting Ray
        task = load_task(run)
        kka0 = store.read_table("iter_0/anomalies.parquet")
        pretrained = DeepSAD.from_checkpoint(run.evaluator, store.path(BASELINE_JUDGE), store.fs) \
            if run.reuse_pretrained and run.evaluator.pretrain and run.evaluator.ae_epochs > 0 else None
        for method in todo:
            start = time.time()
            anomalies = control_set(method, run, cfg, task, kka0)
            detector = DeepSAD(run.evaluator)
            detector.fit(task.train_normal, anomalies, seed=run.seed, workdir=workdir, pretrained=pretrained)
            score = 100 * auroc(task.test_targets, detector.score(task.test.images))
            done[method] = {"auroc": score, "anomalies": len(anomalies), "seconds": time.time() - start}
            store.write_json(CACHE, done)
            store.write_bytes(f"controls/{method}.png", example_grid(anomalies, method))
            print(f"[controls] {run.name} {method}: AUROC {score:.1f} ({len(anomalies)} anomalies)", flush=True)
    out.update({m: done[m]["auroc"] for m in cfg.controls})
    out["anomalies"] = float(loop["rows"][0]["anomalies"])
    return out


def example_grid(anomalies: ImageSet, title: str, n: int = 16) -> bytes:
    return image_grid(anomalies.images[:n], [d[0] for d in anomalies.descriptions[:n]], title)


def class_list(cfg: ControlsConfig, run: KKAConfig) -> list[str | int]:
    if cfg.classes != "all":
        return list(cfg.classes)
    return list(build_dataset(run.dataset.name, run.dataset.root, run.dataset.image_size,
                              run.dataset.options).load("test").class_names)


def run_benchmark(cfg: ControlsConfig, command: str) -> dict[str, float]:
    """Every (class, seed) in turn, seeds inside classes; the record is rewritten after each (metrics.classes and
    metrics.seeds say what it covers)."""
    import tempfile

    first = run_config(cfg, cfg.classes[0] if cfg.classes != "all" else 0, cfg.seeds[0])
    classes = class_list(cfg, first)
    rows, m = [], {}
    workdir = Path(tempfile.mkdtemp(prefix="kka-controls-"))
    for cls in classes:
        for seed in cfg.seeds:
            rows.append({"class": str(cls), "seed": seed, **run_controls(run_config(cfg, cls, seed), cfg, workdir)})
            m = write(cfg, pd.DataFrame(rows), command)
    return m


def methods(cfg: ControlsConfig) -> list[str]:
    return [m for m in METHODS if m in ("no_anomalies", "kka0_general") or m in cfg.controls]


def write(cfg: ControlsConfig, df: pd.DataFrame, command: str) -> dict[str, float]:
    cols = methods(cfg)
    m, per_class = over_classes(df, cols, reference="no_anomalies", prefix="auroc_")
    for other in ("noise", "prior_only"):  # what the language model adds over anomalies that need none
        if other in cols:
            vs = over_classes(df, [other, "kka0_general"], reference=other)[0]
            m.update({k.replace("gain_kka0_general", f"kka0_general_minus_{other}"): v for k, v in vs.items()
                      if k.startswith("gain_")})
    m["anomalies"] = float(df["anomalies"].mean())
    outs = [Path(cfg.run_dir) / cfg.name] + ([Path(cfg.results_dir)] if cfg.results_dir else [])
    page = markdown(cfg, df, per_class, m, command)
    png = gains_plot({LABELS[c]: (per_class[c] - per_class["no_anomalies"]).to_numpy() for c in cols[1:]},
                     "AUROC gain over no anomalies (points)", cfg.name)
    runs = df.astype(object).where(df.notna(), None).to_dict("records")
    for out in outs:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{cfg.name}.png").write_bytes(png)
    write_record(cfg.name, m, page, outs, command=command, extra={"config": cfg.model_dump(mode="json"),
                                                                  "runs": runs})
    return m


LABELS = {"no_anomalies": "no anomalies", "noise": "noise", "prior_only": "prior only",
          "kka0_general": "KKA(0), general prior", "kka0_in_domain": "KKA(0), in-domain prior", "oracle": "oracle"}


def markdown(cfg: ControlsConfig, df: pd.DataFrame, per_class: pd.DataFrame, m: dict, command: str) -> str:
    cols = methods(cfg)
    changes = f" with `{' '.join(cfg.loop_overrides)}`" if cfg.loop_overrides else ""
    head = "| normal class | " + " | ".join(LABELS[c] for c in cols) + " |"
    lines = [f"# {cfg.name}", "", f"`{command}`", "",
             f"SAD (Deep SAD) test AUROC %, one class normal, from `{cfg.loop_config}`{changes} (T = 0). "
             f"{int(m['classes'])} classes x {int(m['seeds'])} seed(s) ({len(df)} runs); seeds are averaged within "
             f"a class first, intervals are 95% t-intervals over classes, gains are paired per class. Every control "
             f"has as many anomalies as KKA(0)'s set (mean {m['anomalies']:.0f}).", "", head,
             "| --- |" + " ---: |" * len(cols)]
    lines += [f"| {cls} | " + " | ".join(f"{r[c]:.1f}" for c in cols) + " |" for cls, r in per_class.iterrows()]
    lines += ["| **mean** | " + " | ".join(f"**{m[f'auroc_{c}']:.1f}**" for c in cols) + " |", "",
              "| method | AUROC | gain over no anomalies |", "| --- | ---: | ---: |"]
    for c in cols:
        ci = f" ± {m[f'auroc_{c}_ci95']:.1f}" if f"auroc_{c}_ci95" in m else ""
        gain = (f"{m[f'gain_{c}']:+.1f}" + (f" ± {m[f'gain_{c}_ci95']:.1f}" if f"gain_{c}_ci95" in m else "")
                if f"gain_{c}" in m else "")
        lines.append(f"| {LABELS[c]} | {m[f'auroc_{c}']:.1f}{ci} | {gain} |")
    lines += ["", "KKA(0) with the general prior against the controls that need no language model, paired by class: "
              + "; ".join(f"minus {LABELS[o]} {m[f'kka0_general_minus_{o}']:+.1f}"
                          + (f" ± {m[f'kka0_general_minus_{o}_ci95']:.1f}" if f"kka0_general_minus_{o}_ci95" in m
                             else "") for o in ("noise", "prior_only") if f"kka0_general_minus_{o}" in m) + ".",
              "", f"![AUROC gain per class and mean]({cfg.name}.png)", ""]
    return "\n".join(lines)
