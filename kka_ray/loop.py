"""Algorithm 1 as a driver: select once, then for t = 0..T generate -> render -> update -> evaluate -> split ->
report SAD + KKA(t) -> (t < T) prefer (DPO) -> the next iteration generates with the tuned model.

Stage outputs stay in memory and in the object store between stages; after each completed iteration its
checkpoint goes to the run directory (local path or pyarrow URI): A_t (Parquet with images, descriptions,
distances, hard/easy, provenance), the rejected lines, the DPO pairs, theta_C's weights, the adapter of the next
iteration, metrics and a grid. `resume` continues after the last completed iteration.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from pydantic import Field, ValidationError

from kka_ray.config import (
    ConfigError,
    DatasetConfig,
    DeepSADConfig,
    RayConfig,
    Strict,
    apply_overrides,
    config_diff,
    describe_errors,
)
from kka_ray.data import build_dataset, make_task
from kka_ray.detectors import build_detector
from kka_ray.detectors.deepsad import DeepSAD
from kka_ray.figures import anomaly_grid, iteration_curves
from kka_ray.metrics import auroc
from kka_ray.paths import model_location
from kka_ray.render import RenderConfig, resolve_render
from kka_ray.resources import peak_rss_mb
from kka_ray.runtime import quiet
from kka_ray.stages.evaluate import (
    SplitConfig,
    anomaly_set,
    fit_evaluator,
    hard_easy_split,
    judge,
    with_split,
)
from kka_ray.stages.generate import GenerateConfig, normal_context
from kka_ray.stages.prefer import PreferConfig, adapter_files, build_pairs, mark_trained, run_dpo
from kka_ray.stages.render import anomaly_stream, collect
from kka_ray.stages.select import Representative, SelectConfig, representatives_table, run_select
from kka_ray.stages.update import UpdateConfig, origin_counts, update_anomalies
from kka_ray.store import RunLocked, RunStore
from kka_ray.tracking import Tracker, TrackingConfig
from kka_ray.viewer import VIEWER, write_viewer

STATE = "state.json"
BASELINE_JUDGE = "baseline/evaluator"  # theta_C without anomalies, the judge of N_0


class KKAConfig(Strict):
    name: str = Field("kka", description="Run name: outputs go to <run_dir>/<name>/")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    normal_classes: list[str | int] = Field(default_factory=lambda: ["shirt"], min_length=1)
    seed: int = Field(0, description="Seeds the task split, k-means and sampling (where select.seed and "
                      "generate.seed are None), rendering, training and the update draws")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Share of training normals held out for Eq. 6")
    select: SelectConfig = Field(default_factory=SelectConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    render: RenderConfig = Field(default_factory=RenderConfig)
    evaluator: DeepSADConfig = Field(default_factory=DeepSADConfig, description="theta_C (Eq. 5)")
    detector: DeepSADConfig | None = Field(None, description="The reported SAD detector; None = theta_C of each "
                                           "iteration (same model, same data: one fit instead of two)")
    split: SplitConfig = Field(default_factory=SplitConfig)
    prefer: PreferConfig = Field(default_factory=PreferConfig)
    update: UpdateConfig = Field(default_factory=UpdateConfig)
    grid_size: int = Field(32, ge=1, description="Anomalies shown in each iteration's grid")
    run_dir: str = Field("runs", description="Parent of the run folder: a local path or a pyarrow URI")
    train_storage: str | None = Field(None, description="Ray Train storage (shared path or URI on a multi-node "
                                      "cluster); None = a local temporary folder")
    reuse_pretrained: bool = Field(True, description="theta_C of every iteration starts from the autoencoder "
                                   "pretraining of the fit without anomalies (on the train normals) instead of "
                                   "pretraining again on normals + A_t: the pretraining is an unsupervised "
                                   "initialisation, and repeating it cost a third of each fit")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow tracking of the run")
    ray: RayConfig = Field(default_factory=RayConfig)


@dataclass
class LoopState:
    store: RunStore
    completed: int = -1  # last iteration whose checkpoint is complete
    rows: list[dict] = field(default_factory=list)  # per-iteration metrics
    baseline: dict = field(default_factory=dict)  # SAD without anomalies, and the select stage's costs
    pretrained: DeepSAD | None = None  # the fit whose pretrained encoder later theta_C start from


# What a resumed run may change: where it runs, and how many iterations it goes to.
RESUMABLE = ("ray.", "train_storage", "tracking.", "update.iterations")


def load_run_config(run: str, overrides: list[str]) -> KKAConfig:
    """The saved config of a run folder, with overrides limited to RESUMABLE fields."""
    store = RunStore(run)
    if not store.exists("config.yaml"):
        raise ConfigError(f"--resume {run}: no config.yaml there (not a KKA run folder)")
    for item in overrides:
        key = item.partition("=")[0].strip()
        if not key.startswith(RESUMABLE):
            raise ConfigError(f"--resume {run}: {key!r} cannot change in a resumed run (only ray.*, train_storage, "
                              "update.iterations); start a new run instead")
    tree = yaml.safe_load(store.read_text("config.yaml"))
    tree.setdefault("reuse_pretrained", False)  # a run saved before the option pretrained every theta_C itself
    tree = apply_overrides(tree, overrides)
    try:
        return KKAConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(describe_errors(e, f"{run}/config.yaml")) from None


def continue_or_next(cfg: KKAConfig) -> tuple[KKAConfig, bool]:
    """Where a rerun of the same command goes, never deleting a run: the first of <name>, <name>-2, ... that is
    empty (a new run) or holds an unfinished run of this very config (resumed)."""
    k = 1
    while True:
        named = cfg.model_copy(update={"name": cfg.name if k == 1 else f"{cfg.name}-{k}"})
        location = f"{cfg.run_dir.rstrip('/')}/{named.name}"
        store = RunStore(location)
        if not store.exists(STATE):
            return named, False
        if store.read_state(STATE)["completed"] < cfg.update.iterations and _same_run(location, named):
            return named, True
        k += 1


def _same_run(location: str, cfg: KKAConfig) -> bool:
    try:
        saved = load_run_config(location, [])
    except ConfigError:  # saved by a version with other options: another run, left alone
        return False
    return not config_diff(run_seeded(saved).model_dump(mode="json"), run_seeded(cfg).model_dump(mode="json"),
                           ignore=("ray.", "train_storage", "tracking."))


def open_run(cfg: KKAConfig, resume: bool, take_over: bool = False) -> LoopState:
    store = RunStore(f"{cfg.run_dir.rstrip('/')}/{cfg.name}")
    if store.exists(STATE) and not resume:
        raise ConfigError(f"{store.location} already holds a run; continue it with --resume {store.location} "
                          "or choose another `name`")
    try:
        store.lock(take_over)
    except RunLocked as e:
        raise ConfigError(str(e)) from None
    try:
        state = LoopState(store)
        if resume and store.exists(STATE):
            saved = store.read_state(STATE)
            state.completed, state.rows, state.baseline = saved["completed"], saved["rows"], saved["baseline"]
            last = state.completed
            if last < cfg.update.iterations and "next_adapter" not in state.rows[-1]:
                raise ConfigError(f"{store.location}: iteration {last} was the last one (no DPO adapter after it), "
                                  "so the run cannot go further; start a new run with more update.iterations")
        store.write_text("config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    except BaseException:
        store.unlock()
        raise
    return state


def _say(msg: str) -> None:
    if not quiet():
        print(f"[kka] {msg}", flush=True)


def _test_auroc(det, task) -> float:
    return 100 * auroc(task.test_targets, det.score(task.test.images))


def _relative_adapter(table: pa.Table, adapter: str) -> pa.Table:
    """The run-relative adapter name in the provenance, so that a run reads the same wherever its folder is."""
    return table.set_column(table.column_names.index("adapter"), "adapter",
                            pa.array([adapter] * len(table), pa.string()))


def _new_anomalies(table: pa.Table, iteration: int, adapter: str) -> pa.Table:
    ids = pa.array([f"i{iteration}-{k}" for k in range(len(table))])
    return _relative_adapter(table, adapter).append_column("anomaly_id", ids)


def _representatives(state: LoopState, task, cfg: KKAConfig) -> list[Representative]:
    if state.store.exists("representatives.parquet"):
        return [Representative(**r) for r in state.store.read_table("representatives.parquet").to_pylist()]
    start = time.time()
    reps = run_select(task.train_normal, cfg.select)
    seconds = time.time() - start
    state.baseline.update(select_seconds=seconds, select_rows_per_s=min(len(task.train_normal),
                          cfg.select.max_samples or len(task.train_normal)) / seconds,
                          peak_rss_mb_select=peak_rss_mb())  # the driver's; phi's actor is short-lived
    state.store.write_table("representatives.parquet", representatives_table(reps))
    return reps


def run_seeded(cfg: KKAConfig) -> KKAConfig:
    """The config a run works with: select and generate seeds left None take the run's seed, so that the run's
    seed reaches every random choice (k-means, the samples of normals, every generated row's sampling seed)."""
    select = cfg.select if cfg.select.seed is not None else cfg.select.model_copy(update={"seed": cfg.seed})
    generate = cfg.generate if cfg.generate.seed is not None else cfg.generate.model_copy(update={"seed": cfg.seed})
    return cfg.model_copy(update={"select": select, "generate": generate})


def load_task(cfg: KKAConfig):
    dataset = build_dataset(cfg.dataset.name, cfg.dataset.root, cfg.dataset.image_size, cfg.dataset.options)
    return make_task(dataset, cfg.dataset.name, cfg.normal_classes, seed=cfg.seed, val_fraction=cfg.val_fraction)


def run_loop(cfg: KKAConfig, resume: bool = False, stop_after: int | None = None,
             take_over: bool = False) -> LoopState:
    """Run (or, with `resume`, continue) the loop; `stop_after` ends it after that iteration's checkpoint, for
    time-limited job slots (continue with resume); `take_over` takes the folder's lock from a driver that is
    gone."""
    from kka_ray.runtime import init_ray

    # Refused before any work: a prior that has seen the dataset, a model folder that is not there.
    resolve_render(cfg.render, cfg.dataset.name)
    if cfg.generate.lm.model:
        model_location(cfg.generate.lm.model, "generate.lm.model")
    state = open_run(cfg, resume, take_over)  # config.yaml as given; the folder locked to this driver
    workdir = Path(cfg.train_storage or tempfile.mkdtemp(prefix="kka-train-"))
    try:
        init_ray(cfg.ray)
        return _run(run_seeded(cfg), state, workdir, stop_after)
    finally:
        state.store.unlock()
        if cfg.train_storage is None:  # Ray Train's checkpoints: what the run keeps is in its folder by now
            shutil.rmtree(workdir, ignore_errors=True)


ITERATION_ARTIFACTS = ("metrics.json", "grid.png", "hard_grid.png", "generated.parquet", "pairs.parquet")


def _run(cfg: KKAConfig, state: LoopState, workdir: Path, stop_after: int | None) -> LoopState:
    store, T = state.store, cfg.update.iterations
    tracker = Tracker(cfg.tracking, store, cfg.name, cfg.model_dump(mode="json"))
    task = load_task(cfg)
    size, _, channels = task.train_normal.shape
    _say(f"task {task.name}: {len(task.train_normal)} train normals, {len(task.val_normal)} validation normals, "
         f"{len(task.test)} test images; run folder {store.location}")
    reps = _representatives(state, task, cfg)
    ctx = normal_context(task, cfg.generate)
    _say(f"select: {len(reps)} representatives: " + "; ".join(r.description for r in reps))
    if state.completed < 0:  # theta_C without anomalies judges iteration 0's candidates
        start = time.time()
        with tracker.fits("baseline"):
            judge_model, _ = fit_evaluator(task, None, cfg.evaluator, seed=cfg.seed, workdir=workdir)
            _save_evaluator(store, judge_model, BASELINE_JUDGE)
            state.pretrained = judge_model
            baseline = judge_model
            if cfg.detector is not None:
                baseline = build_detector(cfg.detector)
                baseline.fit(task.train_normal, None, seed=cfg.seed, workdir=workdir)
        state.baseline.update(auroc=_test_auroc(baseline, task), seconds=time.time() - start)
        _say(f"SAD without anomalies: test AUROC {state.baseline['auroc']:.1f} ({state.baseline['seconds']:.0f} s)")
        tracker.log({"sad_auroc": state.baseline["auroc"], "sad_seconds": state.baseline["seconds"]})
        previous = None
    else:
        last = f"iter_{state.completed}"
        judge_model = DeepSAD.from_checkpoint(cfg.evaluator, store.path(f"{last}/evaluator"), store.fs)
        state.pretrained = DeepSAD.from_checkpoint(cfg.evaluator, store.path(BASELINE_JUDGE), store.fs)
        previous = store.read_table(f"{last}/anomalies.parquet")
    for t in range(state.completed + 1, T + 1):
        with tracker.fits(f"iter_{t}"):
            previous, judge_model = run_iteration(cfg, state, task, reps, ctx, t, previous, judge_model,
                                                  (size, channels), workdir)
        tracker.iteration(t, state.rows[-1], [f"iter_{t}/{f}" for f in ITERATION_ARTIFACTS])
        if stop_after is not None and t >= stop_after and t < T:
            _say(f"stopped after iteration {t} as asked; continue with --resume {store.location}")
            return state
    report = final_report(cfg, state)
    store.write_text("report.md", report)
    write_viewer(store, cfg.name, state.rows, state.baseline)
    tracker.artifacts(["report.md", VIEWER, "auroc.png", "config.yaml"])
    print(report, flush=True)
    return state


def run_iteration(cfg: KKAConfig, state: LoopState, task, reps, ctx, t: int, previous: pa.Table | None,
                  judge_model: DeepSAD, shape: tuple[int, int], workdir: Path) -> tuple[pa.Table, DeepSAD]:
    """Generate and render N_t, judge it with the current theta_C, update A, fit theta_C on A_t (SAD + KKA(t)),
    and for t < T tune the language model on N_t's hard / easy pairs."""
    store, T, start = state.store, cfg.update.iterations, time.time()
    adapter = state.rows[-1]["next_adapter"] if state.rows else ""  # run-relative; "" = the base model
    lm = cfg.generate.lm.model_copy(update={"adapter": store.uri(adapter) if adapter else None})
    gen = cfg.generate.model_copy(update={"lm": lm})
    stream, renderer = anomaly_stream(reps, ctx, gen, cfg.render, *shape, iteration=t, dataset=cfg.dataset.name)
    rendered = collect(stream, renderer, cleaned=True)
    new = _new_anomalies(rendered.anomalies, t, adapter)
    costs = dict(rendered.costs)
    _say(f"iter {t} generate+render: {len(new)} anomalies, {len(rendered.rejects)} lines rejected "
         f"({rendered.stats['seconds']:.0f} s)")
    if len(new) == 0:  # keep what the model wrote, then stop: the rejected lines say why
        store.write_table(f"iter_{t}/rejects.parquet", rendered.rejects)
        reasons = rendered.rejects.column("reason").value_counts().to_pylist() if len(rendered.rejects) else []
        counts = ", ".join(f"{r['values']} {r['counts']}" for r in reasons) or "the model wrote nothing"
        raise RuntimeError(f"iteration {t}: every generated line was rejected ({counts}); the lines are in "
                           f"{store.location}/iter_{t}/rejects.parquet")
    rejudge = previous is not None and cfg.update.rejudge
    with _timed(costs, "split", len(new)):
        sp, *old = judge(judge_model, [new, previous] if rejudge else [new], task.val_normal, cfg.split.quantile)
    new = with_split(new, sp, t)
    _say(f"iter {t} split (theta_C of A_{t - 1}): hard {sp.hard_count}, easy {sp.easy_count} of the new "
         f"(hard share {sp.hard_share:.3f}, boundary {sp.threshold:.4g})")
    if rejudge:
        again = old[0]
        previous = with_split(previous, again, t)
        _say(f"iter {t} re-judged A_{t - 1}: hard {again.hard_count}, easy {again.easy_count}")
    with _timed(costs, "update", len(new)):
        anomalies = new if previous is None else update_anomalies(previous, new, cfg.update.mode, cfg.seed + t)
    _say(f"iter {t} update ({cfg.update.mode}): |A_{t}| = {len(anomalies)}, by origin iteration "
         f"{origin_counts(anomalies)}")
    pretraining = cfg.reuse_pretrained and cfg.evaluator.pretrain and cfg.evaluator.ae_epochs > 0
    pretrained = state.pretrained if pretraining else None
    with _timed(costs, "evaluate", len(task.train_normal) + len(anomalies)):
        evaluator, fit = fit_evaluator(task, anomalies, cfg.evaluator, seed=cfg.seed + t, workdir=workdir,
                                       pretrained=pretrained)
    costs["peak_rss_mb_evaluate"] = float(fit.get("peak_rss_mb", np.nan))
    # Test images are read only here, after this iteration's split and training are final. theta_C scores them
    # with the validation normals in one pass: those give the boundary a served run judges against.
    n_test = len(task.test)
    with _timed(costs, "test", n_test + len(task.val_normal)):
        scores = evaluator.score(np.concatenate([task.test.images, task.val_normal.images]))
    boundary = hard_easy_split(np.empty(0), scores[n_test:], cfg.split.quantile).threshold
    if cfg.detector is None:
        score = 100 * auroc(task.test_targets, scores[:n_test])
    else:
        reported = build_detector(cfg.detector)
        reported.fit(task.train_normal, anomaly_set(anomalies), seed=cfg.seed + t, workdir=workdir)
        score = _test_auroc(reported, task)
    _say(f"iter {t} evaluate: SAD + KKA({t}) test AUROC {score:.1f}")
    # hard anomalies in A_t, each by the verdict it got when it entered (or again, with update.rejudge)
    hard_set = int(anomalies.column("hard").to_numpy(zero_copy_only=False).sum())
    row = {"iteration": t, "anomalies": len(anomalies), "new": len(new), "rejected": len(rendered.rejects),
           "hard": sp.hard_count, "easy": sp.easy_count, "hard_share": sp.hard_share, "hard_in_set": hard_set,
           "boundary": sp.threshold, "auroc": score, "evaluator_loss": float(fit.get("loss", np.nan)),
           "evaluator_boundary": boundary, "evaluator_bf16": bool(fit.get("bf16", False)),
           "images_per_s": rendered.stats.get("images_per_s", 0.0)}
    if t < T:
        with _timed(costs, "dpo", 0):
            row.update(prefer(cfg, state, new, rendered.rejects, gen, lm, ctx.domain, t, adapter, workdir))
        costs["dpo_rows_per_s"] = row["pairs_trained"] / costs["dpo_seconds"] if row["pairs_trained"] else 0.0
        costs["peak_rss_mb_dpo"] = row.pop("dpo_peak_rss_mb", np.nan)
    costs["peak_rss_mb_driver"] = peak_rss_mb()
    row.update(costs)
    row["seconds"] = time.time() - start
    save_iteration(state, t, anomalies, new, _relative_adapter(rendered.rejects, adapter), evaluator, row, cfg)
    return anomalies, evaluator


@contextmanager
def _timed(costs: dict, stage: str, rows: int):
    """`<stage>_seconds` and `<stage>_rows_per_s` (rows handled per second) of the block into `costs`."""
    start = time.time()
    yield
    costs[f"{stage}_seconds"] = seconds = time.time() - start
    costs[f"{stage}_rows_per_s"] = rows / seconds if seconds > 0 else 0.0


def prefer(cfg: KKAConfig, state: LoopState, judged: pa.Table, rejects: pa.Table, gen: GenerateConfig, lm,
           domain: str, t: int, adapter: str, workdir: Path) -> dict:
    """Eq. 7: DPO on pairs of this iteration's completions (what the current model wrote), scored by their
    judged and rejected lines; held-out pairs measure the round. With no training pair the model stays."""
    pairs = mark_trained(build_pairs(judged, rejects, gen, domain, cfg.prefer, seed=cfg.seed + t), cfg.prefer,
                         cfg.seed + t)
    state.store.write_table(f"iter_{t}/pairs.parquet", pairs)
    trained = int(pc.sum(pairs.column("trained")).as_py() or 0)
    heldout = int(pc.sum(pairs.column("heldout")).as_py() or 0)
    if trained == 0:
        _say(f"iter {t} prefer (DPO): no preference pair to train on; the next iteration keeps the current model")
        return {"pairs": len(pairs), "pairs_trained": 0, "pairs_heldout": heldout, "next_adapter": adapter}
    checkpoint, dpo = run_dpo(pairs, lm, cfg.prefer, seed=cfg.seed + t, workdir=workdir)
    with checkpoint.as_directory() as d:
        state.store.put_dir(adapter_files(Path(d)), f"iter_{t}/adapter")
    out = {"pairs": len(pairs), "pairs_trained": trained, "pairs_heldout": heldout,
           "next_adapter": f"iter_{t}/adapter",
           "dpo_loss": dpo.get("round_loss", np.nan),  # means over the round's steps (prefer.round_means)
           "dpo_reward_accuracy": dpo.get("round_reward_accuracy", np.nan),
           "dpo_reward_margin": dpo.get("round_reward_margin", np.nan),
           # the held-out pairs after the round (NaN without any): does the preference generalise?
           "dpo_heldout_loss": dpo.get("heldout_loss", np.nan),
           "dpo_heldout_reward_margin": dpo.get("heldout_reward_margin", np.nan),
           "dpo_heldout_reward_accuracy": dpo.get("heldout_reward_accuracy", np.nan),
           "dpo_step_seconds": dpo.get("step_seconds", np.nan), "dpo_setup_seconds": dpo.get("setup_seconds", np.nan),
           "dpo_bf16": bool(dpo.get("bf16", False)), "dpo_peak_rss_mb": dpo.get("peak_rss_mb", np.nan)}
    _say(f"iter {t} prefer (DPO): {trained} pairs trained, loss {out['dpo_loss']:.4f}, reward margin "
         f"{out['dpo_reward_margin']:.3f}; {heldout} held out, margin {out['dpo_heldout_reward_margin']:.3f} "
         f"-> adapter iter_{t}/adapter")
    return out


def _save_evaluator(store: RunStore, evaluator: DeepSAD, path: str) -> None:
    with evaluator.checkpoint.as_directory() as d:
        store.put_dir(d, path)


def save_iteration(state: LoopState, t: int, anomalies: pa.Table, new: pa.Table, rejects: pa.Table,
                   evaluator: DeepSAD, row: dict, cfg: KKAConfig) -> None:
    """Everything of iteration t, then the state file last: a kill before it leaves t to be redone. `new` (N_t,
    judged) is kept whole: in rep mode most of it does not enter A_t, and every rendered image stays inspectable."""
    store = state.store
    store.write_table(f"iter_{t}/anomalies.parquet", anomalies)
    in_set = pc.is_in(new.column("anomaly_id"), value_set=anomalies.column("anomaly_id"))
    store.write_table(f"iter_{t}/generated.parquet", new.append_column("in_set", in_set))
    store.write_table(f"iter_{t}/rejects.parquet", rejects)
    _save_evaluator(store, evaluator, f"iter_{t}/evaluator")
    store.write_json(f"iter_{t}/metrics.json", row)
    new_first = anomalies.take(pa.array(np.argsort(-np.asarray(anomalies.column("iteration")), kind="stable")))
    store.write_bytes(f"iter_{t}/grid.png", anomaly_grid(new_first, cfg.grid_size, f"A_{t}: newest first"))
    hard_new = new.filter(new.column("hard"))  # the paper's Figure 3: what the model wrote that theta_C confused
    store.write_bytes(f"iter_{t}/hard_grid.png", anomaly_grid(hard_new, cfg.grid_size,
                                                              f"N_{t}: {len(hard_new)} hard of {len(new)}"))
    state.rows = [r for r in state.rows if r["iteration"] < t] + [row]
    state.completed = t
    store.write_state(STATE, {"completed": t, "rows": state.rows, "baseline": state.baseline})


MIN_RATE_SECONDS = 0.05  # a stage shorter than this shows no rate: rows over microseconds is timer noise
COST_STAGES = ("select", "generate", "clean", "render", "split", "update", "evaluate", "test", "dpo")


def stage_cost_table(rows: list[dict], baseline: dict) -> list[str]:
    """Seconds, rows/s and peak RSS per stage and iteration (select: once, before the iterations), with the CPU
    and the precision each component ran at."""
    from kka_ray.precision import cpu_capability
    from kka_ray.records import machine

    def cell(r: dict, key: str, fmt: str) -> str:
        v = r.get(key)
        if key.endswith("_rows_per_s") and r.get(key.replace("_rows_per_s", "_seconds"), 0) < MIN_RATE_SECONDS:
            return ""
        return "" if v is None or v != v else format(v, fmt)

    head = ["| iteration | " + " | ".join(COST_STAGES) + " |", "| --- |" + " ---: |" * len(COST_STAGES)]
    body = []
    for name, r in [("select", baseline)] + [(str(r["iteration"]), r) for r in rows]:
        for what, suffix, fmt in (("s", "seconds", ".1f"), ("rows/s", "rows_per_s", ".1f")):
            body.append(f"| {name} {what} | " + " | ".join(cell(r, f"{s}_{suffix}", fmt) for s in COST_STAGES)
                        + " |")
        body.append(f"| {name} peak MB | " + " | ".join(cell(r, f"peak_rss_mb_{s}", ".0f") for s in COST_STAGES)
                    + " |")
    last = rows[-1] if rows else {}
    bf16 = f"theta_C bf16 {last.get('evaluator_bf16')}" + (f", DPO bf16 {rows[0].get('dpo_bf16')}"
                                                           if rows and "dpo_bf16" in rows[0] else "")
    return ["Stage costs (seconds: busy time; rows/s: rows handled per busy second; peak MB: the stage's "
            f"process). Machine: {machine()}; CPU capability {cpu_capability()}; {bf16}.", "", *head, *body]


def final_report(cfg: KKAConfig, state: LoopState) -> str:
    rows, base = state.rows, state.baseline["auroc"]
    store = state.store
    store.write_bytes("auroc.png", iteration_curves([r["iteration"] for r in rows], [r["auroc"] for r in rows],
                                                    [r["hard_share"] for r in rows], base,
                                                    f"{cfg.name}: {cfg.update.mode} mode"))
    lines = [f"# KKA run {cfg.name}", "",
             f"{cfg.dataset.name}, normal: {', '.join(map(str, cfg.normal_classes))}, seed {cfg.seed}, "
             f"mode {cfg.update.mode}, T = {cfg.update.iterations}. Hard = a new anomaly that the previous "
             "iteration's theta_C places inside the validation normals' boundary.", "",
             "| model | A_t | new | hard of new | hard share | test AUROC % | DPO pairs | DPO reward acc. | seconds |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
             f"| SAD, no anomalies | 0 | | | | {base:.1f} | | | {state.baseline['seconds']:.0f} |"]
    for r in rows:
        dpo = f"{r['pairs']} | {r.get('dpo_reward_accuracy', float('nan')):.2f}" if "pairs" in r else " | "
        lines.append(f"| SAD + KKA({r['iteration']}) | {r['anomalies']} | {r['new']} | {r['hard']} | "
                     f"{r['hard_share']:.3f} | {r['auroc']:.1f} | {dpo} | {r['seconds']:.0f} |")
    lines += ["", *stage_cost_table(rows, state.baseline), "",
              f"Outputs in {store.location}: config.yaml, representatives.parquet, iter_<t>/ (anomalies.parquet, "
              "generated.parquet, rejects.parquet, pairs.parquet, evaluator/, adapter/, metrics.json, grid.png), "
              "auroc.png, report.md"]
    return "\n".join(lines) + "\n"
