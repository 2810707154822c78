"""KKA (Algorithm 1) as a Ray driver job: select, then T+1 rounds of generate, render, update, evaluate, split
and DPO; test AUROC of SAD + KKA(t) per round. Runs on a cluster, a local `ray start --head`, or no cluster.

    python jobs/kka_loop.py --config configs/kka/demo.yaml [--set update.iterations=3]
    python jobs/kka_loop.py --resume runs/kka-demo          # continue after the last completed iteration
    ray job submit --working-dir . -- python jobs/kka_loop.py --config configs/kka/demo.yaml
"""

import sys
import time

from kka_ray.cli import parse_config, parser
from kka_ray.config import ConfigError
from kka_ray.loop import KKAConfig, load_run_config, run_loop


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--resume", metavar="RUN_DIR", help="continue this run folder (its saved config is used)")
    p.add_argument("--stop-after", type=int, metavar="T", help="stop after iteration T's checkpoint (resume later)")
    args = p.parse_args()
    start = time.time()
    try:
        if args.resume:
            if args.config:
                sys.exit("error: --resume uses the run's saved config; drop --config")
            overrides = args.overrides + ([f"ray.address={args.address}"] if args.address else [])
            cfg = load_run_config(args.resume, overrides)
            parent, _, base = args.resume.rstrip("/").rpartition("/")
            cfg = cfg.model_copy(update={"run_dir": parent or ".", "name": base})
        else:
            cfg = parse_config(KKAConfig, args)
        state = run_loop(cfg, resume=bool(args.resume), stop_after=args.stop_after)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    state.store.write_json("summary.json", {"wall_minutes": (time.time() - start) / 60, "rows": state.rows,
                                            "baseline": state.baseline})
    print(f"done in {(time.time() - start) / 60:.1f} min; outputs in {state.store.location}")


if __name__ == "__main__":
    main()
