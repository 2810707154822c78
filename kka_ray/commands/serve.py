"""Run the anomaly service (Ray Serve, FastAPI ingress) until interrupted.

    export KKA_SERVE_TOKEN=$(openssl rand -hex 32)   # required unless --set auth.mode=none (loopback only)
    python jobs/serve.py --config configs/serve/default.yaml [--set run=runs/kka-demo]
    curl -s -H "Authorization: Bearer $KKA_SERVE_TOKEN" -H "Content-Type: application/json" \\
         -d '{"dataset": "fashion_mnist", "normal_class": "shirt", "count": 4}' http://127.0.0.1:8000/v1/anomalies
"""

import time

from kka_ray.cli import parse_config, parser
from kka_ray.runtime import init_ray
from kka_ray.serve.app import build_app, http_options
from kka_ray.serve.config import ServeConfig


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0], ServeConfig).parse_args(argv)
    cfg = parse_config(ServeConfig, args)
    init_ray(cfg.ray)
    from ray import serve

    app = build_app(cfg)  # refuses a service without its token before anything listens
    serve.start(http_options=http_options(cfg))
    serve.run(app, name="kka", route_prefix="/")
    print(f"serving on http://{cfg.host}:{cfg.port} (POST /v1/anomalies, GET /v1/models, GET /healthz); "
          "Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
