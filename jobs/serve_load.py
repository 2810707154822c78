"""Load check of the anomaly service: start it, send a bounded number of requests from N concurrent clients on

Entry point for `python jobs/serve_load.py` and `ray job submit -- python jobs/serve_load.py`; the code and its
options: kka_ray/commands/serve_load.py (`--help`).
"""

from kka_ray.commands.serve_load import main

if __name__ == "__main__":
    main()
