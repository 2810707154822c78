"""How long and how fast a DPO round must train to move the language model: rounds on one finished iteration's

Entry point for `python jobs/bench_dpo_sizing.py` and `ray job submit -- python jobs/bench_dpo_sizing.py`; the code
and its options: kka_ray/commands/bench_dpo_sizing.py (`--help`).
"""

from kka_ray.commands.bench_dpo_sizing import main

if __name__ == "__main__":
    main()
