"""Benchmark the knowledge stage: kept descriptions, diversity, and the Ray pool's throughput against a bare loop.

Entry point for `python jobs/bench_knowledge.py` and `ray job submit -- python jobs/bench_knowledge.py`; the code
and its options: kka_ray/commands/bench_knowledge.py (`--help`).
"""

from kka_ray.commands.bench_knowledge import main

if __name__ == "__main__":
    main()
