"""KKA's controls over normal classes and seeds -> docs/results/<name>.json (+ .md, .png): SAD without anomalies,

Entry point for `python jobs/bench_controls.py` and `ray job submit -- python jobs/bench_controls.py`; the code and
its options: kka_ray/commands/bench_controls.py (`--help`).
"""

from kka_ray.commands.bench_controls import main

if __name__ == "__main__":
    main()
