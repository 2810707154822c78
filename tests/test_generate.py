"""Stage 2: prompts, the language-model pool (tiny Llama built in memory), cleaning in the stream, provenance."""

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch
from pydantic import ValidationError
from tiny_models import save_tiny_llama

from kka_ray.llm import LMConfig, build_backend
from kka_ray.llm.hf import HFGenerator, SeededSampler
from kka_ray.llm.vllm_backend import lora_source, postprocess_row, preprocess_row, processor_config
from kka_ray.stages.generate import (
    PAPER_TEMPLATE,
    GenerateConfig,
    NormalContext,
    generate_descriptions,
    messages_for,
    prompt_table,
)
from kka_ray.stages.select import Representative
from kka_ray.text.clean import CleanConfig

REPS = [Representative(0, "train:1", "a photo of a shirt", 0.5, 10),
        Representative(1, "train:7", "a photo of a shirt", 0.7, 12)]
CTX = NormalContext(task="fashion_mnist/shirt/seed0", domain="clothing items", normal_names=("shirt",),
                    other_names=("t-shirt", "dress"), normal_descriptions=("a photo of a shirt",))


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return str(save_tiny_llama(tmp_path_factory.mktemp("lm")))


def gen_config(model: str, **lm) -> GenerateConfig:
    return GenerateConfig(samples_per_representative=6, lm=LMConfig(model=model, max_new_tokens=24, batch_size=4,
                                                                     cpus_per_actor=0.5, **lm),
                          clean=CleanConfig(min_words=1, similarity_threshold=None, drop_truncated=False))


def test_messages_follow_the_paper_template_after_the_shots():
    cfg = GenerateConfig()
    msgs = messages_for(cfg, "clothing items", "a photo of a shirt")
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
    assert msgs[-1]["content"] == PAPER_TEMPLATE.format(domain="clothing items", example="a photo of a shirt")
    bare = messages_for(GenerateConfig(few_shot=[], system_prompt="Be brief."), "digits", "a 5")
    assert [m["role"] for m in bare] == ["system", "user"]


def test_template_must_have_placeholders():
    with pytest.raises(ValidationError, match=r"\{example\}"):
        GenerateConfig(template="Describe {domain}.")


def test_prompt_table_rows_and_seeds():
    cfg = GenerateConfig(samples_per_representative=3, seed=5)
    t = prompt_table(REPS, CTX, cfg, iteration=1)
    assert len(t) == 6 and t.column("cluster").to_pylist() == [0, 0, 0, 1, 1, 1]
    seeds = t.column("seed").to_pylist()
    assert len(set(seeds)) == 6
    assert seeds == prompt_table(REPS, CTX, cfg, iteration=1).column("seed").to_pylist()
    assert seeds != prompt_table(REPS, CTX, cfg, iteration=2).column("seed").to_pylist()


def test_seeded_sampler_rows_do_not_depend_on_the_batch(tiny_lm):
    gen = HFGenerator(LMConfig(model=tiny_lm, max_new_tokens=10, cpus_per_actor=1).model_dump())
    msgs = np.array([[{"role": "user", "content": "short"}], [{"role": "user", "content": "a longer prompt"}]],
                    dtype=object)
    both = gen({"messages": msgs, "seed": np.array([11, 12])})
    alone = gen({"messages": msgs[1:], "seed": np.array([12])})
    assert both["generated_text"][1] == alone["generated_text"][0]
    again = gen({"messages": msgs[1:], "seed": np.array([13])})
    assert again["generated_text"][0] != alone["generated_text"][0]
    assert (both["num_generated_tokens"] <= 10).all()


def test_seeded_sampler_respects_top_p():
    scores = torch_scores = np.log(np.array([[0.7, 0.2, 0.1]]))
    import torch

    sampler = SeededSampler([0], temperature=1.0, top_p=0.5)
    picks = {int(sampler(torch.zeros(1, 1, dtype=torch.long), torch.tensor(torch_scores)).argmax()) for _ in range(50)}
    assert picks == {0}  # only the top token survives top-p 0.5
    assert scores.shape == (1, 3)


