"""Measurements behind `jobs/bench_perf.py`: each stage of the loop on this machine, through Ray and against a
bare loop over the same model and data, and each precision where the choice is made by measurement.

Every function returns a flat dict of numbers; the job caches each section and writes the record.
"""

from __future__ import annotations

import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import torch
from pydantic import Field

from kka_ray.config import DeepSADConfig, Strict
from kka_ray.ddp import worker_threads
from kka_ray.detectors.deepsad import DeepSAD
from kka_ray.detectors.deepsad.detector import training_arrays
from kka_ray.detectors.deepsad.networks import net_spec
from kka_ray.detectors.deepsad.train import fit_deep_sad, resolved
from kka_ray.loop import KKAConfig
from kka_ray.precision import cpu_native_bf16, resolve_bf16
from kka_ray.stages.generate import GenerateConfig, NormalContext, generate_descriptions, messages_for
from kka_ray.stages.prefer import run_dpo
from kka_ray.stages.render import anomaly_stream, collect

SECTIONS = ("deepsad", "lm", "dpo", "stream", "demo", "tests")


class PerfConfig(Strict):
    loop: str = Field("configs/kka/demo.yaml", description="The KKA config whose stages are measured")
    benchmark: str = Field("configs/benchmark/fmnist_deepsad.yaml", description="Detector benchmark whose "
                           "(longer) Deep SAD fit is also measured through Ray Train and bare")
    sections: list[str] = Field(default_factory=lambda: list(SECTIONS), description=f"Any of {SECTIONS}")
    timing_epochs: int = Field(3, ge=2, description="Deep SAD epochs per phase for the per-epoch times")
    deepsad_rounds: int = Field(3, ge=1, description="Rounds of the whole Deep SAD fits (bare, Ray Train worker, "
                                "local mode, in turn); each figure is the median over rounds")
    dpo_steps: int = Field(8, ge=2, description="DPO steps per measured variant")
    stream_repeats: int = Field(3, ge=1, description="Runs of the streaming chain and of the staged one (median)")
    demo_command: str = Field("make demo", description="What the demo section times")
    test_command: str = Field("make test", description="What the tests section times")
    record: str = Field("perf-cpu", description="Record name in docs/results/ (perf-cpu-<kind> on another CPU kind)")
    cache_dir: str = Field("runs/perf", description="Finished sections are kept here; a rerun skips them")


def _timed(fn, *args, **kwargs) -> tuple[object, float]:
    start = time.time()
    out = fn(*args, **kwargs)
    return out, time.time() - start


def _bare_epochs(data: dict, runs: dict, threads: int, seed: int) -> dict[str, float]:
    """Seconds per epoch of each phase for each short run, named (spec, config), in a bare loop."""
    torch.set_num_threads(threads)
    out: dict[str, float] = {}
    for name, (spec, config) in runs.items():
        m = fit_deep_sad(data, spec, config, seed).metrics
        out[f"deepsad_ae_epoch_s_{name}"], out[f"deepsad_epoch_s_{name}"] = m["ae_epoch_seconds"], m["epoch_seconds"]
    return out


def _bare_fit(data: dict, spec, config: DeepSADConfig, threads: int, seed: int) -> float:
    """Seconds of one whole fit in a bare loop (the process's start and imports not counted)."""
    torch.set_num_threads(threads)
    return _timed(fit_deep_sad, data, spec, config, seed)[1]


