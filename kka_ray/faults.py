"""Fault injection (issue 15): kill one process of a real KKA run while it works, then check that the run
finished with the tables of an undisturbed run of the same seed and config.

Processes are found by Ray's process titles (`ray::RayTrainWorker`, `ray::MapWorker(MapBatches(HFGenerator))`,
...) and killed with SIGKILL, as a preempted node or the kernel's OOM killer would. Nothing in the loop knows
about this module: what survives does so by the loop's own means (Ray Data actor restarts with per-row seeds,
Ray Train restarts from restart checkpoints, the run folder's resume)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from kka_ray.paths import REPO_ROOT

# Columns that measure time: they differ from run to run and are left out of comparisons.
VOLATILE = ("generation_seconds", "batch_start", "batch_end", "render_seconds")
TABLES = ("generated.parquet", "anomalies.parquet", "rejects.parquet")


@dataclass(frozen=True)
class Fault:
    name: str
    what: str  # for the record's page
    markers: tuple[str, ...] = ()  # substrings of the target process's command line (none: the driver itself)
    after_s: float = 0.0  # the target must have lived this long (past its start-up, into its work)
    driver_line: str = ""  # for the driver: kill when its output shows this


FAULTS = (
    Fault("lm_actor", "a language-model actor, mid-batch", ("HFGenerator",), after_s=25),
    # A render actor loads its pipeline for its first seconds (a kill at 8 s hit its __init__); the stream runs
    # from about 20 s to 50 s of its life on the demo's config.
    Fault("render_actor", "a render actor, mid-stream", ("DiffusersRenderer",), after_s=30),
    # The demo's first Deep SAD worker lives about 35 s (autoencoder 17 s, then Deep SAD); at 40 s the kill hit
    # the first DPO worker instead.
    Fault("train_worker", "a Ray Train worker, mid-fit (the first Deep SAD fit)", ("RayTrainWorker",), after_s=15),
    Fault("driver", "the driver, mid-iteration 1 (then --resume)", driver_line="iter 1 generate+render"),
    Fault("worker_node", "the worker node of a two-node cluster on loopback, while it runs a stage",
          ("RayTrainWorker", "MapWorker"), after_s=10),
)


@dataclass
class Kill:
    pid: int | None = None
    title: str = ""
    at: float | None = None  # time.time() of the kill


def processes(markers: tuple[str, ...], within: set[int] | None = None):
    """Live processes whose command line holds one of `markers` (optionally only among the pids `within`)."""
    import psutil

    me = os.getpid()
    for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
        cmd = " ".join(proc.info["cmdline"] or ())
        if proc.info["pid"] != me and any(m in cmd for m in markers) and (within is None or proc.info["pid"] in within):
            yield proc, cmd


def descendants(pid: int) -> set[int]:
    import psutil

    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


class Killer(threading.Thread):
    """SIGKILLs the first process matching `markers` (among `scope()`'s pids, if given) that has lived
    `after_s` seconds, once `when()` (if given) holds; gives up at `deadline_s`. `.kill` says what was killed."""

    def __init__(self, markers: tuple[str, ...], after_s: float, deadline_s: float, scope=None, action=None,
                 when=None):
        super().__init__(daemon=True)
        self.markers, self.after_s, self.deadline_s, self.scope = markers, after_s, deadline_s, scope
        self.action = action  # instead of a plain kill (e.g. removing a node); gets the process
        self.when = when  # a sign of progress (a file written), steadier than a process's age on a slow CPU
        self.kill, self.stop = Kill(), threading.Event()

    def run(self) -> None:
        end = time.time() + self.deadline_s
        while not self.stop.is_set() and time.time() < end:
            if self.when is not None and not self.when():
                self.stop.wait(0.2)
                continue
            within = self.scope() if self.scope else None
            for proc, cmd in processes(self.markers, within):
                if time.time() - proc.info["create_time"] >= self.after_s:
                    self.kill = Kill(proc.info["pid"], cmd[:120], time.time())
                    (self.action or (lambda p: p.send_signal(signal.SIGKILL)))(proc)
                    return
            self.stop.wait(0.2)


def loop_command(config: str, name: str, run_dir: str, overrides: list[str], resume: bool = False,
                 address: str | None = None) -> list[str]:
    job = str(REPO_ROOT / "jobs" / "kka_loop.py")
    if resume:
        cmd = [sys.executable, job, "--resume", f"{run_dir}/{name}", "--take-over"]
    else:
        cmd = [sys.executable, job, "--config", config, "--set", f"name={name}", "--set", f"run_dir={run_dir}"]
        for o in overrides:
            cmd += ["--set", o]
    return cmd + (["--address", address] if address else [])


def run_logged(cmd: list[str], log: Path, kill_on: str = "") -> tuple[int, float | None]:
    """Run a command with its output appended to `log`; with `kill_on`, SIGKILL it when a line holds that text.
    Returns (exit code, time.time() of the kill or None)."""
    killed_at = None
    with open(log, "a") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT,
                                start_new_session=True)
        for line in proc.stdout:
            out.write(line)
            if kill_on and killed_at is None and kill_on in line:
                killed_at = time.time()
                os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        return proc.wait(), killed_at


@dataclass
class Comparison:
    rows_lost: int = 0
    rows_duplicated: int = 0
    identical: bool = True
    differences: list[str] = field(default_factory=list)


def _key_columns(table: pa.Table) -> list[str]:
    return [c for c in ("iteration", "row_id", "line") if c in table.column_names] or ["row_id", "sentence"]


def _stable(table: pa.Table) -> pa.Table:
    keep = [c for c in table.column_names if c not in VOLATILE]
    return table.select(keep).sort_by([(c, "ascending") for c in _key_columns(table)])


def compare_runs(reference: Path, run: Path, iterations: int) -> Comparison:
    """Every table of every iteration against the reference's: rows (by iteration, row_id, line) lost or
    duplicated, and whether the tables are equal once timings are left out; the AUROCs too."""
    out = Comparison()
    for t in range(iterations + 1):
        for name in TABLES:
            ref, got = pq.read_table(reference / f"iter_{t}" / name), pq.read_table(run / f"iter_{t}" / name)
            keys = _key_columns(ref)
            ref_keys = set(zip(*(ref.column(k).to_pylist() for k in keys), strict=True))
            got_keys = list(zip(*(got.column(k).to_pylist() for k in keys), strict=True))
            out.rows_lost += len(ref_keys - set(got_keys))
            out.rows_duplicated += len(got_keys) - len(set(got_keys))
            if not _stable(ref).equals(_stable(got)):
                out.identical = False
                out.differences.append(f"iter_{t}/{name}")
    ref_auroc = _aurocs(reference)
    if ref_auroc != _aurocs(run):
        out.identical = False
        out.differences.append(f"AUROC {ref_auroc} vs {_aurocs(run)}")
    return out


def _aurocs(run: Path) -> list[float]:
    import json

    state = json.loads((run / "state.json").read_text())
    return [round(state["baseline"]["auroc"], 6)] + [round(r["auroc"], 6) for r in state["rows"]]
