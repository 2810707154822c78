"""Measure an offline prior: judge accuracy on renders of class prompts of the grey dataset it saw and of the one it

Entry point for `python jobs/bench_prior.py` and `ray job submit -- python jobs/bench_prior.py`; the code and its
options: kka_ray/commands/bench_prior.py (`--help`).
"""

from kka_ray.commands.bench_prior import main

if __name__ == "__main__":
    main()
