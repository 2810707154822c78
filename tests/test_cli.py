"""The `kka` command and the export formats, on the session's tiny run."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from tiny_loop import after_iteration, stable

from kka_ray.commands import COMMANDS, main
from kka_ray.config import ConfigError
from kka_ray.loop import load_run_config, run_loop


def test_help_lists_every_command(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for words in COMMANDS:
        assert " ".join(words) in out


def test_a_command_help_lists_its_config_fields(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["bench", "table2", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "usage: kka bench table2" in out
    assert "figures.detector (str | None; default 'simplenet'): Record name of the detector" in out
    assert "detectors (dict[str, detector config]; (required))" in out


def test_kka_resume_continues_a_stopped_run_with_only_its_own_progress(tiny_run, tmp_path):
    """The console script on a fresh local Ray (no dashboard) continues a run stopped after iteration 1: the
    loop's lines and the fits' progress, none of Ray's INFO lines, no PlacementGroupCleaner traceback (Ray 2.60's,
    without a dashboard), and iteration 1's adapter and theta_C carry on to the uninterrupted run's tables. (A new
    run starts in the session's tiny run; the stop itself, --stop-after under `ray job submit`, is in
    test_job_submit.py.)"""
    _, state = tiny_run
    run = after_iteration(state, 1, tmp_path / "stopped")
    with pytest.raises(ConfigError, match="--resume"):
        run_loop(load_run_config(str(run), []))  # the folder holds a run: refuse to start over it
    env = {k: v for k, v in os.environ.items() if k not in ("KKA_LOG_LEVEL", "KKA_QUIET")} | {"RAY_ADDRESS": ""}
    out = subprocess.run([Path(sys.executable).parent / "kka", "resume", str(run)],
                         capture_output=True, text=True, env=env, timeout=600)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert "iter 2 evaluate: SAD + KKA(2) test AUROC" in log and "deepsad train epoch 1/1" in log
    assert "done in" in log  # the run ends with its report
    for noise in ("PlacementGroupCleaner", "Failed to query Ray Train Controller", "Reporting training result",
                  "Requesting resources"):
        assert noise not in log, noise
    for name in ("anomalies", "generated", "rejects"):
        a = stable(pq.read_table(f"{state.store.path('')}/iter_2/{name}.parquet"))
        assert a.equals(stable(pq.read_table(run / f"iter_2/{name}.parquet"))), name
    resumed = json.loads((run / "state.json").read_text())
    assert resumed["completed"] == 2 and [r["auroc"] for r in resumed["rows"]] == [r["auroc"] for r in state.rows]
    assert "SAD + KKA(2)" in (run / "report.md").read_text()


def test_unknown_command_is_named():
    with pytest.raises(SystemExit, match="kka: unknown command 'bench nothing'"):
        main(["bench", "nothing"])


def test_resume_and_report_a_finished_run(tiny_run, tmp_path, capsys):
    cfg, state = tiny_run
    run = tmp_path / "tiny"
    shutil.copytree(f"{cfg.run_dir}/{cfg.name}", run)
    main(["resume", str(run)])  # nothing left to do: it reports and stops
    assert "done in" in capsys.readouterr().out
    main(["report", str(run)])
    assert "AUROC" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["anomalib", "image_folder"])
def test_export_formats(tiny_run, tmp_path, fmt):
    from kka_ray.data import build_dataset
    from kka_ray.store import RunStore

    cfg, _ = tiny_run
    run = f"{cfg.run_dir}/{cfg.name}"
    a_2 = RunStore(run).read_table("iter_2/anomalies.parquet")
    dest = tmp_path / fmt
    main(["export", run, str(dest), "--format", fmt])
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["iteration"] == 2 and manifest["counts"]["generated"] == len(a_2)
    if fmt == "anomalib":  # anomalib's Folder(root=dest, normal_dir="normal", abnormal_dir="abnormal")
        assert len(list((dest / "normal").glob("*.png"))) == manifest["counts"]["normal"]
        assert len(list((dest / "abnormal").glob("*.png"))) == len(a_2)
    else:  # this project's own loader reads it back, captions included
        spec = manifest["dataset_config"]
        data = build_dataset(spec["name"], spec["root"], spec["image_size"], spec["options"])
        train = data.load("train")
        generated = train.class_names.index("generated_anomaly")
        assert (train.labels == generated).sum() == len(a_2)
        with open(dest / "captions.csv", newline="") as f:
            captions = {row["caption"] for row in csv.DictReader(f)}
        assert captions == set(a_2.column("sentence").to_pylist())
        first = np.flatnonzero(train.labels == generated)[0]
        assert np.array_equal(train.images[first], a_2.column("image").combine_chunks().to_numpy_ndarray()[0])
        assert len(data.load("test")) == manifest["counts"]["test"]
    with pytest.raises(FileExistsError, match="already exists"):
        main(["export", run, str(dest), "--format", fmt])


def test_export_errors_name_the_problem(tiny_run, tmp_path):
    cfg, _ = tiny_run
    run = f"{cfg.run_dir}/{cfg.name}"
    with pytest.raises(ValueError, match="iteration 7 is not finished"):
        main(["export", run, str(tmp_path / "x"), "--format", "anomalib", "--iteration", "7"])
    with pytest.raises(FileNotFoundError, match="not a KKA run folder"):
        main(["export", str(tmp_path), str(tmp_path / "y"), "--format", "anomalib"])
