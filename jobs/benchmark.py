"""Benchmark a detector over every normal class of a dataset (several seeds) and write a result record.

Entry point for `python jobs/benchmark.py` and `ray job submit -- python jobs/benchmark.py`; the code and its
options: kka_ray/commands/benchmark.py (`--help`).
"""

from kka_ray.commands.benchmark import main

if __name__ == "__main__":
    main()
