"""phi: EfficientNet-Lite0 features directly and through a Ray Data actor pool; stage 1 on real images."""

import time

import numpy as np
import pytest

from kka_ray.data import build_dataset, make_task
from kka_ray.features import FEATURES, FeatureConfig, build_features, embed
from kka_ray.stages.select import SelectConfig, run_select


@pytest.fixture(scope="module")
def phi():
    return build_features(FeatureConfig(device="cpu", batch_size=4))


def random_images(n: int, size: int, channels: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)


def test_registered():
    assert "efficientnet_lite0" in FEATURES.names()
    with pytest.raises(ValueError, match="unknown feature extractor"):
        FeatureConfig(name="resnet")


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3)])
def test_shape_dtype_determinism(phi, size, channels):
    images = random_images(5, size, channels)  # 5 with batch_size 4: two forward passes
    t0 = time.perf_counter()
    z = phi(images)
    print(f"efficientnet_lite0: {len(images)} images of {size}x{size}x{channels} in {time.perf_counter() - t0:.2f} s")
    assert phi.dim == 1280
    assert z.shape == (5, 1280) and z.dtype == np.float32 and np.isfinite(z).all()
    np.testing.assert_array_equal(z, phi(images))
    assert not np.allclose(z[0], z[1])


def test_grey_is_replicated_to_rgb(phi):
    grey = random_images(2, 28, 1, seed=1)
    np.testing.assert_allclose(phi(grey), phi(np.repeat(grey, 3, axis=3)), rtol=1e-4, atol=1e-5)


def test_rejects_bad_images(phi):
    with pytest.raises(ValueError, match="uint8"):
        phi(np.zeros((2, 28, 28, 1), dtype=np.float32))
    with pytest.raises(ValueError, match="C = 1 or 3"):
        phi(np.zeros((2, 28, 28, 4), dtype=np.uint8))


def test_embed_two_actors_keeps_order(ray_local, phi):
    images = random_images(10, 28, 1, seed=2)
    cfg = FeatureConfig(device="cpu", batch_size=3, actors=2, cpus_per_actor=0.5)
    z = embed(images, cfg)
    assert z.shape == (10, 1280) and z.dtype == np.float32
    np.testing.assert_allclose(z, phi(images), rtol=1e-4, atol=1e-5)


def test_run_select_on_fashion_mnist(ray_local):
    task = make_task(build_dataset("fashion_mnist"), "fashion_mnist", ["sneaker"], seed=0)
    normals = task.train_normal.subset(np.arange(60))
    cfg = SelectConfig(k=3, features=FeatureConfig(device="cpu", image_size=112, batch_size=30))
    reps = run_select(normals, cfg)
    assert [r.cluster for r in reps] == [0, 1, 2]
    assert {r.sample_id for r in reps} <= set(normals.ids.astype(str))
    assert sum(r.cluster_size for r in reps) == 60
    # no captions: the class template with the image's measured attributes, so the K representatives differ
    assert all(r.description.startswith(normals.descriptions[0][0] + ", ") for r in reps)
    assert len({r.description for r in reps}) == 3
    assert all(np.isfinite(r.mahalanobis) and r.mahalanobis >= 0 for r in reps)


def test_a_mapped_callable_is_built_once_per_call_in_a_worker():
    """map_images on CPUs: Ray tasks in reused worker processes build the callable once per call (key), not per
    batch, and keep only the newest few."""
    from kka_ray import actor_map

    built = []

    class Doubler:
        def __init__(self, tag):
            built.append(tag)

        def __call__(self, batch):
            return {"row": batch["row"], "out": batch["row"] * 2}

    actor_map._BUILT.clear()
    batch = {"row": np.arange(3)}
    for _ in range(3):
        assert actor_map._built_call(batch, Doubler, {"tag": "a"}, "call-a")["out"].tolist() == [0, 2, 4]
    assert built == ["a"]
    for key in ("call-b", "call-c"):
        actor_map._built_call(batch, Doubler, {"tag": key}, key)
    assert list(actor_map._BUILT) == ["call-b", "call-c"]  # call-a evicted
    actor_map._BUILT.clear()