def test_stream_end_to_end_with_provenance(ray_local, tiny_lm):
    cfg = gen_config(tiny_lm, actors=2)
    result = generate_descriptions(REPS, CTX, cfg, iteration=2)
    s = result.stats
    assert s["completions"] == 12 and s["kept"] + len(result.rejects) == s["lines"]
    assert s["tokens"] > 0 and s["tokens_per_s"] > 0
    table = pa.concat_tables([result.descriptions.append_column("reason", pa.array([""] * len(result.descriptions))),
                              result.rejects], promote_options="permissive")
    for col in ("task", "iteration", "cluster", "representative_id", "representative_text", "prompt", "seed",
                "generation_seconds", "truncated",
                "model", "adapter", "temperature", "top_p", "max_new_tokens", "sentence", "num_generated_tokens"):
        assert col in table.column_names, col
    assert set(table.column("iteration").to_pylist()) == {2}
    assert set(table.column("model").to_pylist()) == {tiny_lm}
    assert set(table.column("row_id").to_pylist()) == set(range(12))
    # Deterministic with a seed: the same run gives the same lines.
    again = generate_descriptions(REPS, CTX, cfg, iteration=2)
    assert again.descriptions.column("sentence").to_pylist() == result.descriptions.column("sentence").to_pylist()


def test_vllm_processor_is_built_lazily_without_vllm(ray_local, tiny_lm, tmp_path):
    import ray

    adapter = tmp_path / "iter_1" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    cfg = LMConfig(backend="vllm", model=tiny_lm, adapter=str(adapter), tensor_parallel_size=2, batch_size=8,
                   actors=3)
    pc = processor_config(cfg)
    assert pc.engine_kwargs["tensor_parallel_size"] == 2 and pc.engine_kwargs["enable_lora"] is True
    assert "max_model_len" not in pc.engine_kwargs  # the model's own context unless configured
    assert processor_config(cfg.model_copy(update={"max_model_len": 512})).engine_kwargs["max_model_len"] == 512
    # `actors` is a fixed pool, as in the transformers backend (an int would autoscale from 1)
    assert pc.batch_size == 8 and pc.get_concurrency() == {"min_size": 3, "max_size": 3}
    # no GPU asked: Ray's engine stage gets CPU-only bundles (its default reserves a GPU per engine worker)
    assert pc.placement_group_config["bundle_per_worker"] == {"CPU": cfg.cpus_per_actor, "GPU": 0.0}
    assert processor_config(cfg.model_copy(update={"gpus_per_actor": 1.0})).placement_group_config is None
    assert pc.dynamic_lora_loading_path is None  # a local adapter is read where the engine runs
    plan = str(build_backend(cfg).apply(ray.data.from_items([{"messages": [], "seed": 1}])))
    assert "vLLMEngineStageUDF" in plan and "ChatTemplateUDF" in plan
    row = preprocess_row({"seed": 4, "row_id": 0, "prompt": "Please generate ..."}, cfg, lora_source(str(adapter))[1])
    assert row["sampling_params"] == {"temperature": 0.9, "top_p": 0.95, "max_tokens": 48, "seed": 4}
    assert row["model"] == str(adapter)
    # what the engine stages hand back: their own templated `prompt`, the text, bookkeeping
    engine_row = {**row, "prompt": "<|im_start|>user ...", "generated_text": "x", "generated_tokens": [7, 8, 2],
                  "num_generated_tokens": 3, "num_input_tokens": 9, "logprobs": None, "embeddings": None,
                  "batch_uuid": "b", "__inference_error__": "", "prompt_logprobs": None}  # Ray 2.60's columns
    out = postprocess_row({**engine_row, "time_taken_llm": 0.5}, special_ids=frozenset({2}))
    assert out.pop("batch_end") - out.pop("batch_start") == pytest.approx(0.5)
    # the EOS token (2 here) is not counted, as the transformers backend counts
    assert out == {"row_id": 0, "seed": 4, "prompt": "Please generate ...", "generated_text": "x",
                   "num_generated_tokens": 2, "generation_seconds": 0.5}
    with pytest.raises(ValueError, match="lm.model"):
        processor_config(LMConfig(backend="vllm"))


@pytest.mark.parametrize("adapter, path, name", [
    ("s3://bucket/runs/a/iter_2/adapter", "s3://bucket/runs/a", "iter_2/adapter"),
    ("gs://bucket/iter_0/adapter/", "gs://bucket", "iter_0/adapter"),
    ("s3://bucket/adapter", "s3://bucket", "adapter"),
])
def test_vllm_remote_adapters_load_through_rays_lora_path(tiny_lm, adapter, path, name):
    cfg = LMConfig(backend="vllm", model=tiny_lm, adapter=adapter)
    assert lora_source(adapter) == (path, name)
    assert processor_config(cfg).dynamic_lora_loading_path == path
    assert preprocess_row({"seed": 1}, cfg, lora_source(adapter)[1])["model"] == name  # Ray refuses a URI as the name
    assert "model" not in preprocess_row({"seed": 1}, cfg)  # no adapter: the engine's own model


