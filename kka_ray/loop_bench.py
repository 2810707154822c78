"""The KKA loop over several normal classes and seeds, summarised as a result record (the paper's Table III:
SAD without anomalies, SAD + KKA(0) .. KKA(T): per-class means over seeds, then means and 95% intervals over
classes). Each run is an ordinary loop run folder, so an interrupted benchmark resumes where it stopped."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field

from kka_ray.config import ConfigError, Strict, config_diff, describe_diff, load_config
from kka_ray.detectors.deepsad import DeepSAD
from kka_ray.detectors.deepsad.checkpoint import CHECKPOINT_FILE
from kka_ray.figures import iteration_curves
from kka_ray.loop import (
    BASELINE_JUDGE,
    RESUMABLE,
    STATE,
    KKAConfig,
    load_run_config,
    load_task,
    run_loop,
    run_seeded,
)
from kka_ray.precision import cpu_capability
from kka_ray.records import made_here, metric_key, write_record
from kka_ray.runtime import init_ray
from kka_ray.stages.evaluate import judge
from kka_ray.store import RunStore
from kka_ray.summary import over_classes, provenance, provenance_table


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
    archive: str | None = Field(None, description="Folder, committed with the record, that keeps of each finished "
                                "run what later jobs read (config, state, fixed-judge shares, every N_t and the "
                                "final A_T: Table II's KKA sets), so a fresh clone neither reruns the loop nor "
                                "loses it; a run found finished there is read back from it. Point a Table II "
                                "config's `kka_rep.folder` here")


def base_loop(cfg: LoopBenchConfig) -> KKAConfig:
    return load_config(KKAConfig, cfg.loop_config, cfg.loop_overrides)


def run_config(cfg: LoopBenchConfig, cls: str | int, seed: int) -> KKAConfig:
    return base_loop(cfg).model_copy(update={"name": f"{metric_key(str(cls))}-seed{seed}", "normal_classes": [cls],
                                       "seed": seed, "run_dir": f"{cfg.run_dir}/{cfg.name}"})


# A run folder is reused only for the same run: where it executes (ray, train storage, the folder's parent) may
# differ, how many iterations it has may not (a changed count is another benchmark).
SAME_RUN_IGNORES = tuple(p for p in RESUMABLE if p != "update.iterations") + ("run_dir",)


def check_same_run(location: str, run: KKAConfig) -> None:
    """Refuse a run folder whose saved config.yaml differs from `run`, naming the keys and both values."""
    # Old runs get the loop's defaults for options they predate; seeds compare as the run used them (a folder
    # saved with generate.seed: 0 before seeds followed the run's is the same run as seed 0 now).
    saved = run_seeded(load_run_config(location, [])).model_dump(mode="json")
    current = run_seeded(run).model_dump(mode="json")
    if changed := config_diff(saved, current, ignore=SAME_RUN_IGNORES):
        raise ConfigError(f"{location}/config.yaml: the run there was made with another configuration (saved -> "
                          f"now): {describe_diff(saved, current, changed)}; give the benchmark another `name` or "
                          f"`run_dir`, or remove {location}")


def run_one(run: KKAConfig, fixed_judge: bool = False, archive: str | None = None) -> dict:
    """A finished run is read back (from its folder, or else from the archive); a started one resumes; a new one
    runs, and once finished is archived (once: an archived run keeps the provenance of the code that made it). A
    folder made with another configuration is refused, finished or not."""
    location = f"{run.run_dir}/{run.name}"
    kept = f"{archive}/{run.name}" if archive else None
    in_archive = bool(kept) and RunStore(archive).exists(f"{run.name}/{STATE}")
    store = RunStore(location)
    if in_archive and not store.exists(STATE):
        check_same_run(kept, run)  # archived runs are finished ones, with the benchmark's fixed-judge shares
        archived = RunStore(kept)
        if fixed_judge and not archived.exists(FIXED):
            raise ConfigError(f"{kept}: archived without {FIXED} (its evaluators are not archived); set "
                              "fixed_judge: false")
        saved = archived.read_state(STATE)
        return {"rows": saved["rows"], "baseline": saved["baseline"], "made": made_by(archived)} | (
            {"fixed": archived.read_json(FIXED)} if fixed_judge else {})
    if store.exists("config.yaml"):
        check_same_run(location, run)
    saved = store.read_state(STATE) if store.exists(STATE) else None
    finished = bool(saved) and saved["completed"] == run.update.iterations
    if finished:
        out = {"rows": saved["rows"], "baseline": saved["baseline"]}
    else:
        state = run_loop(run, resume=saved is not None)
        out = {"rows": state.rows, "baseline": state.baseline}
    if fixed_judge:
        out["fixed"] = fixed_judge_shares(run)
    if kept and not in_archive:
        archive_run(store, RunStore(kept), run.update.iterations)
    # who made it: the archive knows; otherwise this process did, unless it only read a finished folder back
    out["made"] = made_by(RunStore(kept)) if kept else UNKNOWN if finished else made_here()
    return out


def archive_run(store: RunStore, kept: RunStore, T: int) -> None:
    """Copy what later jobs read of a finished run; the state file goes last, so a half-copied archive entry
    is not taken for a finished one."""
    files = ["config.yaml", FIXED, f"iter_{T}/anomalies.parquet", f"iter_{T}/grid.png",
             *(f"iter_{t}/generated.parquet" for t in range(T + 1))]
    store.copy_into(kept, files)
    kept.write_json(PROVENANCE, made_here() | {"cpu": cpu_capability(),
                                               "archived": datetime.now(UTC).isoformat(timespec="seconds")})
    kept.write_bytes(STATE, store.read_bytes(STATE))


PROVENANCE = "archived.json"  # the code and machine that made an archived run
UNKNOWN = {"commit": "unknown", "machine": "unknown"}  # a finished run read back from a folder never archived


def made_by(archived: RunStore) -> dict[str, str]:
    """The commit and machine that finished an archived run (archives older than archived.json: unknown)."""
    made = archived.read_json(PROVENANCE) if archived.exists(PROVENANCE) else {}
    return {k: made.get(k, UNKNOWN[k]) for k in UNKNOWN}


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


# How far each DPO round moved the model on its training pairs (loss 0.693 = not at all), and whether that
# preference holds on its held-out pairs (margin > 0).
DPO = ("dpo_loss", "dpo_reward_margin", "dpo_heldout_reward_margin")


def table(cfg: LoopBenchConfig, results: dict) -> pd.DataFrame:
    rows = []
    for (cls, seed), res in results.items():
        made = res.get("made", UNKNOWN)
        row = {"class": str(cls), "seed": seed, "commit": made["commit"], "machine": made["machine"],
               "auroc_no_anomalies": res["baseline"]["auroc"]}
        for r in res["rows"]:
            t = r["iteration"]
            row[f"auroc_kka{t}"] = r["auroc"]
            row[f"hard_share_iter{t}"] = r["hard_share"]
            if "rejected" in r and "new" in r:  # share of the model's lines the cleaner threw away
                row[f"rejected_share_iter{t}"] = r["rejected"] / max(1, r["rejected"] + r["new"])
            if "pairs" in r:  # a DPO round (t < T); its figures are absent where it had no pair
                row.update({f"{k}_iter{t}": r.get(k, np.nan) for k in DPO})
        for t, share in res.get("fixed", {}).items():
            row[f"fixed_hard_share_iter{t}"] = np.nan if share is None else share
        rows.append(row)
    return pd.DataFrame(rows)


def _over_classes(df: pd.DataFrame, names: dict[str, str], **kwargs) -> tuple[dict[str, float], pd.DataFrame]:
    """over_classes on the table's columns under their names in the record (`names`: name -> column)."""
    return over_classes(df.assign(**{n: df[c] for n, c in names.items()}), list(names), **kwargs)


