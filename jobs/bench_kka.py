"""KKA loop benchmark over normal classes and seeds -> docs/results/<name>.json (+ .md, .png).

Entry point for `python jobs/bench_kka.py` and `ray job submit -- python jobs/bench_kka.py`; the code and its
options: kka_ray/commands/bench_kka.py (`--help`).
"""

from kka_ray.commands.bench_kka import main

if __name__ == "__main__":
    main()
