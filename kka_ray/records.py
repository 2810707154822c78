"""Benchmark records: `docs/results/<name>.json` (machine-readable) with a Markdown page beside it."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path


def machine() -> str:
    """One line naming the hardware the numbers were measured on, with the CPU's vector ISA and native bf16
    extensions (VMs of one model name differ in them, and bf16 speed turns on them)."""
    from kka_ray.precision import cpu_capability

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    except OSError:
        mem = float("nan")
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return (f"{os.cpu_count()} cores ({cpu}, {cpu_capability()}), {mem:.0f} GiB RAM, {gpu}, "
            f"{platform.system()} {platform.release()}")


def git_commit() -> str | None:
    """HEAD, with "+modified" when tracked files other than the records and archives differ from it (a job that
    writes them as it goes would otherwise mark its own later records); None outside a git checkout (a `ray job
    submit` working dir has no .git)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)docs/results",
                    ":(exclude)archive")
        return git("rev-parse", "HEAD") + ("+modified" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def made_here() -> dict[str, str | None]:
    """The code this process loaded and the machine it runs on: who made a fit or run finished here."""
    return {"commit": git_commit(), "machine": machine()}


def invoked_command() -> str:
    """The exact command that is running, as a person would type it."""
    return shlex.join(["python", *sys.argv])


def metric_key(text: str) -> str:
    """A class name as a metric-key fragment: 'ankle boot' -> 'ankle_boot', 't-shirt' -> 't_shirt'."""
    return re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_")


def write_record(
    name: str,
    metrics: dict[str, float],
    markdown: str,
    out_dir: str | Path | list[str | Path],
    command: str | None = None,
    extra: dict | None = None,
) -> Path:
    """Write <out_dir>/<name>.json and <name>.md in each given folder (the first one's JSON path is returned),
    and log the record once to MLflow (kka_ray.tracking.track_record); metrics must be a flat mapping of finite
    numbers."""
    bad = {k: v for k, v in metrics.items() if not isinstance(v, int | float) or not math.isfinite(v)}
    if bad:
        raise ValueError(f"record {name}: metrics must be finite numbers, got {bad}")
    record = {
        "name": name,
        "command": command or invoked_command(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "commit": git_commit(),
        "metrics": metrics,
        **(extra or {}),
    }
    try:
        text = json.dumps(record, indent=2, allow_nan=False)  # NaN is not JSON: missing values must be None
    except ValueError as e:
        raise ValueError(f"record {name}: {e} (outside metrics; use None for a missing value)") from None
    outs = [Path(o) for o in (out_dir if isinstance(out_dir, list) else [out_dir])]
    for out in outs:
        out.mkdir(parents=True, exist_ok=True)
        for path, content in ((out / f"{name}.json", text + "\n"), (out / f"{name}.md", markdown)):
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(content)
            tmp.replace(path)  # a reader never sees half a record
    from kka_ray.tracking import track_record

    track_record(record, outs[0])
    return outs[0] / f"{name}.json"
