"""The knowledge job end to end (tiny LM), and the real offline SmolLM2 (slow)."""

import pyarrow.parquet as pq
import pytest
from tiny_models import save_tiny_llama

from kka_ray.config import load_config
from kka_ray.knowledge import KnowledgeConfig, bare_throughput, report, run_knowledge
from kka_ray.llm import LMConfig
from kka_ray.stages.generate import GenerateConfig, NormalContext, generate_descriptions
from kka_ray.stages.select import Representative
from kka_ray.text.clean import CleanConfig


def test_knowledge_job_writes_tables_and_config(ray_local, tmp_path):
    model = save_tiny_llama(tmp_path / "lm")
    cfg = load_config(KnowledgeConfig, None, [
        "name=k", f"run_dir={tmp_path}", "normal_classes=[sandal]", "select.k=2", "select.features.image_size=64",
        "generate.samples_per_representative=3", f"generate.lm.model={model}", "generate.lm.max_new_tokens=16",
        "generate.lm.batch_size=4", "generate.lm.cpus_per_actor=1", "generate.clean.min_words=1",
        "generate.clean.similarity_threshold=null", "generate.clean.drop_truncated=false",
    ])
    run = run_knowledge(cfg)
    assert len(run.reps) == 2 and run.ctx.normal_names == ("sandal",) and "shirt" in run.ctx.other_names
    assert run.ctx.normal_descriptions == ("a photo of a sandal",)
    out = tmp_path / "k"
    assert load_config(KnowledgeConfig, out / "config.yaml") == cfg
    assert pq.read_table(out / "representatives.parquet").num_rows == 2
    n = pq.read_table(out / "descriptions.parquet").num_rows + pq.read_table(out / "rejects.parquet").num_rows
    assert n == run.result.stats["lines"]
    text = report(run)
    assert "completions 6" in text and "tokens/s" in text
    bare = bare_throughput(run.reps, run.ctx, cfg.generate, cfg.iteration)
    assert bare["bare_tokens"] > 0 and bare["bare_tokens_per_s"] > 0


@pytest.mark.slow
def test_offline_smollm2_writes_clothing_descriptions(ray_local):
    ctx = NormalContext(task="fashion_mnist/shirt/seed0", domain="clothing items", normal_names=("shirt",),
                        other_names=("t-shirt", "dress", "coat", "sandal", "bag"),
                        normal_descriptions=("a photo of a shirt",))
    cfg = GenerateConfig(samples_per_representative=4, lm=LMConfig(batch_size=4, max_new_tokens=40),
                         clean=CleanConfig())
    result = generate_descriptions([Representative(0, "train:0", "a photo of a shirt", 0.0, 1)], ctx, cfg)
    assert result.stats["completions"] == 4 and result.stats["tokens"] > 40
    kept = result.descriptions.column("sentence").to_pylist()
    assert len(kept) >= 3
    # The few-shot format holds: short captions, none restating the normal class.
    assert all(len(s.split()) <= 30 and " shirt" not in f" {s.lower()}" for s in kept)
    assert set(result.descriptions.column("model").to_pylist()) == {"SmolLM2-135M-Instruct (offline GGUF)"}
