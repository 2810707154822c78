"""KKA (Algorithm 1) as a Ray driver job: select, then T+1 rounds of generate, render, update, evaluate, split

Entry point for `python jobs/kka_loop.py` and `ray job submit -- python jobs/kka_loop.py`; the code and its options:
kka_ray/commands/kka_loop.py (`--help`).
"""

from kka_ray.commands.kka_loop import main

if __name__ == "__main__":
    main()
