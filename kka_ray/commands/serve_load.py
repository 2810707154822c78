"""Load check of the anomaly service: start it, send a bounded number of requests from N concurrent clients on
loopback, and write docs/results/<record>.json (+ .md): requests, errors, latency percentiles, anomalies/s, and
the peak resident memory of the service's processes (replicas, proxy, controller). With auth.mode=token (the
default) and no token in the environment, the job makes one for its own service.

    python jobs/serve_load.py --config configs/serve/default.yaml --requests 200 --concurrency 16
"""

import os
import secrets
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import cycle, islice

import numpy as np
import requests

from kka_ray.cli import parse_config, parser
from kka_ray.records import invoked_command, write_record
from kka_ray.resources import SERVE_PROCESSES, PeakMemory
from kka_ray.runtime import init_ray
from kka_ray.serve.app import build_app, http_options
from kka_ray.serve.config import ServeConfig

CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one(url: str, body: dict, timeout: float, headers: dict) -> tuple[float, int, int]:
    """(seconds, HTTP status or 0 for a transport error, anomalies returned)."""
    start = time.perf_counter()
    try:
        r = requests.post(url, json=body, timeout=timeout, headers=headers)
        n = len(r.json()["anomalies"]) if r.status_code == 200 else 0
        return time.perf_counter() - start, r.status_code, n
    except requests.RequestException:
        return time.perf_counter() - start, 0, 0


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0], ServeConfig)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--count", type=int, default=2, help="anomalies per request")
    p.add_argument("--timeout-s", type=float, default=600, help="per request")
    p.add_argument("--record", default="serve-load")
    p.add_argument("--out", default="docs/results")
    args = p.parse_args(argv)
    cfg = parse_config(ServeConfig, args)
    cfg = cfg.model_copy(update={"port": free_port(), "host": "127.0.0.1"})
    headers = {}
    if cfg.auth.mode == "token":
        token = os.environ.setdefault(cfg.auth.token_env, secrets.token_urlsafe(32))
        headers = {"Authorization": f"Bearer {token}"}
    init_ray(cfg.ray)
    from ray import serve

    serve.start(http_options=http_options(cfg))
    start = time.time()
    serve.run(build_app(cfg), name="kka-load", route_prefix="/")
    url = f"http://{cfg.host}:{cfg.port}/v1/anomalies"
    bodies = [{"dataset": "fashion_mnist", "normal_class": c, "count": args.count, "seed": i}
              for i, c in enumerate(islice(cycle(CLASSES), args.requests))]
    warm = one(url, {**bodies[0], "seed": 10**6}, args.timeout_s, headers)  # loads the models; not counted
    print(f"service up in {time.time() - start:.0f} s (first request {warm[0]:.1f} s, status {warm[1]})")
    if headers:  # the same request without the token must be refused
        assert one(url, bodies[0], args.timeout_s, {})[1] == 401, "the service answered without its token"
    t0 = time.perf_counter()
    with PeakMemory(SERVE_PROCESSES) as memory, ThreadPoolExecutor(args.concurrency) as pool:
        results = list(pool.map(lambda b: one(url, b, args.timeout_s, headers), bodies))
    wall = time.perf_counter() - t0
    serve.shutdown()
    lat = np.array([r[0] for r in results]) * 1000
    ok = [r for r in results if r[1] == 200]
    anomalies = sum(r[2] for r in results)
    metrics = {"requests": len(results), "concurrency": args.concurrency, "errors": len(results) - len(ok),
               "p50_ms": float(np.percentile(lat, 50)), "p90_ms": float(np.percentile(lat, 90)),
               "p99_ms": float(np.percentile(lat, 99)), "anomalies": anomalies,
               "anomalies_per_s": anomalies / wall, "requests_per_s": len(results) / wall, "wall_s": wall,
               "anomalies_per_request": args.count, "auth_on": int(bool(headers)),
               "peak_rss_mb_serve": memory.peak}
    md = "\n".join([
        "# Anomaly service under load", "", f"`{invoked_command()}`", "",
        f"{args.concurrency} concurrent clients on loopback sent {len(results)} requests of {args.count} anomalies "
        "each (Fashion-MNIST classes in turn, images returned) to the Serve app on the offline defaults "
        "(SmolLM2-135M writes, the project's prior renders), all replicas on this 2-core CPU. "
        f"Auth {'on (bearer token; a request without it was refused with 401)' if headers else 'off'}. "
        "peak_rss_mb_serve: the largest sum of resident memory over the service's Ray processes (replicas, "
        "proxy, controller), sampled every 0.5 s during the load.", "",
        "| metric | value |", "|---|---|", *[f"| {k} | {v:.1f} |" for k, v in metrics.items()], ""])
    write_record(args.record, metrics, md, args.out, extra={"serve_config": cfg.model_dump(mode="json")})
    print(md)