def in_fresh_process(fn, *args):
    """fn(*args) in a new Python process without Ray, started as a Ray worker is. (The driver ran the same Deep
    SAD loop 30% slower, 6.2 against 4.8 s per autoencoder epoch on a 2-core EPYC: its malloc trim threshold was
    0, see runtime.apply_malloc_settings.)"""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def deepsad(task, cfg: KKAConfig, benchmark: DeepSADConfig, epochs: int, rounds: int,
            workdir: Path) -> dict[str, float]:
    """Seconds per epoch of each phase in fp32 and bf16 (bare loop, the evaluator's batch and threads), and whole
    fits through Ray Train (on a worker, and in its local mode in this process) against the same fit in a bare
    loop in a fresh process: the loop's theta_C, and the detector benchmark's longer fit (Ray Train's start-up is
    a fixed cost per fit). The three run in turn, `rounds` times, and each figure is the median over rounds: the
    host's speed drifts within an hour (the demo's generate stage took 188 s, then 118 s, on the same code in
    one evening), and three fits measured one after the other would charge that drift to whichever ran last. The first
    round's Ray fit is kept too (the loop's first fit pays for starting Ray's worker processes), and the spread:
    the largest slowest / fastest ratio over any one kind's rounds."""
    ev = cfg.evaluator
    data, (size, _, channels) = training_arrays(task.train_normal, None), task.train_normal.shape
    out = in_fresh_process(
        _bare_epochs, data,
        {name: (net_spec(ev.net, channels, size, ev.rep_dim),
                ev.model_copy(update={"bf16": bf16, "epochs": epochs, "ae_epochs": epochs}))
         for name, bf16 in (("fp32", False), ("bf16", True))}, worker_threads(ev), cfg.seed)
    for suffix, config in {"": ev, "_benchmark": benchmark}.items():  # the demo's theta_C, the benchmark's fit
        spec, bare_cfg = net_spec(config.net, channels, size, config.rep_dim), resolved(config, "cpu")
        took: dict[str, list[float]] = {"bare": [], "ray": [], "local": []}
        for _ in range(rounds):
            took["bare"].append(in_fresh_process(_bare_fit, data, spec, bare_cfg, worker_threads(config), cfg.seed))
            # "ray": on Ray Train workers (at least one); "local": Ray Train's local mode, in this process
            for mode, workers in (("ray", max(1, config.num_workers)), ("local", 0)):
                det = DeepSAD(config.model_copy(update={"num_workers": workers}))
                took[mode].append(_timed(det.fit, task.train_normal, None, seed=cfg.seed, workdir=workdir)[1])
        bare = out[f"deepsad_fit_s_bare{suffix}"] = statistics.median(took["bare"])
        for mode in ("ray", "local"):
            median = out[f"deepsad_fit_s_{mode}{suffix}"] = statistics.median(took[mode])
            out[f"deepsad_{mode}_vs_bare_ratio{suffix}"] = bare / median
            out[f"deepsad_{mode}_fixed_s{suffix}"] = median - bare
        out[f"deepsad_fit_s_ray_first{suffix}"] = took["ray"][0]
        out[f"deepsad_fit_spread{suffix}"] = max(max(t) / min(t) for t in took.values())
    out["deepsad_rounds"] = rounds
    return out


def _bare_tokens_per_s(reps, ctx: NormalContext, gen: GenerateConfig, **lm) -> float:
    from kka_ray.knowledge import bare_throughput

    g = gen.model_copy(update={"lm": gen.lm.model_copy(update=lm)})
    return bare_throughput(reps, ctx, g, 0)["bare_tokens_per_s"]


def _pool_tokens_per_s(reps, ctx: NormalContext, gen: GenerateConfig) -> float:
    """The LM stage alone on its Ray Data actor pool, timed like the bare loop (first batch start to last end)."""
    from kka_ray.llm import build_backend
    from kka_ray.stages.generate import prompt_dataset, prompt_table

    ds = build_backend(gen.lm).apply(prompt_dataset(prompt_table(reps, ctx, gen, 0), gen))
    rows = [b for b in ds.iter_batches(batch_size=None, batch_format="numpy")]
    tokens = sum(int(b["num_generated_tokens"].sum()) for b in rows)
    span = max(b["batch_end"].max() for b in rows) - min(b["batch_start"].min() for b in rows)
    return tokens / span


