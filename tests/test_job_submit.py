"""The product's cluster path: `ray start --head`, `ray job submit -- python jobs/kka_loop.py --resume RUN
--stop-after 1` (a time-limited job slot's share of a run), outputs checked, head stopped. The console script's
resume is in test_cli.py. The head runs in the foreground (--block) so stopping it leaves other Ray instances
(the test session's own) alone."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tiny_loop import after_iteration, stable

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def head(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "RAY_ADDRESS": ""}
    port, dash = free_port(), free_port()
    # The session's own Ray holds the default agent ports (52365, ...); a second node's job agent would fail
    # to bind them and every submission would answer "No available agent".
    agents = [f"--{flag}={free_port()}" for flag in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                      "runtime-env-agent-port", "metrics-export-port")]
    proc = subprocess.Popen(
        [Path(sys.executable).parent / "ray", "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", *agents,
         "--object-store-memory=300000000", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 90
    while time.time() < deadline:  # the job server answers once the dashboard is up
        ok = subprocess.run([Path(sys.executable).parent / "ray", "job", "list", "--address", address], env=env,
                            capture_output=True).returncode == 0
        if ok:
            break
        time.sleep(2)
    else:
        stop(proc)
        pytest.fail("ray head did not come up within 90 s")
    yield address, env
    stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """The head and everything it started (its own process group): `ray start --block` alone, terminated, shut
    its processes down one after the other for about 30 s; all of them at once, then a kill for what is left, 5 s."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever ignored the request
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def test_ray_job_submit_runs_the_loop(head, tiny_run, tmp_path):
    """A job slot's share of a run: the job continues the tiny run from iteration 0's checkpoint, runs
    iteration 1 (with iteration 0's adapter) and its DPO round, and stops after it as asked. The tiny run fitted
    in Ray Train's local mode; here theta_C and DPO run on Ray Train workers, and the tables come out the same."""
    address, env = head
    _, state = tiny_run
    run = after_iteration(state, 0, tmp_path / "submitted", evaluator={"num_workers": 1}, prefer={"num_workers": 1})
    # the loop needs neither the benchmarks' archive, the docs nor the shipped priors (the tiny run renders with a
    # tiny pipeline): 55 of the repository's 56 MB stay behind
    runtime_env = json.dumps({"working_dir": str(REPO), "excludes": ["archive", "docs", "kka_ray/render/priors"],
                              "env_vars": {"KKA_PROGRESS": "0"}})
    for _ in range(12):  # the job server answers before the node's job agent is up; it says so
        out = subprocess.run(
            [Path(sys.executable).parent / "ray", "job", "submit", "--address", address, "--runtime-env-json",
             runtime_env, "--", "python", "jobs/kka_loop.py", "--resume", str(run), "--stop-after", "1"],
            env=env, capture_output=True, text=True, timeout=900)
        if "No available agent" not in out.stderr:
            break
        time.sleep(5)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "succeeded" in out.stdout
    saved = json.loads((run / "state.json").read_text())
    assert saved["completed"] == 1 and (run / "iter_1" / "adapter" / "adapter_config.json").is_file()
    assert not (run / "iter_2").exists() and not (run / "report.md").exists()  # the report waits for the end
    assert json.loads((run / "summary.json").read_text())["rows"] == saved["rows"]
    a = stable(pq.read_table(f"{state.store.path('')}/iter_1/anomalies.parquet"))
    assert a.equals(stable(pq.read_table(run / "iter_1" / "anomalies.parquet")))  # the same iteration 1
    # the job's progress reached the submitter's terminal, ending with how to continue
    assert "iter 1 evaluate: SAD + KKA(1) test AUROC" in out.stdout
    assert f"stopped after iteration 1 as asked; continue with --resume {run}" in out.stdout


def test_without_an_address_a_fresh_local_ray_starts_despite_a_stale_cluster_file():
    """Ray's own default joins the cluster /tmp/ray/ray_current_cluster names; a head that was stopped (or
    someone else's) must not break a run that asked for a local Ray of its own size."""
    tmp = Path(tempfile.mkdtemp(prefix="kr"))  # short: Ray's socket paths must stay under 108 bytes
    (tmp / "ray").mkdir()
    (tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9")  # nothing listens there
    code = ("from kka_ray.config import RayConfig; from kka_ray.runtime import init_ray; "
            "ray = init_ray(RayConfig(num_cpus=1, object_store_mb=100)); print(ray.cluster_resources()['CPU'])")
    env = {**os.environ, "RAY_TMPDIR": str(tmp), "RAY_ADDRESS": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180,
                         cwd=REPO)
    shutil.rmtree(tmp, ignore_errors=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "1.0"
