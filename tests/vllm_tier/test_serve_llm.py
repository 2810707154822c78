"""The Serve app's vllm language model is Ray Serve's own LLM deployment: one engine per replica, a run's adapters
as multi-LoRA models (its configuration, which Ray builds against the running cluster; test_vllm_tier.py serves it)."""

import pytest

from kka_ray.llm import LMConfig
from kka_ray.serve.deployments import llm_deployment

LM = LMConfig(backend="vllm", model="/models/smollm2", cpus_per_actor=1.5, actors=2, max_model_len=1024)


def llm_config(app):
    """The LLMConfig the LLMServer replicas start from (a bind argument of the built application)."""
    d = app._bound_deployment
    return next(a for a in (*d.init_args, *d.init_kwargs.values()) if hasattr(a, "lora_config"))


def test_a_runs_remote_adapters_become_lora_models_of_one_engine(ray_local):
    run = "s3://bucket/runs/shirt"
    app, names = llm_deployment(LM, {0: "", 1: f"{run}/iter_0/adapter", 2: f"{run}/iter_1/adapter"})
    assert names == {f"{run}/iter_0/adapter": "iter_0/adapter", f"{run}/iter_1/adapter": "iter_1/adapter"}
    cfg = llm_config(app)
    assert cfg.lora_config.dynamic_lora_loading_path == run and cfg.lora_config.max_num_adapters_per_replica == 2
    assert cfg.engine_kwargs["enable_lora"] is True and cfg.engine_kwargs["max_model_len"] == 1024
    assert cfg.deployment_config == {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0}}  # CPUs: the engine's
    assert cfg.placement_group_config == {"bundles": [{"CPU": 1.5}]}  # a CPU build of vLLM: no GPU asked


def test_the_base_model_alone_needs_no_lora(ray_local):
    cfg = llm_config(llm_deployment(LM.model_copy(update={"gpus_per_actor": 1.0}), {0: ""})[0])
    assert cfg.lora_config is None and "enable_lora" not in cfg.engine_kwargs
    assert cfg.placement_group_config is None  # Ray's default bundle, with its GPU


@pytest.mark.parametrize("adapters, match", [
    ({1: "/runs/shirt/iter_0/adapter"}, "local.*s3://"),
    ({1: "s3://a/run1/iter_0/adapter", 2: "s3://b/run2/iter_1/adapter"}, "several folders"),
])
def test_adapters_serve_cannot_load_are_named(ray_local, adapters, match):
    with pytest.raises(ValueError, match=match):
        llm_deployment(LM, adapters)
