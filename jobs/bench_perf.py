"""Stage costs and speed on this machine: Deep SAD, the language model, DPO, streaming vs staged, the demo and

Entry point for `python jobs/bench_perf.py` and `ray job submit -- python jobs/bench_perf.py`; the code and its
options: kka_ray/commands/bench_perf.py (`--help`).
"""

from kka_ray.commands.bench_perf import main

if __name__ == "__main__":
    main()
