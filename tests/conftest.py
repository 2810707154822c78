import importlib.util
import os

import pytest

from kka_ray.runtime import set_env_defaults

set_env_defaults()
os.environ.setdefault("KKA_PROGRESS", "0")
os.environ.setdefault("KKA_TRACKING", "0")  # records written by tests stay out of runs/mlflow.db
# The vLLM tier runs in its own venv (make test-vllm); the main venv has no vllm.
collect_ignore = [] if importlib.util.find_spec("vllm") else ["vllm_tier"]


@pytest.fixture(scope="session")
def ray_local():
    """One small local Ray for the whole session (start-up costs seconds)."""
    import ray

    from kka_ray.config import RayConfig
    from kka_ray.runtime import init_ray

    init_ray(RayConfig(num_cpus=2, object_store_mb=512))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A tiny Llama and a tiny diffusion pipeline saved once per session."""
    from tiny_models import save_tiny_llama, save_tiny_stable_diffusion

    root = tmp_path_factory.mktemp("tiny")
    return {"lm": str(save_tiny_llama(root / "lm")), "sd": str(save_tiny_stable_diffusion(root / "sd"))}


@pytest.fixture(scope="session")
def tiny_run(ray_local, tiny, tmp_path_factory):
    """One complete KKA run (T = 2) on the tiny models, shared by the loop, CLI, job, Serve and benchmark tests
    (copies of it stand for runs stopped after an iteration: tiny_loop.after_iteration)."""
    from tiny_loop import tiny_config

    from kka_ray.loop import run_loop

    cfg = tiny_config(tiny, tmp_path_factory.mktemp("runs"))
    return cfg, run_loop(cfg)
