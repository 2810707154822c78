"""Faults injected into real KKA runs and the service, and the bad-input catalogue -> docs/results/faults.json.

    python jobs/bench_faults.py [--config configs/kka/demo.yaml] [--iterations 1] [--only lm_actor,driver]

Runs the loop undisturbed twice (the reference and a repeat: is a run reproducible at all?), then once per
fault of kka_ray.faults.FAULTS with that process killed mid-work, and compares every table with the
reference's. Then the service under load while its language-model replica is killed, and every case of
tests/bad_inputs.py. Finished runs are kept in --run-dir and reused: rerun the command to resume (an
unfinished reference is resumed; an unfinished fault run, whose result was never recorded, is made again).
"""

import argparse
import json
import os
import secrets
import shutil
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from kka_ray.faults import FAULTS, Killer, compare_runs, descendants, loop_command, run_logged
from kka_ray.paths import REPO_ROOT
from kka_ray.records import invoked_command, write_record
from kka_ray.resources import SERVE_PROCESSES, PeakMemory


def finished(run: Path, iterations: int) -> bool:
    state = run / "state.json"
    return state.is_file() and json.loads(state.read_text())["completed"] >= iterations


def loop_run(args, name: str, fault=None) -> dict:
    """One loop run, with `fault` injected; {"rc", "kill", "seconds"}."""
    run_dir = str(Path(args.run_dir).resolve())
    overrides = [f"update.iterations={args.iterations}", *args.overrides]
    log = Path(args.run_dir) / f"{name}.log"
    start, kill = time.time(), None
    if (Path(run_dir) / name).exists():
        if name == "reference":
            rc, _ = run_logged(loop_command(args.config, name, run_dir, overrides, resume=True), log)
            return {"rc": rc, "kill": None, "seconds": time.time() - start}
        shutil.rmtree(Path(run_dir) / name)  # this job's own scratch run, cut short before its result was kept
    if fault is None or fault.name in ("lm_actor", "render_actor", "train_worker"):
        killer = fault and Killer(fault.markers, fault.after_s, deadline_s=3600)
        if killer:
            killer.start()
        rc, _ = run_logged(loop_command(args.config, name, run_dir, overrides), log)
        if killer:
            killer.stop.set()
            kill = killer.kill.__dict__
    elif fault.name == "driver":
        rc, at = run_logged(loop_command(args.config, name, run_dir, overrides), log, kill_on=fault.driver_line)
        kill = {"pid": None, "title": "driver", "at": at}
        if at is not None:
            rc, _ = run_logged(loop_command(args.config, name, run_dir, overrides, resume=True), log)
    else:
        rc, kill = two_node_run(args, name, fault, run_dir, overrides, log)
    return {"rc": rc, "kill": kill, "seconds": time.time() - start}


