"""Stage costs and speed on this machine: Deep SAD, the language model, DPO, streaming vs staged, the demo and
the test suite, each through Ray and against a bare loop where that applies, with the precision choices.

    python jobs/bench_perf.py --config configs/perf/cpu.yaml [--set sections=[lm,dpo]]
Each finished section is cached in runs/perf/<section>.json with its commit (a rerun skips it; delete the file
to measure again); the record docs/results/<record>.json is written from all cached sections and keeps each
section's metrics, so that a later session's run restores the sections it does not measure again.
"""

import json
import subprocess
import tempfile
import time
from pathlib import Path

from kka_ray import perf
from kka_ray.benchmark import BenchmarkConfig
from kka_ray.cli import parse_config, parser
from kka_ray.config import load_config
from kka_ray.loop import KKAConfig, load_task
from kka_ray.precision import describe
from kka_ray.records import git_commit, invoked_command, write_record
from kka_ray.stages.generate import generate_descriptions, normal_context
from kka_ray.stages.select import run_select
from kka_ray.store import RunStore
from kka_ray.summary import short


def timed_command(command: str) -> dict[str, float]:
    start = time.time()
    done = subprocess.run(command, shell=True)
    if done.returncode != 0:
        raise SystemExit(f"`{command}` failed with exit code {done.returncode}; nothing recorded for it")
    return {"minutes": (time.time() - start) / 60}


class Measure:
    """Builds what the sections share (Ray, the task, the representatives) only when a section needs it."""

    def __init__(self, cfg: KKAConfig):
        self.cfg, self._task, self._reps = cfg, None, None
        self.workdir = Path(tempfile.mkdtemp(prefix="kka-perf-"))

    def task(self):
        if self._task is None:
            from kka_ray.runtime import init_ray

            init_ray(self.cfg.ray)
            self._task = load_task(self.cfg)
            self._reps = run_select(self._task.train_normal, self.cfg.select)
        return self._task

    def section(self, name: str, pc: perf.PerfConfig) -> dict[str, float]:
        cfg = self.cfg
        if name == "deepsad":
            bench = load_config(BenchmarkConfig, pc.benchmark).detector
            return perf.deepsad(self.task(), cfg, bench, pc.timing_epochs, pc.deepsad_rounds, self.workdir)
        if name in ("lm", "dpo", "stream"):
            task = self.task()
            ctx = normal_context(task, cfg.generate)
            if name == "lm":
                return perf.language_model(self._reps, ctx, cfg.generate)
            if name == "stream":
                size, _, channels = task.train_normal.shape
                return perf.stream_vs_staged(self._reps, ctx, cfg, (size, channels), pc.stream_repeats)
            lines = generate_descriptions(self._reps, ctx, cfg.generate).descriptions
            pairs = perf.dpo_pairs(self._reps, ctx, cfg.generate, lines.column("sentence").to_pylist(),
                                   pc.dpo_steps * cfg.prefer.batch_size)
            return perf.dpo(pairs, cfg, pc.dpo_steps, self.workdir)
        if name == "demo":
            start = time.time()
            out = {"demo_minutes": timed_command(pc.demo_command)["minutes"]}
            return out | perf.run_folder_costs(perf.run_written_since(Path(cfg.run_dir), cfg.name, start))
        if name == "tests":
            return {"test_minutes": timed_command(pc.test_command)["minutes"]}
        raise SystemExit(f"sections: unknown section {name!r} (one of {', '.join(perf.SECTIONS)})")


def markdown(metrics: dict, sections: dict, command: str, loop: str, dpo_steps: int) -> str:
    """The record's page; a section not measured shows as such (its blocks left out)."""
    m = metrics

    def row(label: str, key: str, fmt: str = ".2f") -> str:
        return f"| {label} | {format(m[key], fmt) if key in m else 'not measured'} |"

    lines = [
        "# Speed and stage costs on one CPU machine", "",
        f"Command: `{command}`; stages configured as `{loop}`. Machine and CPU in the JSON record; each section's "
        "commit below.", "",
        "| section | commit | date |", "| --- | --- | --- |",
        *[f"| {k} | {short(v['commit'])} | {v['date']} |" for k, v in sections.items()], "",
        "## Targets", "", "| metric | value |", "| --- | ---: |",
        row("Deep SAD epoch, fp32 (s)", "deepsad_epoch_s_fp32"),
        row("Deep SAD epoch, bf16 (s)", "deepsad_epoch_s_bf16"),
        row("Deep SAD autoencoder epoch, fp32 (s)", "deepsad_ae_epoch_s_fp32"),
        row("Deep SAD autoencoder epoch, bf16 (s)", "deepsad_ae_epoch_s_bf16"),
        row("Deep SAD fit, Ray / bare (demo fit)", "deepsad_ray_vs_bare_ratio", ".3f"),
        row("Deep SAD fit, Ray / bare (the detector benchmark's 40 + 80 epoch fit)",
            "deepsad_ray_vs_bare_ratio_benchmark", ".3f"),
        row("Deep SAD fit rounds (bare, Ray, local mode in turn; figures are medians)", "deepsad_rounds", ".0f"),
        row("Deep SAD first Ray fit of the run, demo fit (s; Ray's worker processes start)", "deepsad_fit_s_ray_first"),
        row("Ray Train's extra seconds per fit: demo fit", "deepsad_ray_fixed_s"),
        row("Ray Train's extra seconds per fit: benchmark fit", "deepsad_ray_fixed_s_benchmark"),
        row("Deep SAD fit, Ray Train local mode / bare (demo fit)", "deepsad_local_vs_bare_ratio", ".3f"),
        row("Deep SAD fit, Ray Train local mode / bare (benchmark fit)", "deepsad_local_vs_bare_ratio_benchmark",
            ".3f"),
        row("LM tokens/s, Ray pool, batch 32 (target >= 110)", "lm_tokens_per_s", ".1f"),
        row("LM Ray / bare (target >= 0.9)", "lm_ray_vs_bare_ratio", ".3f"),
        row("DPO step (s, target <= 7)", "dpo_step_s"),
        row("demo (minutes, target <= 10)", "demo_minutes"), row("tests (minutes, target <= 10)", "test_minutes"),
        row("streaming / staged, images/s (target >= 0.95, median)", "stream_vs_staged_ratio", ".3f"), "",
        *(lm_block(m) if "lm_tokens_per_s_fp32_plain" in m else []),
        *(dpo_block(m, int(m.get("dpo_steps", dpo_steps))) if "dpo_round_s" in m else []),
        "## All metrics", "", "| metric | value |", "| --- | ---: |",
        *[f"| {k} | {v:.4g} |" for k, v in sorted(m.items())], "",
    ]
    return "\n".join(lines)


