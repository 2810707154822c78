"""kNN's head variant, sum against one-sided, judged without the test split (record knn-combine-<dataset>).

Entry point for `python jobs/knn_combine.py` and `ray job submit -- python jobs/knn_combine.py`; the code and its
options: kka_ray/commands/knn_combine.py (`--help`).
"""

from kka_ray.commands.knn_combine import main

if __name__ == "__main__":
    main()