@pytest.mark.parametrize("adapter, match", [("hdfs://nn/run/iter_1/adapter", "hdfs://.*s3://"),
                                            ("s3://bucket", "bucket>/<folder>"),
                                            ("/no/such/adapter", "adapter_config.json")])
def test_vllm_adapter_locations_it_cannot_load_are_named(tiny_lm, adapter, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        processor_config(LMConfig(backend="vllm", model=tiny_lm, adapter=adapter))


def test_vllm_is_never_imported_unless_chosen():
    code = ("import sys, kka_ray.llm, kka_ray.stages.generate, kka_ray.knowledge; "
            "assert 'vllm' not in sys.modules, 'vllm imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lora_adapter_is_applied(tiny_lm, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_lm),
                                LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    msgs = np.array([[{"role": "user", "content": "describe a shoe"}]], dtype=object)
    base = HFGenerator(LMConfig(model=tiny_lm, max_new_tokens=12, cpus_per_actor=1).model_dump())
    tuned = HFGenerator(LMConfig(model=tiny_lm, adapter=str(tmp_path / "adapter"), max_new_tokens=12,
                                 cpus_per_actor=1).model_dump())
    a, b = (g({"messages": msgs, "seed": np.array([3])})["generated_text"][0] for g in (base, tuned))
    assert a != b
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        HFGenerator(LMConfig(model=tiny_lm, adapter=str(tmp_path), cpus_per_actor=1).model_dump())


def test_stream_costs_from_the_actors_timing_columns():
    from kka_ray.stages.generate import stream_costs

    cols = {  # 2 completions -> 3 lines, in one LM batch and two cleaner batches; 2 lines rendered in one batch
        "row_id": np.array([0, 0, 1]), "batch_start": np.array([10.0] * 3), "batch_end": np.array([14.0] * 3),
        "lm_peak_rss_mb": np.array([900.0] * 3), "clean_start": np.array([14.0, 14.0, 15.0]),
        "clean_end": np.array([14.5, 14.5, 15.5]), "clean_peak_rss_mb": np.array([300.0, 300.0, 310.0]),
        "render_start": np.array([16.0] * 3), "render_end": np.array([18.0] * 3),
        "render_peak_rss_mb": np.array([700.0] * 3), "rendered": np.array([True, False, True]),
    }
    c = stream_costs(cols)
    assert c["generate_seconds"] == 4.0 and c["generate_rows_per_s"] == 0.5 and c["peak_rss_mb_generate"] == 900
    assert c["clean_seconds"] == 1.0 and c["clean_rows_per_s"] == 3.0 and c["peak_rss_mb_clean"] == 310
    assert c["render_seconds"] == 2.0 and c["render_rows_per_s"] == 1.0 and c["peak_rss_mb_render"] == 700


def test_perf_times_the_nucleus_filter_on_every_decode_step_of_a_real_batch(tiny_lm):
    """The perf job's input for the filters' timing: one batch's scores at each decode step, as the LM stage
    samples them; both filters keep the same tokens on every step, up to which of equally probable tokens at
    the nucleus' edge is kept (sort orders of ties differ between CPUs: seen on AVX-512, not on AVX2)."""
    from transformers import TopPLogitsWarper

    from kka_ray.llm.hf import top_p_filter
    from kka_ray.perf import _decode_step_scores

    cfg = gen_config(tiny_lm, temperature=0.7, top_p=0.9)
    steps = _decode_step_scores(REPS, CTX, cfg)
    assert len(steps) == cfg.lm.max_new_tokens and all(s.shape == steps[0].shape for s in steps)
    assert steps[0].shape[0] == cfg.lm.batch_size
    for scores in steps:
        ours = ~top_p_filter(scores, cfg.lm.top_p).isinf()
        theirs = ~TopPLogitsWarper(cfg.lm.top_p)(None, scores.clone()).isinf()
        assert torch.equal(ours.sum(-1), theirs.sum(-1))
        for row in (ours != theirs).any(-1).nonzero().flatten():
            assert scores[row][ours[row] != theirs[row]].unique().numel() == 1  # one tie, swapped
