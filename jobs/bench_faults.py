"""Faults injected into real KKA runs and the service, and the bad-input catalogue -> docs/results/faults.json.

Entry point for `python jobs/bench_faults.py` and `ray job submit -- python jobs/bench_faults.py`; the code and its
options: kka_ray/commands/bench_faults.py (`--help`).
"""

from kka_ray.commands.bench_faults import main

if __name__ == "__main__":
    main()
