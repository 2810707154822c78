"""Fit time of one detector with 1 and 2 Ray Train workers (record scaling-<detector>).

Entry point for `python jobs/bench_scaling.py` and `ray job submit -- python jobs/bench_scaling.py`; the code and
its options: kka_ray/commands/bench_scaling.py (`--help`).
"""

from kka_ray.commands.bench_scaling import main

if __name__ == "__main__":
    main()