def summarise(cfg: LoopBenchConfig, df: pd.DataFrame) -> dict[str, float]:
    """Per-class means over seeds first, then means and 95% intervals over classes (seeds of a class are not
    independent tasks); gains are paired by class: KKA(t) over SAD without anomalies, and KKA(T) over KKA(0).
    The DPO figures are means over the runs whose round had pairs."""
    T = base_loop(cfg).update.iterations
    its = range(T + 1)
    aurocs = {"no_anomalies": "auroc_no_anomalies"} | {f"kka_iter{t}": f"auroc_kka{t}" for t in its}
    m, per_class = _over_classes(df, aurocs, reference="no_anomalies", prefix="auroc_")
    m["iterations"] = T
    final = _over_classes(df, {"kka0": "auroc_kka0", "final_vs_kka0": f"auroc_kka{T}"}, reference="kka0")[0]
    m.update({k: v for k, v in final.items() if k.startswith("gain_final_vs_kka0")})
    m.update(_over_classes(df, {f"iter{t}": f"hard_share_iter{t}" for t in its}, prefix="hard_share_")[0])
    if f"rejected_share_iter{T}" in df:
        m.update(_over_classes(df, {f"iter{t}": f"rejected_share_iter{t}" for t in its},
                               prefix="rejected_share_")[0])
    for t in range(T):  # over the runs whose round t had pairs
        had_pairs = df[f"dpo_loss_iter{t}"].notna()
        m[f"dpo_rounds_iter{t}"] = int(had_pairs.sum())
        m.update({f"{k}_iter{t}": float(df[f"{k}_iter{t}"].mean()) for k in DPO if df[f"{k}_iter{t}"].notna().any()})
        if f"dpo_heldout_reward_margin_iter{t}" in m:  # the record's name for it
            m[f"dpo_margin_heldout_iter{t}"] = m.pop(f"dpo_heldout_reward_margin_iter{t}")
    fixed = {f"fixed_iter{t}": f"fixed_hard_share_iter{t}" for t in its}
    kept = df.dropna(subset=list(fixed.values())) if set(fixed.values()) <= set(df) else df.iloc[:0]
    if len(kept):  # under hard_share_fixed_iter<t>
        shares, _ = _over_classes(kept, fixed, prefix="hard_share_")
        m["fixed_judge_runs"] = shares["runs"]
        m.update({k: v for k, v in shares.items() if k.startswith("hard_share_fixed_")})
    for cls, row in per_class.iterrows():
        k = metric_key(cls)
        m[f"auroc_no_anomalies_{k}"] = float(row["no_anomalies"])
        m[f"auroc_kka_iter{T}_{k}"] = float(row[f"kka_iter{T}"])
    if cfg.demo_summary and Path(cfg.demo_summary).is_file():
        m["demo_minutes"] = float(json.loads(Path(cfg.demo_summary).read_text())["wall_minutes"])
    return m


