"""The offline prior: corpus captions and attributes, and a few training steps end to end in Ray Train."""

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

from kka_ray.config import load_config
from kka_ray.data.attributes import ATTRIBUTES, attribute_words, measure
from kka_ray.prior.bench import render_tables
from kka_ray.prior.corpus import NOUNS, CorpusConfig, build_corpus, pad_to
from kka_ray.prior.model import PriorConfig
from kka_ray.render import RenderConfig
from kka_ray.render.diffusers_backend import DiffusersRenderer

ROOT = Path(__file__).parents[1]


def test_measured_attributes_order_images():
    imgs = np.zeros((3, 28, 28, 1), np.uint8)
    imgs[0, 10:14, 10:14] = 255  # small, thin, square
    imgs[1, 2:26, 4:24] = 120  # large, dark, thick
    imgs[2, 2:26, 12:15] = 255  # tall
    raw = measure(imgs)
    assert raw["size"][1] > raw["size"][0] and raw["brightness"][0] > raw["brightness"][1]
    assert raw["thickness"][1] > raw["thickness"][0] and raw["aspect"][2] > 5 > raw["aspect"][0] - 1
    words = attribute_words(raw, np.zeros(3, int))
    assert words["size"][1] == "large" and words["size"][0] == "small" and words["aspect"][2] == "tall"


def test_corpus_captions_and_exclusion():
    corpus = build_corpus(CorpusConfig(datasets=["fashion_mnist", "mnist"], augment={}, max_per_dataset=50,
                                       exclude=["mnist"]))
    assert corpus.images.shape == (50, 32, 32, 1) and len(corpus.class_names) == 10
    caps = corpus.captions(np.arange(50), np.random.default_rng(0))
    vocab = {w for words in ATTRIBUTES.values() for w in words}
    for cap, y in zip(caps, corpus.labels, strict=True):
        assert any(n in cap for n in NOUNS[corpus.class_names[y]]), cap
    assert any(w in " ".join(caps) for w in vocab)
    with pytest.raises(ValueError, match="every dataset"):
        build_corpus(CorpusConfig(datasets=["fashion_mnist", "mnist"], exclude=["fashion_mnist", "mnist"]))
    with pytest.raises(ValueError, match="corpus.augment names"):
        build_corpus(CorpusConfig(datasets=["mnist"], augment={"emoji": 2}))
    with pytest.raises(ValueError, match="larger than image_size"):
        pad_to(np.zeros((1, 40, 40, 1), np.uint8), 32)


def run_job(path: str, argv: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [path, *argv])
    runpy.run_path(str(ROOT / path), run_name="__main__")


def test_the_kinds_render_tables_number_their_rows_on_for_one_pool_pass():
    """bench_prior renders every kind in one pass and takes each kind's images back by row id."""
    a, b = render_tables([([("a sandal", 5), ("the digit one", 1)], 2), ([("an icon of a cat", 3)], 3)])
    assert a.column("row_id").to_pylist() == [0, 1, 2, 3] and b.column("row_id").to_pylist() == [4, 5, 6]
    assert a.column("sentence").to_pylist() == ["a sandal"] * 2 + ["the digit one"] * 2
    assert a.column("label").to_pylist() == [5, 5, 1, 1] and b.column("seed").to_pylist() == [0, 1, 2]


def test_train_and_bench_jobs_end_to_end(ray_local, tmp_path, monkeypatch):
    """A few training steps of a tiny prior, then its benchmark: record, grids, loads like any pipeline."""
    out = tmp_path / "prior"
    run_job("jobs/train_prior.py", [
        "--out", str(out), "--workdir", str(tmp_path / "work"),
        "--set", "corpus.max_per_dataset=64", "--set", "vae_channels=[8, 16, 16]", "--set", "unet_channels=[16, 32]",
        "--set", "attention_head_dim=4", "--set", "text_max_length=8", "--set", "vae_steps=3",
        "--set", "unet_steps=3", "--set", "warmup_steps=1", "--set", "batch_size=16", "--set", "cpus_per_worker=1",
    ], monkeypatch)
    assert (out / "model_index.json").is_file() and (out / "text_encoder" / "model.safetensors").is_symlink()
    with pytest.raises(SystemExit, match="already holds a prior.*--replace"):  # a committed prior is never replaced
        run_job("jobs/train_prior.py", ["--out", str(out)], monkeypatch)
    assert load_config(PriorConfig, out / "kka_prior_config.yaml").unet_steps == 3
    r = DiffusersRenderer(RenderConfig(model=str(out), steps=2, cpus_per_actor=1).model_dump(), 28, 1)
    images = r.render(["a photo of a sandal", "the digit five"], [0, 1])
    assert images.shape == (2, 32, 32, 1) and np.isfinite(images).all()

    results = tmp_path / "results"
    run_job("jobs/bench_prior.py", ["--prior", str(out), "--per-prompt", "2", "--per-group", "1", "--judge-epochs",
                                    "1", "--judge-max-train", "300", "--out", str(results), "--set", "steps=2",
                                    "--set", "cpus_per_actor=1"], monkeypatch)
    record = json.loads((results / "prior-prior.json").read_text())
    assert record["corpus"]["datasets"] == ["emoji", "mnist"]  # the default corpus: the general prior's
    for key in ("class_prompt_accuracy", "paraphrase_accuracy", "zero_shot_accuracy", "emoji_group_accuracy",
                "class_prompt_judge_accuracy", "zero_shot_judge_accuracy", "emoji_group_judge_accuracy",
                "train_minutes", "weights_mb", "corpus_images", "concepts", "images_per_s", "ray_overhead_ratio"):
        assert key in record["metrics"], key
    m = record["metrics"]
    assert 0 <= m["zero_shot_accuracy"] <= 1 and m["concepts"] == record["corpus"]["concepts"] <= 74
    for kind in ("class_prompt", "paraphrase", "zero_shot", "emoji_group"):
        assert (results / f"prior-prior-{kind}.png").is_file(), kind
