"""How long and how fast a DPO round must train to move the language model: rounds on one finished iteration's
preference pairs at several (steps, learning rate) settings -> docs/results/<name>.json (+ .md).

    python jobs/bench_dpo_sizing.py runs/kka-demo [--iteration 0] [--grid 16:5e-5,16:2e-4,16:5e-4,8:1e-3:2]
        [--set prefer.precompute_ref=true]
A grid item is steps:lr or steps:lr:pairs-per-step; `--set prefer.<field>=<value>` changes the run's DPO config
for every item.
Every round starts from the model that wrote the pairs and draws its training pairs as the loop would for its
step count (the held-out ones never), then trl evaluates the held-out pairs: a margin above zero there means
the preference generalises to completions the round never saw. The test split is never read.
"""

import argparse
import tempfile
import time
from pathlib import Path

from kka_ray.config import ConfigError, apply_overrides
from kka_ray.loop import load_run_config
from kka_ray.records import invoked_command, metric_key, write_record
from kka_ray.runtime import init_ray
from kka_ray.stages.prefer import mark_trained, run_dpo
from kka_ray.store import RunStore


def setting_key(steps: int, lr: float, batch: int | None = None) -> str:
    return f"s{steps}_lr{metric_key(f'{lr:g}')}" + (f"_b{batch}" if batch is not None else "")


def grid_items(grid: str) -> list[tuple[int, float, int | None]]:
    """`steps:lr[:batch],...` -> (steps, lr, batch or None for the run's own)."""
    items = []
    for item in grid.split(","):
        parts = item.strip().split(":")
        try:
            if len(parts) not in (2, 3):
                raise ValueError
            items.append((int(parts[0]), float(parts[1]), int(parts[2]) if len(parts) == 3 else None))
        except ValueError:
            raise ConfigError(f"--grid: {item!r} is not steps:lr or steps:lr:batch (e.g. 16:5e-4 or 8:1e-3:2)") \
                from None
    return items


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a KKA run folder with iter_<t>/pairs.parquet")
    p.add_argument("--iteration", type=int, default=0)
    p.add_argument("--grid", default="16:5e-5,16:2e-4,16:5e-4,32:2e-4", help="steps:lr[:batch],...")
    p.add_argument("--set", action="append", default=[], metavar="prefer.FIELD=VALUE",
                   help="a DPO setting for every grid item (repeatable)")
    p.add_argument("--name", default="dpo-sizing-fmnist")
    p.add_argument("--out", default="docs/results")
    args = p.parse_args(argv)
    cfg = load_run_config(args.run, [])
    if bad := [item for item in args.set if not item.startswith("prefer.")]:
        raise ConfigError(f"--set {bad[0]!r}: only prefer.* settings apply to a DPO round")
    base = type(cfg.prefer).model_validate(apply_overrides({"prefer": cfg.prefer.model_dump()}, args.set)["prefer"])
    grid = grid_items(args.grid)
    store = RunStore(args.run)
    state = store.read_state("state.json")
    t = args.iteration
    adapter = state["rows"][t - 1]["next_adapter"] if t > 0 else ""  # the model that wrote iteration t
    lm = cfg.generate.lm.model_copy(update={"adapter": store.uri(adapter) if adapter else None})
    pairs = store.read_table(f"iter_{t}/pairs.parquet")
    pairs = pairs.drop_columns([c for c in ("trained",) if c in pairs.column_names])
    init_ray(cfg.ray)
    metrics, rows = {}, []
    for steps, lr, batch in grid:
        prefer = base.model_copy(update={"steps": steps, "learning_rate": lr,
                                         "batch_size": batch or base.batch_size})
        start = time.time()
        with tempfile.TemporaryDirectory(prefix="kka-dpo-sizing-") as work:
            _, m = run_dpo(mark_trained(pairs, prefer, cfg.seed + t), lm, prefer, seed=cfg.seed + t,
                           workdir=Path(work))
        key = setting_key(steps, lr, batch)
        row = {"steps": steps, "lr": lr, "batch": prefer.batch_size, "seconds": time.time() - start,
               **{k: m[k] for k in ("round_loss", "round_reward_margin", "round_reward_accuracy", "heldout_loss",
                                    "heldout_reward_margin", "heldout_reward_accuracy", "step_seconds") if k in m}}
        rows.append(row)
        metrics.update({f"{k}_{key}": float(v) for k, v in row.items() if k not in ("steps", "lr", "batch")})
        print(f"[dpo-sizing] {row}", flush=True)
    heldout = sum(pairs.column("heldout").to_pylist())
    trained = len(pairs) - heldout
    metrics.update({"pairs_trained_available": trained, "pairs_heldout": heldout,
                    "precompute_ref": float(base.precompute_ref)})
    lines = [f"# {args.name}", "", f"`{invoked_command()}`", "",
             f"DPO rounds on iteration {t}'s pairs of `{args.run}` ({cfg.dataset.name}, normal class "
             f"{cfg.normal_classes}, seed {cfg.seed}): {trained} training pairs available, {heldout} held out, "
             f"beta {base.beta}, LoRA r {base.lora_r}, reference log-probabilities "
             f"{'precomputed' if base.precompute_ref else 'computed in every step'}"
             f"{' (' + ', '.join(args.set) + ')' if args.set else ''}. "
             "Round figures are means over the round's steps; held-out figures are trl's evaluation after the "
             "round on pairs it never trained on.", "",
             "| steps | lr | pairs per step | round loss | round margin | round accuracy | held-out loss | "
             "held-out margin | held-out accuracy | s per step | round s |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['steps']} | {r['lr']:g} | {r['batch']} | " + " | ".join(
            f"{r.get(k, float('nan')):.3f}" for k in ("round_loss", "round_reward_margin", "round_reward_accuracy",
                                                      "heldout_loss", "heldout_reward_margin",
                                                      "heldout_reward_accuracy", "step_seconds"))
            + f" | {r['seconds']:.0f} |")
    write_record(args.name, metrics, "\n".join(lines) + "\n", args.out, extra={"run": args.run, "iteration": t,
                                                                               "rows": rows})
