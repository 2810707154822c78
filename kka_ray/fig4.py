"""The paper's Fig. 4: do hard anomalies teach the detector more than easy ones, or than more of the initial ones?

From each finished loop run (the loop benchmark's runs, one per class and seed), the same SAD detector (the run's
theta_C config, seed and autoencoder pretraining) is trained on equal numbers of hard-only, easy-only and randomly
drawn generated anomalies from the run's saved N_0 .. N_T (each with the verdict the loop gave it when it was new),
and on `multiples` x |N_0| initial anomalies: seeded draws from one extra generation at t = 0 with the base model
and max(multiples) x the samples per representative (mostly easy, as N_0 is). Results are cached per run
(`fig4.json`), so it resumes.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from kka_ray.config import RayConfig, Strict, load_config
from kka_ray.detectors.deepsad import DeepSAD
from kka_ray.figures import gains_plot
from kka_ray.loop import BASELINE_JUDGE, STATE, load_task, run_seeded
from kka_ray.loop_bench import LoopBenchConfig, check_same_run, run_config
from kka_ray.metrics import auroc
from kka_ray.records import write_record
from kka_ray.runtime import init_ray
from kka_ray.stages.evaluate import anomaly_set
from kka_ray.stages.generate import normal_context
from kka_ray.stages.render import anomaly_stream, collect
from kka_ray.stages.select import Representative
from kka_ray.store import RunStore
from kka_ray.summary import over_classes

CACHE = "fig4.json"


class Fig4Config(Strict):
    name: str = Field("kka-fig4-fmnist", description="Record name: docs/results/<name>.json")
    loop_bench: str = Field("configs/kka/bench_fmnist.yaml", description="The loop benchmark whose finished runs "
                            "are read (its classes must include these)")
    classes: list[str | int] = Field(
        default_factory=lambda: ["t-shirt", "trouser", "pullover", "dress", "coat"], description="Normal classes, "
        "fixed in advance (Fashion-MNIST labels 0-4), never chosen by test AUROC; spelled as in the loop benchmark")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    multiples: list[int] = Field(default_factory=lambda: [2, 4], description="Initial sets of k x |N_0|")
    results_dir: str | None = "docs/results"
    ray: RayConfig = Field(default_factory=RayConfig, description="Where every generation and fit goes")


def draw(table: pa.Table, n: int, rng: np.random.Generator) -> pa.Table:
    return table.take(pa.array(np.sort(rng.choice(len(table), min(n, len(table)), replace=False)), pa.int64()))


def generated_sets(store: RunStore, T: int, seed: int) -> dict[str, pa.Table]:
    """Hard-only, easy-only and random sets of one size (the fewest of |N_0|, hard and easy) from N_0 .. N_T."""
    n_all = pa.concat_tables([store.read_table(f"iter_{t}/generated.parquet") for t in range(T + 1)],
                             promote_options="permissive")
    hard = n_all.filter(n_all.column("hard"))
    easy = n_all.filter(pc.invert(n_all.column("hard")))
    n0 = len(store.read_table("iter_0/generated.parquet"))
    size = min(n0, len(hard), len(easy))
    rng = np.random.default_rng(seed)
    return {"hard_only": draw(hard, size, rng), "easy_only": draw(easy, size, rng), "random": draw(n_all, size, rng)}


def initial_sets(run, store: RunStore, task, multiples: list[int]) -> dict[str, pa.Table]:
    """k x |N_0| anomalies from the base model at t = 0: seeded draws from one generation of the largest
    multiple (fewer where the cleaner kept fewer)."""
    reps = [Representative(**r) for r in store.read_table("representatives.parquet").to_pylist()]
    n0 = len(store.read_table("iter_0/generated.parquet"))
    gen = run.generate.model_copy(update={"samples_per_representative": run.generate.samples_per_representative
                                          * max(multiples)})
    size, _, channels = task.train_normal.shape
    stream, renderer = anomaly_stream(reps, normal_context(task, gen), gen, run.render, size, channels,
                                      iteration=0, dataset=run.dataset.name)
    rendered = collect(stream, renderer, cleaned=True).anomalies
    rendered = rendered.append_column("anomaly_id", pa.array([f"x-{k}" for k in range(len(rendered))]))
    rng = np.random.default_rng(run.seed)
    return {f"initial_{k}x": draw(rendered, k * n0, rng) for k in multiples}


def run_fig4_one(run, cfg: Fig4Config, workdir: Path) -> dict[str, float]:
    """AUROC of each set for one finished run (cached)."""
    store = RunStore(f"{run.run_dir}/{run.name}")
    if store.exists("config.yaml"):
        check_same_run(store.location, run)  # results of another configuration are never mixed in
    if not store.exists(STATE) or store.read_state(STATE)["completed"] != run.update.iterations:
        raise FileNotFoundError(f"{store.location}: no finished loop run (run the loop benchmark "
                                f"{cfg.loop_bench} first)")
    done = store.read_json(CACHE) if store.exists(CACHE) else {}
    methods = ["hard_only", "easy_only", "random", *[f"initial_{k}x" for k in cfg.multiples]]
    if todo := [m for m in methods if m not in done]:
        init_ray(run.ray)
        task = load_task(run)
        sets = generated_sets(store, run.update.iterations, run.seed)
        if any(m.startswith("initial_") for m in todo):
            sets |= initial_sets(run, store, task, cfg.multiples)
        pretrained = DeepSAD.from_checkpoint(run.evaluator, store.path(BASELINE_JUDGE), store.fs) \
            if run.reuse_pretrained and run.evaluator.pretrain and run.evaluator.ae_epochs > 0 else None
        for method in todo:
            start = time.time()
            det = DeepSAD(run.evaluator)
            det.fit(task.train_normal, anomaly_set(sets[method]), seed=run.seed, workdir=workdir,
                    pretrained=pretrained)
            done[method] = {"auroc": 100 * auroc(task.test_targets, det.score(task.test.images)),
                            "anomalies": len(sets[method]), "seconds": time.time() - start}
            store.write_json(CACHE, done)
            print(f"[fig4] {run.name} {method}: AUROC {done[method]['auroc']:.1f} "
                  f"({len(sets[method])} anomalies)", flush=True)
    return {m: done[m]["auroc"] for m in methods} | {f"n_{m}": float(done[m]["anomalies"]) for m in methods}


def run_fig4(cfg: Fig4Config, command: str) -> dict[str, float]:
    bench = load_config(LoopBenchConfig, cfg.loop_bench)
    rows, m = [], {}
    workdir = Path(tempfile.mkdtemp(prefix="kka-fig4-"))
    for cls in cfg.classes:
        for seed in cfg.seeds:
            run = run_seeded(run_config(bench, cls, seed)).model_copy(update={"ray": cfg.ray})
            rows.append({"class": str(cls), "seed": seed, **run_fig4_one(run, cfg, workdir)})
            m = write(cfg, pd.DataFrame(rows), command)
    return m


def write(cfg: Fig4Config, df: pd.DataFrame, command: str) -> dict[str, float]:
    methods = ["hard_only", "easy_only", "random", *[f"initial_{k}x" for k in cfg.multiples]]
    m, per_class = over_classes(df, methods, reference="easy_only", prefix="auroc_")
    page = "\n".join([
        f"# {cfg.name}", "", f"`{command}`", "",
        "The paper's Fig. 4: SAD (Deep SAD) test AUROC % trained on equal numbers of hard-only, easy-only and random "
        f"generated anomalies from the loop runs of `{cfg.loop_bench}` (N_0 .. N_T, verdicts as the loop gave them), "
        f"and on {', '.join(f'{k}x' for k in cfg.multiples)} as many initial anomalies (the base model at t = 0). "
        f"{int(m['classes'])} classes ({', '.join(map(str, cfg.classes))}, fixed in advance) x {int(m['seeds'])} "
        "seed(s); intervals over classes; gains are paired against easy-only.", "",
        "| normal class | " + " | ".join(methods) + " |", "| --- |" + " ---: |" * len(methods),
        *[f"| {c} | " + " | ".join(f"{r[k]:.1f}" for k in methods) + " |" for c, r in per_class.iterrows()],
        "| **mean** | " + " | ".join(f"**{m[f'auroc_{k}']:.1f}**" for k in methods) + " |", "",
        f"![gains over easy-only]({cfg.name}.png)", ""])
    png = gains_plot({k: (per_class[k] - per_class["easy_only"]).to_numpy() for k in methods if k != "easy_only"},
                     "AUROC gain over easy-only (points)", cfg.name)
    if cfg.results_dir:
        out = Path(cfg.results_dir)
        write_record(cfg.name, m, page, out, command=command, extra={"config": cfg.model_dump(mode="json"),
                     "runs": df.astype(object).where(df.notna(), None).to_dict("records")})
        (out / f"{cfg.name}.png").write_bytes(png)
    return m
