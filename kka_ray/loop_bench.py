"""The KKA loop over several normal classes and seeds, summarised as a result record (the paper's Table III:
SAD without anomalies, SAD + KKA(0) .. KKA(T), means over classes and seeds). Each run is an ordinary loop
run folder, so an interrupted benchmark resumes where it stopped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field

from kka_ray.config import ConfigError, Strict, load_config
from kka_ray.detectors.deepsad import DeepSAD
from kka_ray.detectors.deepsad.train import CHECKPOINT_FILE
from kka_ray.figures import iteration_curves
from kka_ray.loop import BASELINE_JUDGE, STATE, KKAConfig, load_task, run_loop
from kka_ray.metrics import mean_ci
from kka_ray.records import metric_key, write_record
from kka_ray.runtime import init_ray
from kka_ray.stages.evaluate import judge
from kka_ray.store import RunStore


class LoopBenchConfig(Strict):
    name: str = Field("kka-loop-fmnist", description="Record name: docs/results/<name>.json")
    classes: list[str | int] = Field(default_factory=lambda: ["shirt", "pullover", "coat"], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    loop_config: str = Field("configs/kka/demo.yaml", description="KKA run config every run starts from; its "
                             "name, normal_classes, seed and run_dir are set per run")
    loop_overrides: list[str] = Field(default_factory=list, description="`key.path=value` changes to it")
    run_dir: str = "runs/bench"
    results_dir: str | None = "docs/results"
    demo_summary: str | None = Field("runs/kka-demo/summary.json", description="summary.json of the README's "
                                     "main command, for metrics.demo_minutes (skipped when absent)")
    fixed_judge: bool = Field(True, description="Also judge every iteration's N_t with one fixed theta_C (the "
                              "one without anomalies): the hard share of the language model alone")


def base_loop(cfg: LoopBenchConfig) -> KKAConfig:
    return load_config(KKAConfig, cfg.loop_config, cfg.loop_overrides)


def run_config(cfg: LoopBenchConfig, cls: str | int, seed: int) -> KKAConfig:
    return base_loop(cfg).model_copy(update={"name": f"{metric_key(str(cls))}-seed{seed}", "normal_classes": [cls],
                                       "seed": seed, "run_dir": f"{cfg.run_dir}/{cfg.name}"})


def run_one(run: KKAConfig, fixed_judge: bool = False) -> dict:
    """A finished run is read back; a started one resumes; a new one runs."""
    store = RunStore(f"{run.run_dir}/{run.name}")
    saved = store.read_json(STATE) if store.exists(STATE) else None
    if saved and saved["completed"] == run.update.iterations:
        out = {"rows": saved["rows"], "baseline": saved["baseline"]}
    else:
        state = run_loop(run, resume=saved is not None)
        out = {"rows": state.rows, "baseline": state.baseline}
    if fixed_judge:
        out["fixed"] = fixed_judge_shares(run)
    return out


FIXED = "fixed_judge.json"


def fixed_judge_shares(run: KKAConfig) -> dict[str, float | None]:
    """Hard share of every iteration's N_t under one judge, theta_C without anomalies (the judge of N_0, saved
    by the loop). The loop's own hard share changes judge each iteration (theta_C of A_{t-1}, trained to push out
    anomalies like the new ones), so it mixes the language model's progress with the judge's; this one follows
    the model alone. Cached in the run folder (caches of runs from before iter_t/generated.parquet hold None
    for those iterations)."""
    store = RunStore(f"{run.run_dir}/{run.name}")
    if store.exists(FIXED):
        return store.read_json(FIXED)
    if not store.exists(f"{BASELINE_JUDGE}/{CHECKPOINT_FILE}"):
        raise ConfigError(f"{store.location}: no {BASELINE_JUDGE}/{CHECKPOINT_FILE} (the run predates it); "
                          "set fixed_judge: false")
    init_ray(run.ray)
    task = load_task(run)
    model = DeepSAD.from_checkpoint(run.evaluator, store.path(BASELINE_JUDGE), store.fs)
    generated = [store.read_table(f"iter_{t}/generated.parquet") for t in range(run.update.iterations + 1)]
    shares = {str(t): sp.hard_share for t, sp in enumerate(judge(model, generated, task.val_normal,
                                                                 run.split.quantile))}
    store.write_json(FIXED, shares)
    return shares


DPO = ("dpo_loss", "dpo_reward_margin")  # how far each DPO round moved the model (loss 0.693 = not at all)


def table(cfg: LoopBenchConfig, results: dict) -> pd.DataFrame:
    rows = []
    for (cls, seed), res in results.items():
        row = {"class": str(cls), "seed": seed, "auroc_no_anomalies": res["baseline"]["auroc"]}
        for r in res["rows"]:
            row[f"auroc_kka{r['iteration']}"] = r["auroc"]
            row[f"hard_share_iter{r['iteration']}"] = r["hard_share"]
            row[f"hard_in_set_iter{r['iteration']}"] = r["hard_in_set"]
            if "pairs" in r:  # a DPO round (t < T); its figures are absent where it had no pair
                row.update({f"{k}_iter{r['iteration']}": r.get(k, np.nan) for k in DPO})
        for t, share in res.get("fixed", {}).items():
            row[f"fixed_hard_share_iter{t}"] = np.nan if share is None else share
        rows.append(row)
    return pd.DataFrame(rows)


def summarise(cfg: LoopBenchConfig, df: pd.DataFrame) -> dict[str, float]:
    T = base_loop(cfg).update.iterations
    m: dict[str, float] = {"runs": len(df), "iterations": T}
    for key, col in (("auroc_no_anomalies", "auroc_no_anomalies"), ("auroc_kka0", "auroc_kka0"),
                     ("auroc_kka_final", f"auroc_kka{T}"), ("hard_share_iter0", "hard_share_iter0"),
                     ("hard_share_final", f"hard_share_iter{T}"), ("hard_in_set_iter0", "hard_in_set_iter0"),
                     ("hard_in_set_final", f"hard_in_set_iter{T}")):
        mean, ci = mean_ci(df[col])
        m[key] = mean
        if np.isfinite(ci):
            m[f"{key}_ci95"] = ci
    for t in range(1, T):
        m[f"auroc_kka{t}"] = float(df[f"auroc_kka{t}"].mean())
        m[f"hard_share_iter{t}"] = float(df[f"hard_share_iter{t}"].mean())
    for t in range(T):  # over the runs whose round t had pairs
        had_pairs = df[f"dpo_loss_iter{t}"].notna()
        m[f"dpo_rounds_iter{t}"] = int(had_pairs.sum())
        if had_pairs.any():
            m.update({f"{k}_iter{t}": float(df[f"{k}_iter{t}"].mean()) for k in DPO})
    fixed = [f"fixed_hard_share_iter{t}" for t in range(T + 1)]
    kept = df.dropna(subset=fixed) if fixed[0] in df else df.iloc[:0]
    if len(kept):  # same keys as the loop's own share: iter0, iter1 .. iter{T-1}, final
        m["fixed_judge_runs"] = len(kept)
        m.update({f"hard_share_fixed_iter{t}": float(kept[c].mean()) for t, c in enumerate(fixed[:-1])})
        m["hard_share_fixed_final"] = float(kept[fixed[-1]].mean())
    for cls, g in df.groupby("class", sort=False):
        k = metric_key(cls)
        m[f"auroc_no_anomalies_{k}"] = float(g["auroc_no_anomalies"].mean())
        m[f"auroc_kka_final_{k}"] = float(g[f"auroc_kka{T}"].mean())
    if cfg.demo_summary and Path(cfg.demo_summary).is_file():
        m["demo_minutes"] = float(json.loads(Path(cfg.demo_summary).read_text())["wall_minutes"])
    return m


def markdown(cfg: LoopBenchConfig, df: pd.DataFrame, m: dict[str, float], command: str) -> str:
    loop = base_loop(cfg)
    T = loop.update.iterations
    cols = ["auroc_no_anomalies"] + [f"auroc_kka{t}" for t in range(T + 1)]
    shares = [f"hard_share_iter{t}" for t in range(T + 1)]
    header = " | ".join(["no anomalies"] + [f"KKA({t})" for t in range(T + 1)] +
                        [f"hard share {t}" for t in range(T + 1)]) + " |"

    def rows(frame: pd.DataFrame) -> list[str]:
        return [f"| {name} | " + " | ".join([f"{r[c]:.1f}" for c in cols] + [f"{r[c]:.3f}" for c in shares]) + " |"
                for name, r in frame.iterrows()]

    mean = df[cols + shares].mean()
    changes = f" with `{' '.join(cfg.loop_overrides)}`" if cfg.loop_overrides else ""
    lines = [f"# {cfg.name}", "", f"`{command}`", "", f"Each run: `{cfg.loop_config}`{changes}.", "",
             f"SAD (Deep SAD) test AUROC % on {loop.dataset.name}, one class normal, {loop.update.mode} "
             f"mode, T = {T}; {len(df)} of {len(cfg.classes) * len(cfg.seeds)} runs "
             f"({', '.join(map(str, cfg.classes))} x seeds {', '.join(map(str, cfg.seeds))}). Hard share = share of "
             "the new anomalies N_t that the previous iteration's theta_C (at t = 0: theta_C without anomalies) "
             "places inside the validation normals' boundary. Hard in A_t = anomalies of the set that were hard "
             "when they were judged.",
             "", "| normal class | " + header, "| --- |" + " ---: |" * (len(cols) + len(shares)),
             *rows(df.groupby("class", sort=False)[cols + shares].mean()),
             "| **mean** | " + " | ".join([f"**{mean[c]:.1f}**" for c in cols] +
                                         [f"**{mean[c]:.3f}**" for c in shares]) + " |",
             "", "Every run:", "", "| run | " + header, "| --- |" + " ---: |" * (len(cols) + len(shares)),
             *rows(df.set_index(df["class"].astype(str) + " seed " + df["seed"].astype(str)))]
    gain = m["auroc_kka_final"] - m["auroc_no_anomalies"]
    lines += ["", f"KKA({T}) - no anomalies: {gain:+.1f} points (goal: +5); KKA({T}) - KKA(0): "
              f"{m['auroc_kka_final'] - m['auroc_kka0']:+.1f}; hard share {m['hard_share_iter0']:.3f} -> "
              f"{m['hard_share_final']:.3f}; hard anomalies in A_t {m['hard_in_set_iter0']:.1f} -> "
              f"{m['hard_in_set_final']:.1f}.", *fixed_line(m, T), *dpo_line(m, T), "",
              f"![AUROC and hard share per iteration]({cfg.name}.png)", ""]
    return "\n".join(lines)


def dpo_line(m: dict[str, float], T: int) -> list[str]:
    rounds = "; ".join(f"round {t} ({m[f'dpo_rounds_iter{t}']:.0f} runs): loss {m[f'dpo_loss_iter{t}']:.3f}, reward "
                       f"margin {m[f'dpo_reward_margin_iter{t}']:.3f}" for t in range(T) if m[f"dpo_rounds_iter{t}"])
    return ["", f"DPO, mean over the runs whose round had pairs: {rounds or 'no round had pairs'}. A loss of "
            "ln 2 = 0.693 and a margin of 0 mean the round did not move the model."]


def fixed_line(m: dict[str, float], T: int) -> list[str]:
    if not m.get("fixed_judge_runs"):
        return []
    shares = " -> ".join(f"{m[f'hard_share_fixed_iter{t}']:.3f}" for t in range(T)) + \
        f" -> {m['hard_share_fixed_final']:.3f}"
    return ["", f"Hard share of N_0 .. N_{T} under one fixed judge (theta_C without anomalies, the judge of "
            f"N_0; {m['fixed_judge_runs']:.0f} runs that kept every N_t): {shares}. Unlike the hard "
            "share above, the judge does not change, so this follows the language model alone."]


def run_loop_bench(cfg: LoopBenchConfig, command: str) -> dict[str, float]:
    """Every (class, seed) run in turn; the record is rewritten after each, so a partial benchmark is visible
    (metrics.runs says how many runs it covers)."""
    results, total, m = {}, len(cfg.classes) * len(cfg.seeds), {}
    for cls in cfg.classes:
        for seed in cfg.seeds:
            results[(cls, seed)] = run_one(run_config(cfg, cls, seed), cfg.fixed_judge)
            print(f"[bench] {cls} seed {seed}: done ({len(results)} of {total})", flush=True)
            m = write(cfg, results, command)
    return m


def write(cfg: LoopBenchConfig, results: dict, command: str) -> dict[str, float]:
    df = table(cfg, results)
    m = summarise(cfg, df)
    T = base_loop(cfg).update.iterations
    png = iteration_curves(list(range(T + 1)), [float(df[f"auroc_kka{t}"].mean()) for t in range(T + 1)],
                           [float(df[f"hard_share_iter{t}"].mean()) for t in range(T + 1)],
                           m["auroc_no_anomalies"], f"{cfg.name}: mean over {len(df)} runs")
    outs = [Path(cfg.run_dir) / cfg.name] + ([Path(cfg.results_dir)] if cfg.results_dir else [])
    runs = df.astype(object).where(df.notna(), None).to_dict("records")  # NaN (no value) -> null
    for out in outs:
        write_record(cfg.name, m, markdown(cfg, df, m, command), out, command=command,
                     extra={"config": cfg.model_dump(mode="json"),
                            "loop_config": base_loop(cfg).model_dump(mode="json"), "runs": runs})
        (out / f"{cfg.name}.png").write_bytes(png)
    return m
