"""Run the anomaly service (Ray Serve, FastAPI ingress) until interrupted.

Entry point for `python jobs/serve.py` and `ray job submit -- python jobs/serve.py`; the code and its options:
kka_ray/commands/serve.py (`--help`).
"""

from kka_ray.commands.serve import main

if __name__ == "__main__":
    main()
