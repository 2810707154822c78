"""The general prior's corpus (emoji from a small fixture), the overlap refusal, representatives that differ on a
dataset without captions, and the controls' pure parts."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kka_ray.config import ConfigError
from kka_ray.data.base import ImageSet
from kka_ray.data.emoji import BACKGROUND, EmojiDataset, load_png, noun_of
from kka_ray.paths import assets_dir
from kka_ray.prior.corpus import (
    TEMPLATES,
    CorpusConfig,
    augment,
    build_corpus,
    random_captions,
    vocabulary,
    with_articles,
)
from kka_ray.render import RenderConfig, resolve_render
from kka_ray.stages.select import normal_descriptions, select_representatives

ENTRIES = [  # (name, short names, category, subcategory, image)
    ("T-SHIRT", ["shirt", "tshirt"], "Objects", "clothing", "1f455.png"),
    ("CAT", ["cat2"], "Animals & Nature", "animal-mammal", "1f408.png"),
    ("CLOCK FACE ONE OCLOCK", ["clock1"], "Travel & Places", "time", "1f550.png"),
    ("WOMANS BOOTS", ["boot"], "Objects", "clothing", "1f462.png"),
    ("Egypt Flag", ["flag-eg"], "Flags", "country-flag", "1f1ea-1f1ec.png"),
    ("KEYCAP 1", ["one"], "Symbols", "keycap", "0031-fe0f-20e3.png"),
    ("EMOJI MODIFIER FITZPATRICK TYPE-1-2", ["skin-tone-2"], "Component", "skin-tone", "1f3fb.png"),
]


def _png(path, seed: int) -> None:
    """A 64-px RGBA icon: a transparent frame around an opaque, left-heavy (asymmetric) shape."""
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[8:56, 8:40, :3] = 200 + seed
    rgba[8:56, 8:40, 3] = 255
    Image.fromarray(rgba, "RGBA").save(path)


@pytest.fixture
def emoji_root(tmp_path, monkeypatch):
    """An assets folder whose emoji sets are the fixture (MNIST linked from the real assets)."""
    root = tmp_path / "emoji"
    for k, s in enumerate(("twitter", "google")):
        (root / s / "64").mkdir(parents=True)
        entries = ENTRIES if s == "twitter" else ENTRIES[:2]  # google lacks some concepts
        (root / s / "emoji.json").write_text(json.dumps([
            {"name": n, "short_names": sn, "category": c, "subcategory": sub, "image": img, f"has_img_{s}": True}
            for n, sn, c, sub, img in entries]))
        for i, (*_, img) in enumerate(entries):
            _png(root / s / "64" / img, 10 * k + i)
    (tmp_path / "mnist").symlink_to(assets_dir() / "mnist")
    monkeypatch.setenv("KKA_ASSETS", str(tmp_path))
    return root


def test_emoji_concepts_skip_glyphs_and_merge_sets(emoji_root):
    ds = EmojiDataset(root=emoji_root)
    concepts = ds.concepts()
    assert [c.name for c in concepts] == ["t-shirt", "cat", "clock face one oclock", "woman's boots"]
    assert concepts[0].wordings == ("t-shirt", "shirt", "tshirt") and len(concepts[0].images) == 2
    assert len(concepts[3].images) == 1 and concepts[1].group == "mammal" and concepts[2].group is None
    data = ds.load("train")
    assert data.images.shape == (6, 28, 28, 1) and list(np.bincount(data.labels)) == [2, 2, 1, 1]
    assert ds.flippable() == {"t-shirt": True, "cat": True, "clock face one oclock": False, "woman's boots": True}
    with pytest.raises(ValueError, match="unknown sets"):
        EmojiDataset(root=emoji_root, options={"sets": ["apple"]}).concepts()
    with pytest.raises(FileNotFoundError, match="emoji.json"):
        EmojiDataset(root=emoji_root / "nowhere").concepts()


def test_background_rule_and_names(emoji_root):
    img = load_png(emoji_root / "twitter" / "64" / "1f455.png", 64)
    assert img[0, 0] == BACKGROUND == 0  # transparent -> black, whatever the RGB under alpha 0
    assert img[30, 20] == 200  # opaque grey keeps its luma
    assert noun_of("WOMANS BOOTS") == "woman's boots" and with_articles("a ice skate") == "an ice skate"


def test_augmentation_scales_shifts_and_mirrors_only_where_allowed():
    img = np.zeros((1, 32, 32, 1), np.uint8)
    img[0, 4:28, 2:12] = 255  # ink on the left only
    rng = np.random.default_rng(0)
    fixed = augment(np.repeat(img, 40, 0), 1, np.zeros(40, bool), rng)
    free = augment(np.repeat(img, 40, 0), 1, np.ones(40, bool), rng)
    left = lambda x: x[..., :16, 0].sum((1, 2)) > x[..., 16:, 0].sum((1, 2))  # noqa: E731
    assert left(fixed).all() and not left(free).all()  # mirrored copies only where flippable
    assert len({int((x > 0).sum()) for x in fixed}) > 3  # sizes differ (scale 0.8-1)
    assert fixed.dtype == np.uint8 and fixed.shape == (40, 32, 32, 1) and (fixed[:, 0, 0] == 0).all()


def test_corpus_of_emoji_and_digits_records_what_it_holds(emoji_root):
    corpus = build_corpus(CorpusConfig(datasets=["emoji", "mnist"], max_per_dataset=30, augment={"emoji": 2}))
    assert corpus.sources["emoji"]["images"] == 18 and corpus.sources["mnist"]["images"] == 30
    assert "CC-BY" in corpus.sources["emoji"]["licence"]["twitter"]
    caps = corpus.captions(np.arange(18), np.random.default_rng(0))
    for cap, y in zip(caps, corpus.labels[:18], strict=True):
        assert any(w in cap for w in corpus.nouns[y]), cap
    prompts = random_captions(list(corpus.nouns), 20, np.random.default_rng(1))
    assert len(set(prompts)) > 10 and all(isinstance(p, str) for p in prompts)
    assert vocabulary(["emoji", "mnist"]) == list(corpus.nouns)  # what the prior can be asked to draw, in its order


@pytest.fixture
def priors(tmp_path, monkeypatch):
    import kka_ray.render.prior as prior_module

    for name, seen in (("general", ["emoji", "mnist"]), ("general-no-mnist", ["emoji", "fashion_mnist"]),
                       ("in-domain", ["fashion_mnist", "mnist"])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model_index.json").write_text("{}")
        (tmp_path / name / "kka_prior_corpus.json").write_text(json.dumps({"datasets": seen}))
    monkeypatch.setattr(prior_module, "PRIORS_DIR", tmp_path)
    return tmp_path


def test_prior_overlap_is_refused_unless_named_the_control(priors):
    assert resolve_render(RenderConfig(), "fashion_mnist").prior == "general"
    assert resolve_render(RenderConfig(), "mnist").prior == "general-no-mnist"
    assert resolve_render(RenderConfig(), "image_folder").prior == "general"
    with pytest.raises(ConfigError, match=r"in-domain.*'fashion_mnist'.*allow_prior_overlap"):
        resolve_render(RenderConfig(prior="in-domain"), "fashion_mnist")
    ok = resolve_render(RenderConfig(prior="in-domain", allow_prior_overlap=True), "fashion_mnist")
    assert ok.prior == "in-domain"
    with pytest.raises(ConfigError, match="render.model"):  # a local prior folder is checked too
        resolve_render(RenderConfig(model=str(priors / "in-domain")), "mnist")
    (priors / "general-no-mnist" / "kka_prior_corpus.json").unlink()
    with pytest.raises(ConfigError, match="general-no-mnist: not trained"):
        resolve_render(RenderConfig(), "mnist")


def test_representatives_differ_on_a_dataset_without_captions():
    rng = np.random.default_rng(0)
    images = np.zeros((60, 28, 28, 1), np.uint8)
    for i in range(60):  # three sizes of square, the measured attribute the clusters follow
        side = (6, 12, 20)[i % 3] + int(rng.integers(0, 2))
        images[i, 4:4 + side, 4:4 + side] = 200
    normals = ImageSet(images, np.zeros(60, np.int64), ("shirt",), [("a photo of a shirt",)] * 60,
                       np.array([f"train:{i}" for i in range(60)]), "train")
    texts = normal_descriptions(normals, "auto")
    assert texts[0].startswith("a photo of a shirt, ") and len(set(texts)) > 3
    z = (images > 0).sum((1, 2, 3))[:, None].astype(float) + rng.normal(0, 0.1, (60, 1))
    reps = select_representatives(z, normals.ids, texts, 3, 0, "ledoit_wolf")
    assert len({r.description for r in reps}) == 3
    assert normal_descriptions(normals, "dataset") == ["a photo of a shirt"] * 60
    captioned = ImageSet(images[:2], np.zeros(2, np.int64), ("x",), [("a red rose",), ("a white lily",)],
                         np.array(["a", "b"]), "train")
    assert normal_descriptions(captioned, "auto") == ["a red rose", "a white lily"]


def test_held_out_emoji_wordings_are_not_training_templates():
    from kka_ray.prior.bench import HELD_OUT_TEMPLATES

    stems = {t.split("{")[0] for t in TEMPLATES}
    assert not {t.split("{")[0] for t in HELD_OUT_TEMPLATES} & stems


def test_controls_noise_and_record(tmp_path):
    from kka_ray.controls import METHODS, ControlsConfig, noise_images, write

    x = noise_images(9, (28, 28, 1), np.random.default_rng(0))
    assert x.shape == (9, 28, 28, 1) and x.dtype == np.uint8 and 100 < x.mean() < 156
    rows = [{"class": c, "seed": s, "anomalies": 100.0, **{m: 70 + 5 * j + k + s for j, m in enumerate(METHODS)}}
            for k, c in enumerate(("a", "b", "c")) for s in (0, 1)]
    cfg = ControlsConfig(run_dir=str(tmp_path / "runs"), results_dir=str(tmp_path / "docs"))
    m = write(cfg, pd.DataFrame(rows), "cmd")
    assert m["classes"] == 3 and m["seeds"] == 2
    assert m["gain_oracle"] == pytest.approx(25.0) and m["gain_oracle_ci95"] == pytest.approx(0.0)
    assert m["auroc_no_anomalies"] == pytest.approx(71.5)
    assert m["kka0_general_minus_noise"] == pytest.approx(10.0) and m["kka0_general_minus_prior_only"] == 5.0
    record = json.loads((tmp_path / "docs" / "kka-controls-fmnist.json").read_text())
    assert set(record["metrics"]) >= {f"auroc_{m}" for m in METHODS} | {"gain_noise_ci95", "gain_kka0_general"}
    assert (tmp_path / "docs" / "kka-controls-fmnist.png").is_file()
