"""The paper's Fig. 4 from the loop benchmark's finished runs -> docs/results/<name>.json (+ .md, .png): hard-only,

Entry point for `python jobs/bench_fig4.py` and `ray job submit -- python jobs/bench_fig4.py`; the code and its
options: kka_ray/commands/bench_fig4.py (`--help`).
"""

from kka_ray.commands.bench_fig4 import main

if __name__ == "__main__":
    main()
