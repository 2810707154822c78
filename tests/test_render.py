"""Stage 3: the diffusers render actor (tiny Stable Diffusion built in memory) and the streaming pipeline."""

import numpy as np
import pytest
from tiny_models import save_tiny_llama, save_tiny_stable_diffusion

from kka_ray.llm import LMConfig
from kka_ray.render import RenderConfig
from kka_ray.render import prior as prior_module
from kka_ray.render.base import render_seed, to_task_format
from kka_ray.render.diffusers_backend import DiffusersRenderer
from kka_ray.stages.generate import GenerateConfig, NormalContext
from kka_ray.stages.render import anomaly_stream, collect
from kka_ray.stages.select import Representative
from kka_ray.text.clean import CleanConfig


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return str(save_tiny_stable_diffusion(tmp_path_factory.mktemp("sd")))


def batch(sentences, seeds, reasons=None):
    b = {"sentence": np.array(sentences, dtype=object), "seed": np.array(seeds)}
    if reasons is not None:
        b["reason"] = np.array(reasons, dtype=object)
    return b


def test_to_task_format():
    rgb = np.zeros((2, 16, 16, 3))
    rgb[..., 0] = 1.0
    grey = to_task_format(rgb, 28, 1)
    assert grey.shape == (2, 28, 28, 1) and grey.dtype == np.uint8 and grey[0, 0, 0, 0] == round(0.299 * 255)
    assert to_task_format(np.full((1, 8, 8, 1), 2.0), 8, 3).tolist() == np.full((1, 8, 8, 3), 255).tolist()


def test_render_seed_is_stable_and_per_line():
    assert render_seed(3, "a red bag") == render_seed(3, "a red bag")
    assert render_seed(3, "a red bag") != render_seed(3, "a red shoe") != render_seed(4, "a red shoe")


def test_renderer_shapes_seeds_and_rejects(tiny_sd):
    r = DiffusersRenderer(RenderConfig(model=tiny_sd, steps=3, cpus_per_actor=1).model_dump(), 28, 1)
    out = r(batch(["a red shoe", "skip me", "a photo of a bag"], [1, 1, 2], ["", "too_short", ""]))
    assert out["image"].shape == (3, 28, 28, 1) and out["image"].dtype == np.uint8
    assert out["rendered"].tolist() == [True, False, True] and not out["image"][1].any()
    alone = r(batch(["a photo of a bag"], [2]))
    np.testing.assert_array_equal(alone["image"][0], out["image"][2])  # a row's image depends on its seed only
    assert out["render_seconds"][0] > 0 and out["render_seed"][0] == render_seed(1, "a red shoe")


def test_scheduler_swap_and_errors(tiny_sd, tmp_path, monkeypatch):
    r = DiffusersRenderer(RenderConfig(model=tiny_sd, steps=2, scheduler="DDIMScheduler",
                                       cpus_per_actor=1).model_dump(), 16, 3)
    assert type(r.pipe.scheduler).__name__ == "DDIMScheduler"
    assert r(batch(["a red shoe"], [0]))["image"].shape == (1, 16, 16, 3)
    with pytest.raises(ValueError, match="no scheduler 'Nope'"):
        DiffusersRenderer(RenderConfig(model=tiny_sd, scheduler="Nope", cpus_per_actor=1).model_dump(), 16, 3)
    (tmp_path / "none").mkdir()
    monkeypatch.setattr(prior_module, "PRIORS_DIR", tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="train_prior.py --config configs/prior/general.yaml"):
        DiffusersRenderer(RenderConfig(cpus_per_actor=1).model_dump(), 16, 3)


def test_descriptions_stream_into_images_with_provenance(ray_local, tiny_sd, tmp_path):
    ctx = NormalContext(task="fashion_mnist/shirt/seed0", domain="clothing items", normal_names=("shirt",),
                        other_names=("dress",), normal_descriptions=("a photo of a shirt",))
    gen = GenerateConfig(samples_per_representative=4,
                         lm=LMConfig(model=str(save_tiny_llama(tmp_path / "lm")), max_new_tokens=16, batch_size=2,
                                     cpus_per_actor=0.5),
                         clean=CleanConfig(min_words=1, similarity_threshold=None, drop_truncated=False))
    render = RenderConfig(model=tiny_sd, steps=2, batch_size=4, cpus_per_actor=0.5)
    stream, renderer = anomaly_stream([Representative(0, "train:3", "a photo of a shirt", 0.0, 5)], ctx, gen,
                                      render, size=28, channels=1, iteration=1)
    plan = str(stream)
    assert plan.index("DiffusersRenderer") < plan.index("Cleaner") < plan.index("HFGenerator")  # one lazy chain
    result = collect(stream, renderer)
    a = result.anomalies
    assert len(a) == result.stats["anomalies"] > 0 and result.images.shape == (len(a), 28, 28, 1)
    for col in ("sentence", "prompt", "seed", "render_seed", "model", "renderer", "iteration", "representative_id"):
        assert col in a.column_names, col
    assert set(a.column("renderer").to_pylist()) == {tiny_sd} and set(a.column("iteration").to_pylist()) == {1}
    assert "image" not in result.rejects.column_names
    assert len(a) + len(result.rejects) >= 4  # every completion yields at least one line


def test_committed_prior_loads_offline_and_renders_task_images():
    actor = DiffusersRenderer(RenderConfig(steps=4, cpus_per_actor=1, disable_safety_checker=True).model_dump(),
                              28, 1)
    out = actor(batch(["a leather boot", "the numeral five"], [1, 2]))
    assert out["image"].shape == (2, 28, 28, 1) and out["image"].dtype == np.uint8
    assert out["rendered"].all() and out["image"].std() > 0  # not blank


def test_a_render_actor_that_always_dies_ends_the_job_after_its_restarts(ray_local):
    """A crash that repeats (a bad driver, a model that kills its process) must not loop forever: after
    render.max_restarts restarts the stage fails with an error that says so."""
    import os

    import ray

    from kka_ray.render.base import RenderActor, RenderBackend

    class Dying(RenderActor):
        def render(self, prompts, seeds):
            os._exit(1)

    class DyingBackend(RenderBackend):  # the backends' own apply(), with an actor that kills its process
        actor_cls = Dying

        def model_id(self):
            return "dies"

    cfg = RenderConfig(max_restarts=2, cpus_per_actor=0.5)
    ds = ray.data.from_items([{"sentence": f"a red hat {i}", "seed": i, "reason": ""} for i in range(4)])
    with pytest.raises(RuntimeError, match="died and was restarted up to its limit.*MapBatches\\(Dying\\)"):
        collect(DyingBackend(cfg).apply(ds, 8, 1), "dies")
