"""Estimate the wall time and GPU-hours of a KKA run on 1, 8 and 64 GPUs from per-stage throughputs, on paper.

Entry point for `python jobs/gpu_sizing.py` and `ray job submit -- python jobs/gpu_sizing.py`; the code and its
options: kka_ray/commands/gpu_sizing.py (`--help`).
"""

from kka_ray.commands.gpu_sizing import main

if __name__ == "__main__":
    main()
