"""The project's `vllm` backend generating for real: SmolLM2-135M-Instruct on the CPU build of vLLM, through Ray's
vLLM batch processor inside the knowledge stage, with a DPO adapter from a real round applied per row, and the
Serve app answering through Ray Serve's LLM deployment."""

import shutil
from pathlib import Path

import pyarrow as pa
import pytest
import requests

from kka_ray.llm import LMConfig
from kka_ray.stages.generate import GenerateConfig, NormalContext, generate_descriptions
from kka_ray.stages.prefer import PreferConfig, adapter_files, run_dpo
from kka_ray.stages.select import Representative
from kka_ray.text.clean import CleanConfig
from kka_ray.vllm_bench import vllm_service

REPS = [Representative(0, "train:1", "a plain shirt with long sleeves and a row of buttons", 0.5, 10),
        Representative(1, "train:7", "a checked flannel shirt with a collar and two chest pockets", 0.7, 12)]
CTX = NormalContext(task="fashion_mnist/shirt/seed0", domain="clothing items", normal_names=("shirt",),
                    other_names=("t-shirt", "dress"), normal_descriptions=tuple(r.description for r in REPS))


def gen_config(model: str, backend: str = "vllm", **lm) -> GenerateConfig:
    return GenerateConfig(samples_per_representative=4, lm=LMConfig(
        backend=backend, model=model, max_new_tokens=48, batch_size=8, cpus_per_actor=1, max_model_len=1024, **lm),
        clean=CleanConfig(similarity_threshold=None))


def lines(result) -> list[tuple[int, str]]:
    both = pa.concat_tables([result.descriptions, result.rejects.drop_columns(["reason"])])
    return sorted(zip(both.column("row_id").to_pylist(), both.column("sentence").to_pylist(), strict=True))


def schema(table: pa.Table) -> dict[str, str]:
    return {f.name: str(f.type) for f in table.schema}


@pytest.fixture(scope="module")
def base_run(ray_local, smollm2):
    return generate_descriptions(REPS, CTX, gen_config(smollm2), iteration=0)


def test_the_knowledge_stage_generates_through_rays_vllm_processor(ray_local, smollm2, base_run):
    s = base_run.stats
    assert s["completions"] == 8 and s["lines"] >= 8 and s["kept"] > 0 and s["tokens"] > 0
    tokens = base_run.descriptions.column("num_generated_tokens").to_pylist()
    assert max(tokens) <= 48 and min(tokens) > 0  # without the EOS token, as the transformers backend counts
    # per-row seeds: the same lines on a rerun (a new engine, new actors)
    assert lines(generate_descriptions(REPS, CTX, gen_config(smollm2), iteration=0)) == lines(base_run)
    # exactly the project's columns: the transformers backend's, on the same model and prompts
    hf = generate_descriptions(REPS, CTX, gen_config(smollm2, backend="transformers"), iteration=0)
    assert schema(base_run.descriptions) == schema(hf.descriptions)
    assert schema(base_run.rejects) == schema(hf.rejects)


def test_a_dpo_adapter_from_a_real_round_changes_the_output(ray_local, smollm2, base_run, s3, tmp_path):
    """The adapter of a real DPO round, applied per row as a LoRA request: from a local folder, and from object
    storage (a local S3 server) through Ray's dynamic_lora_loading_path, with the same lines."""
    pairs = pa.Table.from_pylist([
        {"cluster": 0, "prompt": [{"role": "user", "content": "Describe an unusual shirt."}], "chosen_id": f"h{i}",
         "chosen": "a shirt with one sleeve torn off at the shoulder", "rejected_id": f"e{i}",
         "rejected": "a red sports car parked on a street", "heldout": False} for i in range(4)])
    checkpoint, metrics = run_dpo(pairs, LMConfig(model=smollm2), PreferConfig(
        steps=4, batch_size=2, learning_rate=5e-4, max_length=128, cpus_per_worker=1), seed=0, workdir=tmp_path)
    assert metrics["round_reward_margin"] > 0
    with checkpoint.as_directory() as d:
        adapter = shutil.copytree(adapter_files(Path(d)), tmp_path / "iter_0" / "adapter")
    tuned = generate_descriptions(REPS, CTX, gen_config(smollm2, adapter=str(adapter)), iteration=0)
    assert set(tuned.descriptions.column("adapter").to_pylist()) == {str(adapter)}
    # the same rows and seeds as the base run, so any change is the adapter's
    assert tuned.descriptions.column("seed").to_pylist() and lines(tuned) != lines(base_run)
    for f in (f for f in adapter.rglob("*") if f.is_file()):
        s3.upload_file(str(f), "kka-tier", f"runs/tier/iter_0/adapter/{f.relative_to(adapter)}")
    remote = "s3://kka-tier/runs/tier/iter_0/adapter"
    from_s3 = generate_descriptions(REPS, CTX, gen_config(smollm2, adapter=remote), iteration=0)
    assert set(from_s3.descriptions.column("adapter").to_pylist()) == {remote}
    assert lines(from_s3) == lines(tuned)


def test_the_serve_app_writes_anomalies_through_rays_llm_deployment(ray_local, smollm2):
    overrides = ["generate.lm.max_model_len=1024", "generate.clean.similarity_threshold=null"]
    with vllm_service(smollm2, overrides) as (url, auth, _):
        body = {"normal_descriptions": [r.description for r in REPS], "domain": "clothing items", "count": 4,
                "seed": 3, "return_images": False}
        first = requests.post(url, json=body, headers=auth, timeout=600)
        assert first.status_code == 200, first.text
        anomalies = first.json()["anomalies"]
        assert anomalies and all(a["description"] and a["provenance"]["model"] == smollm2 for a in anomalies)
        assert requests.post(url, json=body, timeout=60).status_code == 401  # closed by default, as always