def class_means(df: pd.DataFrame, T: int) -> pd.DataFrame:
    """Per-class means over seeds of the page's columns (SAD, KKA(0..T), hard shares); their means over classes
    are the record's."""
    cols = (["auroc_no_anomalies"] + [f"auroc_kka{t}" for t in range(T + 1)]
            + [f"hard_share_iter{t}" for t in range(T + 1)])
    return df.groupby("class", sort=False)[cols].mean()


def _ci(m: dict[str, float], key: str) -> str:
    return f" ± {m[f'{key}_ci95']:.1f}" if f"{key}_ci95" in m else ""


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

    per_class = class_means(df, T)
    mean = per_class.mean()
    changes = f" with `{' '.join(cfg.loop_overrides)}`" if cfg.loop_overrides else ""
    lines = [f"# {cfg.name}", "", f"`{command}`", "", f"Each run: `{cfg.loop_config}`{changes}.", "",
             f"SAD (Deep SAD) test AUROC % on {loop.dataset.name}, one class normal, {loop.update.mode} "
             f"mode, T = {T}; {len(df)} of {len(cfg.classes) * len(cfg.seeds)} runs "
             f"({', '.join(map(str, cfg.classes))} x seeds {', '.join(map(str, cfg.seeds))}). Hard share = share of "
             "the new anomalies N_t that the previous iteration's theta_C (at t = 0: theta_C without anomalies) "
             "places inside the validation normals' boundary. Each class's row is its mean over seeds; the mean "
             "row is the mean over classes.",
             "", "| normal class | " + header, "| --- |" + " ---: |" * (len(cols) + len(shares)),
             *rows(per_class),
             "| **mean** | " + " | ".join([f"**{mean[c]:.1f}**" for c in cols] +
                                         [f"**{mean[c]:.3f}**" for c in shares]) + " |",
             "", *provenance_table(df, "runs"), "",
             "Every run:", "", "| run | " + header, "| --- |" + " ---: |" * (len(cols) + len(shares)),
             *rows(df.set_index(df["class"].astype(str) + " seed " + df["seed"].astype(str)))]
    lines += ["", f"KKA({T}) - no anomalies: {m[f'gain_kka_iter{T}']:+.1f}{_ci(m, f'gain_kka_iter{T}')} points; "
              f"KKA(0) - no anomalies: {m['gain_kka_iter0']:+.1f}{_ci(m, 'gain_kka_iter0')}; KKA({T}) - KKA(0): "
              f"{m['gain_final_vs_kka0']:+.1f}{_ci(m, 'gain_final_vs_kka0')}; hard share "
              f"{m['hard_share_iter0']:.3f} -> {m[f'hard_share_iter{T}']:.3f}"
              + (f"; lines rejected by the cleaner {m['rejected_share_iter0']:.3f} -> "
                 f"{m[f'rejected_share_iter{T}']:.3f}" if "rejected_share_iter0" in m else "")
              + f". ± = half-width of the 95% t-interval over the {m['classes']:.0f} classes (each class's seeds "
              "averaged first; a gain is paired by class).",
              *fixed_line(m, T), *dpo_line(m, T), "", f"![AUROC and hard share per iteration]({cfg.name}.png)", ""]
    return "\n".join(lines)


