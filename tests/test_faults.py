"""The fault-injection tools on hand-made runs and a throwaway process (the real kills: jobs/bench_faults.py)."""

import json
import subprocess
import sys

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from kka_ray.faults import Killer, compare_runs


def _run(root, rows, auroc=80.0, timing=0.0):
    for t in (0, 1):
        (root / f"iter_{t}").mkdir(parents=True)
        table = pa.table({"iteration": [t] * len(rows), "row_id": [r for r, _ in rows], "line": [0] * len(rows),
                          "sentence": [s for _, s in rows], "batch_start": [timing] * len(rows)})
        for name in ("generated", "anomalies", "rejects"):
            pq.write_table(table, root / f"iter_{t}" / f"{name}.parquet")
    (root / "state.json").write_text(json.dumps({"baseline": {"auroc": 70.0}, "rows": [{"auroc": auroc}] * 2}))
    return root


def test_compare_runs_counts_lost_and_duplicated_rows_and_ignores_timings(tmp_path):
    ref = _run(tmp_path / "ref", [(0, "a hat"), (1, "a cat"), (2, "a car")])
    same = _run(tmp_path / "same", [(2, "a car"), (0, "a hat"), (1, "a cat")], timing=5.0)  # other order, timings
    c = compare_runs(ref, same, 1)
    assert (c.rows_lost, c.rows_duplicated, c.identical) == (0, 0, True)
    broken = _run(tmp_path / "broken", [(0, "a hat"), (0, "a hat"), (2, "a car")], auroc=81.0)
    c = compare_runs(ref, broken, 1)
    assert c.rows_lost == 6 and c.rows_duplicated == 6 and not c.identical  # 3 tables x 2 iterations
    assert any("AUROC" in d for d in c.differences)


def test_killer_kills_the_marked_process_once_it_has_lived_long_enough():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "kka-fault-test-marker"])
    created = psutil.Process(proc.pid).create_time()
    killer = Killer(("kka-fault-test-marker",), after_s=0.5, deadline_s=20)
    killer.start()
    killer.join()
    assert killer.kill.pid == proc.pid and killer.kill.at - created >= 0.5
    assert proc.wait(timeout=10) == -9
