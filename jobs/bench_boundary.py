"""Hard share of N_0 at several boundary quantiles over finished KKA runs -> docs/results/<name>.json (+ .md).

Entry point for `python jobs/bench_boundary.py` and `ray job submit -- python jobs/bench_boundary.py`; the code and
its options: kka_ray/commands/bench_boundary.py (`--help`).
"""

from kka_ray.commands.bench_boundary import main

if __name__ == "__main__":
    main()
