import os

import pytest

from kka_ray.runtime import set_env_defaults

set_env_defaults()
os.environ.setdefault("KKA_PROGRESS", "0")


@pytest.fixture(scope="session")
def ray_local():
    """One small local Ray for the whole session (start-up costs seconds)."""
    import ray

    from kka_ray.config import RayConfig
    from kka_ray.runtime import init_ray

    init_ray(RayConfig(num_cpus=2, object_store_mb=512))
    yield ray
    ray.shutdown()
