"""The offline prior: corpus captions and attributes, and a few training steps end to end in Ray Train."""

import numpy as np
import pytest

from kka_ray.config import load_config
from kka_ray.prior.corpus import ATTRIBUTES, NOUNS, CorpusConfig, attribute_words, build_corpus, measure, pad_to
from kka_ray.prior.model import PriorConfig
from kka_ray.render import RenderConfig
from kka_ray.render.diffusers_backend import DiffusersRenderer


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
    corpus = build_corpus(CorpusConfig(max_per_dataset=50, exclude=["mnist"]))
    assert corpus.images.shape == (50, 32, 32, 1) and len(corpus.class_names) == 10
    caps = corpus.captions(np.arange(50), np.random.default_rng(0))
    vocab = {w for words in ATTRIBUTES.values() for w in words}
    for cap, y in zip(caps, corpus.labels, strict=True):
        assert any(n in cap for n in NOUNS[corpus.class_names[y]]), cap
    assert any(w in " ".join(caps) for w in vocab)
    with pytest.raises(ValueError, match="every dataset"):
        build_corpus(CorpusConfig(exclude=["fashion_mnist", "mnist"]))
    with pytest.raises(ValueError, match="larger than image_size"):
        pad_to(np.zeros((1, 40, 40, 1), np.uint8), 32)


def test_a_few_training_steps_end_to_end(ray_local, tmp_path):
    from kka_ray.prior.train import train_prior

    cfg = load_config(PriorConfig, None, [
        "corpus.max_per_dataset=64", "vae_channels=[8, 16, 16]", "unet_channels=[16, 32]", "attention_head_dim=4",
        "text_max_length=8", "vae_steps=3", "unet_steps=3", "warmup_steps=1", "batch_size=16",
        "cpus_per_worker=1",
    ])
    out = train_prior(cfg, tmp_path / "prior", tmp_path / "work")
    assert (out / "model_index.json").is_file() and (out / "text_encoder" / "model.safetensors").is_symlink()
    r = DiffusersRenderer(RenderConfig(model=str(out), steps=2, cpus_per_actor=1).model_dump(), 28, 1)
    images = r.render(["a photo of a sandal", "the digit five"], [0, 1])
    assert images.shape == (2, 32, 32, 1) and np.isfinite(images).all()
