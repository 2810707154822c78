"""KKA (Algorithm 1) as a Ray driver job: select, then T+1 rounds of generate, render, update, evaluate, split
and DPO; test AUROC of SAD + KKA(t) per round. Runs on a cluster, a local `ray start --head`, or no cluster.

    python jobs/kka_loop.py --config configs/kka/demo.yaml [--set update.iterations=3]
    python jobs/kka_loop.py --resume runs/kka-demo          # continue after the last completed iteration
    python jobs/kka_loop.py --config configs/kka/demo.yaml --continue   # resume if unfinished, else a new folder
    ray job submit --working-dir . -- python jobs/kka_loop.py --config configs/kka/demo.yaml
"""

import sys
import time

from kka_ray.cli import parse_config, parser
from kka_ray.config import ConfigError
from kka_ray.loop import KKAConfig, continue_or_next, load_run_config, run_loop


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0], KKAConfig)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue this run folder (its saved config is used)")
    p.add_argument("--stop-after", type=int, metavar="T", help="stop after iteration T's checkpoint (resume later)")
    p.add_argument("--continue", dest="cont", action="store_true", help="with --config: resume <name> if it holds "
                   "an unfinished run of this config, else start the first free <name>-2, <name>-3, ... (never "
                   "deletes a run)")
    p.add_argument("--take-over", action="store_true", help="take the run folder's lock from a driver that is gone")
    args = p.parse_args(argv)
    start = time.time()
    try:
        if args.resume:
            if args.config:
                sys.exit("error: --resume uses the run's saved config; drop --config")
            overrides = args.overrides + ([f"ray.address={args.address}"] if args.address else [])
            cfg = load_run_config(args.resume, overrides)
            parent, _, base = args.resume.rstrip("/").rpartition("/")
            cfg = cfg.model_copy(update={"run_dir": parent or ".", "name": base})
            resume = True
        else:
            cfg = parse_config(KKAConfig, args)
            cfg, resume = continue_or_next(cfg) if args.cont else (cfg, False)
        state = run_loop(cfg, resume=resume, stop_after=args.stop_after, take_over=args.take_over)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    state.store.write_json("summary.json", {"wall_minutes": (time.time() - start) / 60, "rows": state.rows,
                                            "baseline": state.baseline})
    print(f"done in {(time.time() - start) / 60:.1f} min; outputs in {state.store.location}")
