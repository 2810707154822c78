"""The KKA run's seed reaches select and generation: seeds of a benchmark repeat the whole of KKA (issue 13)."""

import numpy as np
import yaml
from tiny_models import save_tiny_llama

from kka_ray.llm import LMConfig
from kka_ray.llm.hf import HFGenerator
from kka_ray.loop import KKAConfig, load_run_config, open_run, run_seeded
from kka_ray.stages.generate import GenerateConfig, NormalContext, prompt_table
from kka_ray.stages.select import Representative

REPS = [Representative(0, "train:1", "a photo of a shirt", 0.5, 10),
        Representative(1, "train:7", "a photo of a shirt with a collar", 0.7, 12)]
CTX = NormalContext(task="fashion_mnist/shirt/seed0", domain="clothing items", normal_names=("shirt",),
                    other_names=("t-shirt", "dress"), normal_descriptions=("a photo of a shirt",))


def row_seeds_of(cfg: KKAConfig, samples: int = 3) -> list[int]:
    gen = run_seeded(cfg).generate.model_copy(update={"samples_per_representative": samples})
    return prompt_table(REPS, CTX, gen, iteration=0).column("seed").to_pylist()


def test_unset_seeds_take_the_run_seed():
    cfg = run_seeded(KKAConfig(seed=4))
    assert (cfg.select.seed, cfg.generate.seed) == (4, 4)
    assert row_seeds_of(KKAConfig(seed=1)) != row_seeds_of(KKAConfig(seed=0))
    assert row_seeds_of(KKAConfig(seed=1)) == row_seeds_of(KKAConfig(seed=1))


def test_an_explicit_seed_wins_over_the_run_seed():
    given = {"select": {"seed": 5}, "generate": {"seed": 7}}
    cfg = run_seeded(KKAConfig.model_validate({"seed": 1, **given}))
    assert (cfg.select.seed, cfg.generate.seed) == (5, 7)
    assert row_seeds_of(KKAConfig.model_validate({"seed": 1, **given})) == row_seeds_of(
        KKAConfig.model_validate({"seed": 2, **given}))


def test_without_a_run_the_seed_is_zero():
    tables = [prompt_table(REPS, CTX, GenerateConfig(samples_per_representative=2, seed=s), 0) for s in (None, 0)]
    assert tables[0].column("seed").equals(tables[1].column("seed"))


def test_config_yaml_keeps_the_seeds_as_given_and_an_older_run_resumes_unchanged(tmp_path):
    open_run(KKAConfig(run_dir=str(tmp_path), name="r", seed=3), resume=False)
    path = tmp_path / "r" / "config.yaml"
    saved = yaml.safe_load(path.read_text())
    assert saved["seed"] == 3 and saved["select"]["seed"] is None and saved["generate"]["seed"] is None
    # A run folder from before this change has both seeds written out as 0: it goes on with them.
    saved["select"]["seed"] = saved["generate"]["seed"] = 0
    path.write_text(yaml.safe_dump(saved))
    resumed = run_seeded(load_run_config(str(tmp_path / "r"), []))
    assert (resumed.seed, resumed.select.seed, resumed.generate.seed) == (3, 0, 0)


def test_two_run_seeds_write_different_text(tmp_path):
    lm = HFGenerator(LMConfig(model=str(save_tiny_llama(tmp_path / "lm")), max_new_tokens=12,
                              cpus_per_actor=1).model_dump())

    def texts(seed: int) -> list[str]:
        gen = run_seeded(KKAConfig(seed=seed)).generate.model_copy(update={"samples_per_representative": 1})
        table = prompt_table(REPS, CTX, gen, iteration=0)
        messages = np.empty(len(table), dtype=object)  # one cell per row, each a list of chat turns
        messages[:] = table.column("messages").to_pylist()
        return [str(t) for t in lm({"messages": messages, "seed": table.column("seed").to_numpy()})["generated_text"]]

    assert texts(0) == texts(0)
    assert texts(0) != texts(1)
