"""Hard share of N_0 at several boundary quantiles over finished KKA runs -> docs/results/<name>.json (+ .md).

    python jobs/bench_boundary.py runs/bench/kka-controls-fmnist/*-seed0 [--name boundary-fmnist]
Scores only validation normals and generated images with each run's saved theta_C without anomalies.
"""

import argparse
from pathlib import Path

from kka_ray.boundary_bench import run_boundary_bench
from kka_ray.records import invoked_command


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="KKA run folders (each with baseline/evaluator and iter_0)")
    p.add_argument("--name", default="boundary-fmnist")
    p.add_argument("--out", default="docs/results")
    args = p.parse_args(argv)
    m = run_boundary_bench(args.runs, args.name, Path(args.out), invoked_command())
    print({k: round(v, 3) for k, v in m.items() if k.startswith("hard_share_") and "ci95" not in k})