def language_model(reps, ctx: NormalContext, gen: GenerateConfig) -> dict[str, float]:
    """Tokens/s on the loop's prompts at its batch size: the Ray pool against the bare loop at the chosen settings
    (and the pool with the cleaner behind it), fp32 / bf16 with and without the shared prefix (bare loop), GGUF
    load vs the dequantized copy, and the nucleus filter against transformers' per decode step."""
    from transformers import TopPLogitsWarper

    from kka_ray.llm.hf import load_causal_lm, top_p_filter

    out: dict[str, float] = {}
    # Both sides start cold (a fresh actor, and this process before any other generation): oneDNN builds its
    # kernels on the first batches, which is no cost of Ray's.
    out["lm_bare_tokens_per_s"] = _bare_tokens_per_s(reps, ctx, gen)
    out["lm_tokens_per_s"] = _pool_tokens_per_s(reps, ctx, gen)
    out["lm_ray_vs_bare_ratio"] = out["lm_tokens_per_s"] / out["lm_bare_tokens_per_s"]
    with_cleaner = generate_descriptions(reps, ctx, gen).stats  # the knowledge stage: the pool and the cleaner
    out["lm_tokens_per_s_with_cleaner"] = with_cleaner["tokens_per_s"]
    out["lm_completions"], out["lm_kept_lines"] = with_cleaner["completions"], with_cleaner["kept"]
    with tempfile.TemporaryDirectory() as cache:  # a cold cache: the first load unpacks the GGUF file
        os.environ["KKA_CACHE"] = cache
        _, out["lm_load_s_gguf"] = _timed(load_causal_lm, gen.lm)
        _, out["lm_load_s_cached"] = _timed(load_causal_lm, gen.lm)
        del os.environ["KKA_CACHE"]
    # No bf16 rounds on a CPU that emulates bf16: `auto` never picks it there, and they take many times as long.
    for dtype in ("float32", "bfloat16") if cpu_native_bf16() else ("float32",):
        for share in (False, True):
            key = f"lm_tokens_per_s_{'fp32' if dtype == 'float32' else 'bf16'}_{'shared' if share else 'plain'}"
            out[key] = _bare_tokens_per_s(reps, ctx, gen, dtype=dtype, share_prefix=share)
    steps = _decode_step_scores(reps, ctx, gen)
    out["top_p_decode_steps"] = float(len(steps))
    for key, nucleus in (("top_p_ms_transformers", lambda x: TopPLogitsWarper(gen.lm.top_p)(None, x)),
                         ("top_p_ms_ours", lambda x: top_p_filter(x, gen.lm.top_p))):
        per_batch = min(sum(_timed(nucleus, x)[1] for x in steps) for _ in range(3))
        out[key] = 1000 * per_batch / len(steps)
    return out


def _decode_step_scores(reps, ctx: NormalContext, gen: GenerateConfig) -> list[torch.Tensor]:
    """What the nucleus filter sees at every decode step of one batch of the loop's prompts, generated as the
    LM stage does: peaked steps (a word's continuation) and flat ones (a new word) in their real proportion."""
    from transformers import LogitsProcessor

    from kka_ray.llm.hf import HFGenerator
    from kka_ray.stages.generate import prompt_table

    class Recorder(LogitsProcessor):
        def __init__(self):
            self.steps = []

        def __call__(self, input_ids, scores):
            self.steps.append(scores.float() / gen.lm.temperature)
            return scores

    part = prompt_table(reps, ctx, gen, 0).slice(0, gen.lm.batch_size)
    recorder = Recorder()
    HFGenerator(gen.lm.model_dump()).sample(part.column("messages").to_pylist(), part.column("seed").to_pylist(),
                                            (recorder,))
    return recorder.steps


def dpo_pairs(reps, ctx: NormalContext, gen: GenerateConfig, sentences: list[str], n: int) -> pa.Table:
    """n pairs in the loop's format over real generated sentences (which is chosen does not matter for time)."""
    rows = []
    for i in range(n):
        rep = reps[i % len(reps)]
        rows.append({"cluster": rep.cluster, "prompt": messages_for(gen, ctx.domain, rep.description),
                     "chosen_id": f"c{i}", "chosen": sentences[(2 * i) % len(sentences)],
                     "rejected_id": f"r{i}", "rejected": sentences[(2 * i + 1) % len(sentences)]})
    return pa.Table.from_pylist(rows)


def dpo(pairs: pa.Table, cfg: KKAConfig, steps: int, workdir: Path) -> dict[str, float]:
    """One short DPO round per variant through Ray Train: the loop's settings, the other precision (not on a CPU
    that emulates bf16, where `auto` never picks it), the reference precompute toggled, and the prefix sharing
    toggled; step time, set-up time (model load, reference pass), the whole round, and the last loss. A one-step
    round runs first, untimed: the first round of a process paid about 20 s more (cold files, first Ray Train
    start), which had decided earlier comparisons by their order."""
    out: dict[str, float] = {}
    chosen = resolve_bf16("dpo", cfg.prefer.bf16, "cpu")
    other = "_fp32" if chosen else "_bf16"
    toggle = "_no_precompute" if cfg.prefer.precompute_ref else "_precompute"
    unshared = "_no_share_prefix" if cfg.prefer.share_prefix else "_share_prefix"
    variants = {"": {}, other: {"bf16": not chosen}, toggle: {"precompute_ref": not cfg.prefer.precompute_ref},
                unshared: {"share_prefix": not cfg.prefer.share_prefix}}
    if not cpu_native_bf16():
        del variants[other]
    warm = cfg.prefer.model_copy(update={"steps": 1})
    run_dpo(pairs.slice(0, warm.batch_size), cfg.generate.lm, warm, seed=cfg.seed, workdir=workdir)
    for suffix, update in variants.items():
        prefer = cfg.prefer.model_copy(update={"steps": steps, **update})
        (_, m), seconds = _timed(run_dpo, pairs.slice(0, steps * prefer.batch_size), cfg.generate.lm, prefer,
                                 seed=cfg.seed, workdir=workdir)
        out[f"dpo_step_s{suffix}"], out[f"dpo_setup_s{suffix}"] = m["step_seconds"], m["setup_seconds"]
        out[f"dpo_round_s{suffix}"], out[f"dpo_loss{suffix}"] = seconds, m["round_loss"]
        out[f"dpo_bf16{suffix}"] = m["bf16"]
        out[f"dpo_peak_rss_mb{suffix}"] = m["peak_rss_mb"]  # peak_rss_mb_dpo: the loop's, from the demo
    out["dpo_steps"] = float(steps)
    out["dpo_step_s" + ("_bf16" if chosen else "_fp32")] = out["dpo_step_s"]
    out["dpo_loss" + ("_bf16" if chosen else "_fp32")] = out["dpo_loss"]
    return out