def dpo_line(m: dict[str, float], T: int) -> list[str]:
    def held(t: int) -> str:
        key = f"dpo_margin_heldout_iter{t}"
        return f", held-out margin {m[key]:.3f}" if key in m else ""

    rounds = "; ".join(f"round {t} ({m[f'dpo_rounds_iter{t}']:.0f} runs): loss {m[f'dpo_loss_iter{t}']:.3f}, reward "
                       f"margin {m[f'dpo_reward_margin_iter{t}']:.3f}{held(t)}" for t in range(T)
                       if m[f"dpo_rounds_iter{t}"])
    return ["", f"DPO, mean over the runs whose round had pairs (training figures: means over the round's steps; "
            f"held-out: pairs never trained): {rounds or 'no round had pairs'}. A loss of ln 2 = 0.693 and a margin "
            "of 0 mean the round did not move the model."]


def fixed_line(m: dict[str, float], T: int) -> list[str]:
    if not m.get("fixed_judge_runs"):
        return []
    shares = " -> ".join(f"{m[f'hard_share_fixed_iter{t}']:.3f}" for t in range(T + 1))
    return ["", f"Hard share of N_0 .. N_{T} under one fixed judge (theta_C without anomalies, the judge of "
            f"N_0; {m['fixed_judge_runs']:.0f} runs that kept every N_t): {shares}. Unlike the hard "
            "share above, the judge does not change, so this follows the language model alone."]


def run_loop_bench(cfg: LoopBenchConfig, command: str) -> dict[str, float]:
    """Every (class, seed) run in turn; the record is rewritten after each, so a partial benchmark is visible
    (metrics.runs says how many runs it covers)."""
    results, total, m = {}, len(cfg.classes) * len(cfg.seeds), {}
    for cls in cfg.classes:
        for seed in cfg.seeds:
            results[(cls, seed)] = run_one(run_config(cfg, cls, seed), cfg.fixed_judge, cfg.archive)
            print(f"[bench] {cls} seed {seed}: done ({len(results)} of {total})", flush=True)
            m = write(cfg, results, command)
    return m


def write(cfg: LoopBenchConfig, results: dict, command: str) -> dict[str, float]:
    df = table(cfg, results)
    m = summarise(cfg, df)
    T = base_loop(cfg).update.iterations
    mean = class_means(df, T).mean()
    png = iteration_curves(list(range(T + 1)), [float(mean[f"auroc_kka{t}"]) for t in range(T + 1)],
                           [float(mean[f"hard_share_iter{t}"]) for t in range(T + 1)], m["auroc_no_anomalies"],
                           f"{cfg.name}: mean over {m['classes']:.0f} classes ({len(df)} runs)")
    outs = [Path(cfg.run_dir) / cfg.name] + ([Path(cfg.results_dir)] if cfg.results_dir else [])
    runs = df.astype(object).where(df.notna(), None).to_dict("records")  # NaN (no value) -> null
    for out in outs:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{cfg.name}.png").write_bytes(png)
    write_record(cfg.name, m, markdown(cfg, df, m, command), outs, command=command,
                 extra={"config": cfg.model_dump(mode="json"), "loop_config": base_loop(cfg).model_dump(mode="json"),
                        "runs": runs, "runs_from": provenance(df, "runs")})
    return m
