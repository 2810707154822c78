"""On-demand anomaly generation as a Ray Serve application (FastAPI ingress, LM / renderer / evaluator
deployments). Build it with `kka_ray.serve.app:build`; run it with `jobs/serve.py` or `serve run`."""