def stream_vs_staged(reps, ctx: NormalContext, cfg: KKAConfig, shape: tuple[int, int],
                     repeats: int) -> dict[str, float]:
    """Descriptions rendered per second (wall) by the streaming chain, with the machine's CPUs split between the
    LM and render pools, and by the two stages one after the other, each with all the CPUs; medians."""
    import ray

    from kka_ray.render import build_renderer

    cpus = ray.cluster_resources().get("CPU", 2)
    half = {"lm": cfg.generate.lm.model_copy(update={"cpus_per_actor": cpus / 2})}
    gen_stream, render_stream = cfg.generate.model_copy(update=half), cfg.render.model_copy(
        update={"cpus_per_actor": cpus / 2})
    gen_staged = cfg.generate.model_copy(update={"lm": cfg.generate.lm.model_copy(update={"cpus_per_actor": cpus})})
    render_staged = cfg.render.model_copy(update={"cpus_per_actor": cpus})
    streamed, staged = [], []
    for _ in range(repeats):
        start = time.time()
        result = collect(*anomaly_stream(reps, ctx, gen_stream, render_stream, *shape), cleaned=True)
        streamed.append(len(result.anomalies) / (time.time() - start))
        start = time.time()
        lines = generate_descriptions(reps, ctx, gen_staged).descriptions
        backend = build_renderer(render_staged)
        images = collect(backend.apply(ray.data.from_arrow(lines), *shape), backend.model_id())
        staged.append(len(images.anomalies) / (time.time() - start))
    return {"stream_images_per_s": statistics.median(streamed), "staged_images_per_s": statistics.median(staged),
            "stream_vs_staged_ratio": statistics.median(streamed) / statistics.median(staged),
            "stream_repeats": float(repeats), "stream_cpus": float(cpus)}


STAGE_SECONDS = {f"{s}_seconds" for s in ("select", "generate", "clean", "render", "split", "update", "evaluate",
                                           "test", "dpo")}


def run_written_since(run_dir: Path, name: str, since: float) -> Path:
    """The run folder the demo command just wrote: `make demo` continues `name` or, once that one is finished,
    starts `name`-2, -3, ...; timing an old folder's costs would be wrong."""
    states = [s for s in run_dir.glob(f"{name}*/state.json") if s.stat().st_mtime >= since
              and re.fullmatch(rf"{re.escape(name)}(-\d+)?", s.parent.name)]
    if not states:
        raise FileNotFoundError(f"{run_dir}: no {name} run folder written by the demo command")
    return max(states, key=lambda s: s.stat().st_mtime).parent


def run_folder_costs(run: Path) -> dict[str, float]:
    """The demo's per-stage costs from its state.json: seconds summed over iterations, peak RSS maxed."""
    import json

    state = json.loads((run / "state.json").read_text())
    rows = [state["baseline"], *state["rows"]]
    out: dict[str, float] = {}
    for r in rows:
        for k, v in r.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and v == v:
                if k.startswith("peak_rss_mb_"):
                    out[k] = max(out.get(k, 0.0), float(v))
                elif k in STAGE_SECONDS:
                    out[f"demo_{k}"] = out.get(f"demo_{k}", 0.0) + float(v)
    out["demo_auroc_final"] = float(state["rows"][-1]["auroc"])
    return out