def two_node_run(args, name, fault, run_dir, overrides, log):
    """The loop on a head and a worker node (ray.cluster_utils on loopback, 2 CPUs each); the worker node is
    removed without warning once it runs one of the fault's processes."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    worker = cluster.add_node(num_cpus=2)
    raylet = worker.all_processes["raylet"][0].process.pid
    try:
        killer = Killer(fault.markers, fault.after_s, deadline_s=3600, scope=lambda: descendants(raylet),
                        action=lambda proc: cluster.remove_node(worker, allow_graceful=False))
        killer.start()
        rc, _ = run_logged(loop_command(args.config, name, run_dir, overrides, address=cluster.address), log)
        killer.stop.set()
        return rc, killer.kill.__dict__
    finally:
        cluster.shutdown()


def serve_under_kill(args) -> dict:
    """The service on the offline defaults, 4 clients for --serve-seconds; after 15 s its Describer (the
    language model) replica is SIGKILLed. Counts the requests in flight or sent until the service answered
    again, the failed ones, and the seconds from the kill to the first success of a request sent after it."""
    import requests
    from ray import serve

    from kka_ray.config import load_config
    from kka_ray.runtime import init_ray
    from kka_ray.serve.app import build_app, http_options
    from kka_ray.serve.config import ServeConfig

    cfg = load_config(ServeConfig, args.serve_config, [])
    token = os.environ.setdefault(cfg.auth.token_env, secrets.token_urlsafe(32))
    init_ray(cfg.ray)
    serve.start(http_options=http_options(cfg))
    serve.run(build_app(cfg), name="kka-faults", route_prefix="/")
    url = f"http://{cfg.host}:{cfg.port}/v1/anomalies"
    headers = {"Authorization": f"Bearer {token}"}
    requests.post(url, json={"dataset": "fashion_mnist", "normal_class": "shirt", "count": 2}, headers=headers,
                  timeout=600)  # loads the models
    results, stop = [], threading.Event()

    def client(k: int) -> None:
        i = 0
        while not stop.is_set():
            start = time.time()
            try:
                status = requests.post(url, json={"dataset": "fashion_mnist", "normal_class": "coat", "count": 2,
                                                  "seed": 1000 * k + i}, headers=headers, timeout=120).status_code
            except requests.RequestException:
                status = 0
            results.append((start, time.time(), status))
            i += 1

    killer = Killer(("ServeReplica:kka-faults:Describer",), after_s=0, deadline_s=args.serve_seconds)
    with PeakMemory(SERVE_PROCESSES) as memory, ThreadPoolExecutor(4) as pool:
        for k in range(4):
            pool.submit(client, k)
        time.sleep(15)
        killer.start()
        killer.join()
        time.sleep(max(0.0, args.serve_seconds - 15))
        stop.set()
    serve.shutdown()
    at = killer.kill.at
    after = sorted((end, start, status) for start, end, status in results if start >= at and status == 200)
    recovery = after[0][0] - at if after else float("inf")
    window = [r for r in results if r[1] >= at and r[0] <= at + recovery]
    return {"serve_requests": len(results), "serve_requests_during_kill": len(window),
            "serve_failed_during_kill": sum(r[2] != 200 for r in window), "serve_recovery_s": recovery,
            "serve_failed_total": sum(r[2] != 200 for r in results), "peak_rss_mb_serve": memory.peak,
            "serve_killed": killer.kill.title}


def bad_inputs() -> list[dict]:
    """Every case of the catalogue: did it raise the named error, and what the user reads."""
    import re
    import tempfile

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from bad_inputs import CASES

    out = []
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                case.run(Path(tmp))
                seen, ok = "(no error)", False
            except case.error as e:
                seen = str(e)
                ok = bool(re.search(case.names, seen, re.S)) and (case.kept is None or case.kept(Path(tmp)))
            except Exception as e:  # the wrong kind of error is a failure of the case, reported as such
                seen, ok = f"{type(e).__name__}: {e}", False
        out.append({"id": case.id, "area": case.area, "given": case.given, "named": ok, "message": seen})
    return out


def markdown(faults: dict, serve_m: dict, cases: list[dict], metrics: dict, command: str) -> str:
    lines = ["# Faults injected and bad inputs", "", f"`{command}`", "",
             "Each fault: a real KKA run (the demo's config) with one process SIGKILLed mid-work, compared table by "
             "table (generated, anomalies, rejects of every iteration, timings left out) and AUROC by AUROC with "
             "an undisturbed run of the same seed. `repeat` is a second undisturbed run.", "",
             "| fault | killed | survived | rows lost | rows duplicated | identical to reference | minutes |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in faults.items():
        what = next((f.what for f in FAULTS if f.name == name), "undisturbed repeat")
        kill = (r.get("kill") or {}).get("title") or "-"
        lines.append(f"| {what} | `{kill[:60]}` | {int(r['survived'])} | {r['rows_lost']} | {r['rows_duplicated']} "
                     f"| {int(r['identical'])} | {r['seconds'] / 60:.1f} |")
        if r.get("differences"):
            lines.append(f"| | differs in: {', '.join(r['differences'])} | | | | | |")
    if serve_m:
        lines += ["", "## The service while its language-model replica is killed", "",
                  f"{serve_m['serve_requests']} requests from 4 clients; the replica "
                  f"`{serve_m['serve_killed'][:60]}` was killed after 15 s. In flight or sent until it answered "
                  f"again: {serve_m['serve_requests_during_kill']}, of which "
                  f"{serve_m['serve_failed_during_kill']} failed; back in {serve_m['serve_recovery_s']:.1f} s. Peak "
                  f"resident memory of the service's processes: {serve_m['peak_rss_mb_serve']:.0f} MiB."]
    lines += ["", f"## Bad inputs ({metrics['bad_inputs_named_error']} of {metrics['bad_inputs_tested']} named)", "",
              "| area | given | named | what the user sees |", "| --- | --- | ---: | --- |"]
    for c in cases:
        msg = c["message"].replace("\n", " ").replace("|", "\\|")
        lines.append(f"| {c['area']} | {c['given']} | {int(c['named'])} | {msg[:300]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/kka/demo.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--iterations", type=int, default=1, help="T of every loop run")
    p.add_argument("--only", default="", help="comma-separated fault names (default: all)")
    p.add_argument("--serve-config", default="configs/serve/default.yaml")
    p.add_argument("--serve-seconds", type=float, default=120)
    p.add_argument("--skip-serve", action="store_true")
    p.add_argument("--run-dir", default="runs/faults")
    p.add_argument("--record", default="faults")
    p.add_argument("--out", default="docs/results")
    args = p.parse_args(argv)
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cache = run_dir / "results.json"
    done = json.loads(cache.read_text()) if cache.is_file() else {}
    wanted = [f for f in FAULTS if not args.only or f.name in args.only.split(",")]
    for name, fault in [("reference", None), ("repeat", None), *((f.name, f) for f in wanted)]:
        if name in done or (name == "reference" and finished(run_dir / name, args.iterations)):
            continue
        print(f"[faults] {name}: {fault.what if fault else 'undisturbed'}", flush=True)
        r = loop_run(args, name, fault)
        ok = r["rc"] == 0 and finished(run_dir / name, args.iterations)
        cmp = compare_runs(run_dir / "reference", run_dir / name, args.iterations) if ok and name != "reference" \
            else None
        done[name] = {**r, "survived": ok and (fault is None or (r["kill"] or {}).get("at") is not None),
                      "rows_lost": cmp.rows_lost if cmp else -1, "rows_duplicated": cmp.rows_duplicated if cmp else -1,
                      "identical": bool(cmp and cmp.identical), "differences": cmp.differences if cmp else []}
        if name != "reference":
            cache.write_text(json.dumps(done, indent=1))
        print(f"[faults] {name}: {done[name]}", flush=True)
    done.pop("reference", None)
    injected = {k: v for k, v in done.items() if k != "repeat"}
    serve_m = {}
    if not args.skip_serve:
        try:
            serve_m = serve_under_kill(args)
        except Exception:
            traceback.print_exc()
            sys.exit("error: the service part failed (see above); the loop faults are kept in " + str(cache))
    cases = bad_inputs()
    metrics = {"faults_injected": len(injected) + bool(serve_m),
               "faults_survived": sum(v["survived"] for v in injected.values())
               + int(bool(serve_m) and np.isfinite(serve_m.get("serve_recovery_s", np.inf))),
               "rows_lost": sum(max(0, v["rows_lost"]) for v in injected.values()),
               "rows_duplicated": sum(max(0, v["rows_duplicated"]) for v in injected.values()),
               "resume_identical": int(all(v["identical"] for v in injected.values())),
               "repeat_identical": int(done.get("repeat", {}).get("identical", False)),
               "bad_inputs_tested": len(cases), "bad_inputs_named_error": sum(c["named"] for c in cases),
               **{k: float(v) for k, v in serve_m.items() if isinstance(v, int | float) and np.isfinite(v)}}
    command = invoked_command()
    write_record(args.record, metrics, markdown(done, serve_m, cases, metrics, command), args.out, command=command,
                 extra={"faults": done, "bad_inputs": cases, "covers": sorted(done)})
    print(json.dumps(metrics, indent=1))
