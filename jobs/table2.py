"""The paper's Table II on this project's detectors, with and without KKA, over every class of a dataset.

Entry point for `python jobs/table2.py` and `ray job submit -- python jobs/table2.py`; the code and its options:
kka_ray/commands/table2.py (`--help`).
"""

from kka_ray.commands.table2 import main

if __name__ == "__main__":
    main()