def lm_block(m: dict) -> list[str]:
    return [
        "## Before and after, same prompts (bare loop, tokens/s; no bf16 rows on a CPU that emulates bf16)", "",
        "| precision | whole prompt per row (before) | shared prefix once (after) |", "| --- | ---: | ---: |",
        *[f"| {p} | {m[f'lm_tokens_per_s_{p}_plain']:.1f} | {m[f'lm_tokens_per_s_{p}_shared']:.1f} |"
          for p in ("fp32", "bf16") if f"lm_tokens_per_s_{p}_plain" in m], "",
        f"Model load: GGUF unpacked at every start (before) {m['lm_load_s_gguf']:.1f} s, the dequantized copy "
        f"(after) {m['lm_load_s_cached']:.2f} s. Nucleus filter, mean per decode step over the "
        f"{m['top_p_decode_steps']:.0f} steps of one batch: transformers {m['top_p_ms_transformers']:.1f} ms, ours "
        f"{m['top_p_ms_ours']:.1f} ms.", ""]


def dpo_block(m: dict, steps: int) -> list[str]:
    return [
        f"DPO, one {steps}-step round through Ray Train per variant (the loop's settings, then each change), after "
        "an untimed one-step round; no bf16 round on a CPU that emulates bf16 (`auto` never picks it there):", "",
        "| variant | s per step | set-up s (load, reference pass) | round s | last loss | bf16 | peak RSS MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *[f"| {k.removeprefix('dpo_round_s').lstrip('_') or 'loop settings'} | "
          + " | ".join(f"{m.get(key + k.removeprefix('dpo_round_s'), float('nan')):.{d}f}"
                       for key, d in (("dpo_step_s", 2), ("dpo_setup_s", 1), ("dpo_round_s", 1), ("dpo_loss", 4),
                                      ("dpo_bf16", 0), ("dpo_peak_rss_mb", 0))) + " |"
          for k in sorted(m) if k.startswith("dpo_round_s")], ""]


def restore_sections(record: Path, store: RunStore, measured: list[str]) -> None:
    """Sections the committed record holds (each with its commit, date and metrics), this run does not measure and
    the cache lacks go back into the cache: a record is filled over several sessions, and the cache does not outlive
    the machine. A record made on another kind of CPU is refused rather than mixed with this one's figures."""
    if not record.exists():
        return
    saved = json.loads(record.read_text())
    here = describe()["cpu_capability"]
    if saved.get("cpu_capability", here) != here:
        raise SystemExit(f"{record}: measured on a CPU with {saved['cpu_capability']}, this one has {here}; "
                         "write this CPU's figures to their own record: --set record=perf-cpu-<kind>")
    for name, section in saved.get("sections", {}).items():
        if "metrics" in section and name not in measured and not store.exists(f"{name}.json"):
            store.write_json(f"{name}.json", section)
            print(f"[perf] {name}: restored from {record} (commit {short(section['commit'])})", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0], perf.PerfConfig)
    args = p.parse_args(argv)
    pc = parse_config(perf.PerfConfig, args)
    loop = load_config(KKAConfig, pc.loop)
    cache = Path(pc.cache_dir)
    store = RunStore(cache)
    restore_sections(Path("docs/results") / f"{pc.record}.json", store, pc.sections)
    measure = Measure(loop)
    for name in pc.sections:
        if store.exists(f"{name}.json"):
            print(f"[perf] {name}: cached in {store.path(f'{name}.json')}")
            continue
        print(f"[perf] measuring {name}", flush=True)
        metrics = measure.section(name, pc)
        store.write_json(f"{name}.json", {"commit": git_commit(), "metrics": metrics,
                                          "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        print(f"[perf] {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in metrics.items()), flush=True)
    sections = {p.stem: json.loads(p.read_text()) for p in sorted(cache.glob("*.json"))}
    metrics = {k: float(v) for s in sections.values() for k, v in s["metrics"].items()}
    metrics |= {k: float(v) for k, v in describe().items() if isinstance(v, bool)}
    command = invoked_command()
    write_record(pc.record, metrics, markdown(metrics, sections, command, pc.loop, pc.dpo_steps), "docs/results",
                 command=command, extra={"cpu_capability": describe()["cpu_capability"], "sections": sections,
                                         "config": pc.model_dump(mode="json")})
    print(f"[perf] record docs/results/{pc.record}.json ({', '.join(sections)})")
