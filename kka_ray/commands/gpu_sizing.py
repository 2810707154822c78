"""Estimate the wall time and GPU-hours of a KKA run on 1, 8 and 64 GPUs from per-stage throughputs, on paper.
Writes docs/results/<name>.json (+ .md); the model is in docs/scaling.md. Runs nothing on a GPU.

    python jobs/gpu_sizing.py --config configs/sizing/cifar100_paper.yaml [--set throughput.render.per_s=4]
"""

import json
from pathlib import Path

from kka_ray.cli import parse_config, parser
from kka_ray.records import git_commit, invoked_command, write_record
from kka_ray.sizing import CpuFigure, Estimate, SizingConfig, estimate


def cpu_value(records_dir: str, fig: CpuFigure) -> float | None:
    """The CPU figure as the record holds it now; None when the record or metric is missing."""
    path = Path(records_dir) / f"{fig.record}.json"
    metrics = json.loads(path.read_text())["metrics"] if path.is_file() else {}
    value = metrics.get(fig.metric)
    if value is None or (fig.per and not metrics.get(fig.per)):
        return None
    return value / metrics[fig.per] if fig.per else value


def markdown(cfg: SizingConfig, estimates: list[Estimate], cpu: dict[str, float | None], command: str,
             commit: str | None) -> str:
    stages = cfg.workload.stages
    rows = [f"| {e.gpus} | {e.wall_hours:.2f} | {e.gpu_hours:.1f} | {e.busy_gpu_hours:.1f} | "
            f"{e.busy_gpu_hours / e.gpu_hours:.0%} | "
            + ", ".join(f"{n} x {t} task(s) x {g} GPU(s)" for n, t, g in e.waves)
            + f" | {e.bound} ({e.stage_hours[e.bound] / e.wall_hours:.0%}) |" for e in estimates]
    per_stage = [f"| {s} | " + " | ".join(f"{e.stage_hours[s]:.2f}" for e in estimates) + " |" for s in stages]

    def cpu_cell(name: str) -> str:
        fig = cfg.cpu.get(name)
        if fig is None:
            return "no record"
        value = cpu.get(name)
        shown = "record missing" if value is None else f"{value:.4g} {fig.unit}"
        return f"{shown} (`{fig.record}`: {fig.note})"

    inputs = [f"| {s} | {st.per_run:,.0f} {st.unit} | {st.runs} | {st.parallel}, <= {st.max_gpus} | "
              f"{cfg.throughput[s].per_s:.4g} {st.unit}/s | {cfg.throughput[s].load_s:.0f} | {cfg.throughput[s].kind} "
              f"| {cpu_cell(s)} |" for s, st in stages.items()]
    sources = [f"- **{s}**: work: {st.source}. Per-GPU figure ({cfg.throughput[s].kind}): {cfg.throughput[s].source}."
               for s, st in stages.items()]
    return "\n".join([
        "# GPU sizing on paper: KKA, CIFAR-100 protocol", "",
        f"Command: `{command}` at commit `{commit or 'unknown'}`. "
        f"{cfg.workload.tasks} tasks; reference GPU: {cfg.reference_gpu}; DDP efficiency {cfg.ddp_efficiency}. "
        "Nothing here ran on a GPU: the per-GPU figures are public benchmarks, derivations or labelled assumptions "
        "(sources below), the CPU column is read from this repo's records. Model: `docs/scaling.md`.", "",
        "| GPUs | wall h | GPU-h held | GPU-h busy | utilisation | waves | bound by (share of wall) |",
        "|---|---|---|---|---|---|---|", *rows, "",
        "Wall-clock hours per stage (they sum to the wall time):", "",
        "| stage | " + " | ".join(f"{e.gpus} GPU(s)" for e in estimates) + " |",
        "|---|" + "---|" * len(estimates), *per_stage, "",
        "## Inputs", "",
        "| stage | work per run | runs per task | parallel, GPUs | per-GPU throughput | load s per run | kind | "
        "CPU figure (this repo, 2 cores) |",
        "|---|---|---|---|---|---|---|---|", *inputs, "",
        "## Sources", "", *sources, "",
        "## Caveats", "", *[f"- {n}" for n in cfg.notes], ""])


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0], SizingConfig)
    p.add_argument("--out", default="docs/results", help="where the record is written")
    args = p.parse_args(argv)
    cfg = parse_config(SizingConfig, args)
    estimates = [estimate(cfg.workload, cfg.throughput, n, cfg.ddp_efficiency) for n in cfg.gpus]
    cpu = {name: cpu_value(cfg.records_dir, fig) for name, fig in cfg.cpu.items()}
    metrics: dict[str, float] = {}
    for e in estimates:
        metrics |= {f"hours_{e.gpus}gpu": e.wall_hours, f"gpu_hours_{e.gpus}gpu": e.gpu_hours,
                    f"busy_gpu_hours_{e.gpus}gpu": e.busy_gpu_hours,
                    **{f"{s}_hours_{e.gpus}gpu": h for s, h in e.stage_hours.items()}}
    command, commit = invoked_command(), git_commit()
    write_record(cfg.name, metrics, markdown(cfg, estimates, cpu, command, commit), args.out, command=command,
                 extra={"config": cfg.model_dump(mode="json"), "cpu_figures": cpu,
                        "estimates": [e.model_dump(mode="json") for e in estimates]})
    for e in estimates:
        print(f"{e.gpus:>3} GPUs: {e.wall_hours:6.2f} h wall, {e.gpu_hours:6.1f} GPU-h, bound by {e.bound}")
