import numpy as np
import pytest
import torch
from pydantic import ValidationError

from kka_ray.data.idx import MNIST, FashionMNIST
from kka_ray.text import SYNONYMS, CleanConfig, SentenceEncoder, clean, line_key, restates_class, split_sentences

FASHION = FashionMNIST.names
NO_SIM = CleanConfig(similarity_threshold=None)


def restates(sentence: str, normal: str, names: tuple[str, ...] = FASHION, synonyms=SYNONYMS) -> bool:
    return restates_class(sentence, [normal], [n for n in names if n != normal], synonyms)


def run(texts: list, normal: str = "shirt", cfg: CleanConfig = NO_SIM, encoder=None):
    rows = [{"row_id": i, "text": t} for i, t in enumerate(texts)]
    others = [n for n in FASHION if n != normal]
    return clean(rows, [normal], others, [f"a photo of a {normal}"], cfg, encoder)


def reasons(rejected: list[dict]) -> list[tuple[str, str]]:
    return [(r["sentence"], r["reason"]) for r in rejected]


class FakeEncoder:
    """Fixed 2-d unit vectors: "near" lines point like the normal description, others are orthogonal."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.array([[1.0, 0.0] if "near" in t or t.startswith("a photo of a") else [0.0, 1.0] for t in texts])


# --- split_sentences ---------------------------------------------------------------------------------------------

def test_split_strips_list_markers():
    text = "1. A photo of a sandal.\n2) A photo of a coat.\n- A photo of a bag\n* a photo of a hat\n• a photo of a cap"
    assert split_sentences(text) == [
        "A photo of a sandal.", "A photo of a coat.", "A photo of a bag", "a photo of a hat", "a photo of a cap",
    ]


def test_split_on_sentence_ends_keeps_decimals():
    assert split_sentences("A photo of 3.5 inch heels. Is it a hat? Yes!  A scarf") == [
        "A photo of 3.5 inch heels.", "Is it a hat?", "Yes!", "A scarf",
    ]


def test_split_strips_quotes_bold_and_labels():
    text = ('"A photo of a hat." "A photo of a glove."\n“A photo of a scarf.”\n‘A photo of a kid’s belt.’\n'
            '**Sentence 1:** A photo of a belt.  Sentence 2: A photo of a tie!\n3. "**A photo of a sock**"\n'
            '"A photo of a cap". Output: a photo of a   wool   mitten')
    assert split_sentences(text) == [
        "A photo of a hat.", "A photo of a glove.", "A photo of a scarf.", "A photo of a kid’s belt.",
        "A photo of a belt.", "A photo of a tie!", "A photo of a sock", "A photo of a cap.", "a photo of a wool mitten",
    ]


def test_split_keeps_inner_quotes_apostrophes_and_case():
    assert split_sentences('A "vintage" Photo of the kids\' shoes') == ['A "vintage" Photo of the kids\' shoes']


def test_split_drops_blank_pieces():
    assert split_sentences("  \n\n 1. \n - ") == []


def test_line_key_ignores_case_whitespace_punctuation():
    assert line_key("  A Photo, of a T-shirt!! ") == line_key("a photo of a t shirt") == "a photo of a t shirt"


# --- restates_class ----------------------------------------------------------------------------------------------

def test_other_class_containing_the_normal_name_is_not_a_restatement():
    assert not restates("a photo of a t-shirt", "shirt")
    assert not restates("a photo of a T shirt", "shirt")  # separator variants of the other class are masked too
    assert not restates("a plain tee shirt", "shirt")  # the other class's synonym
    assert restates("a photo of a striped shirt", "shirt")
    assert restates("a t-shirt next to a shirt", "shirt")
    assert not restates("a photo of a striped shirt", "t-shirt")
    assert restates("a photo of a Tshirt", "t-shirt")


def test_whole_words_only():
    assert not restates("a grey sweatshirt", "shirt")
    assert not restates("a baggy hat", "bag")
    assert restates("a grey sweatshirt", "pullover")


def test_plurals_and_case():
    assert restates("Shirts on a rack", "shirt")
    assert restates("two summer DRESSES", "dress")
    assert restates("a pair of trousers", "trouser")
    assert restates("Ankle-boots in the snow", "ankle boot")


def test_synonyms():
    assert restates("a silk blouse", "shirt")
    assert restates("a button down with a collar", "shirt")
    assert restates("faded blue jeans", "trouser")
    assert restates("a knitted sweater", "pullover")
    assert restates("rubber flip flops", "sandal")
    assert restates("knee-high leather boots", "ankle boot")
    # A dress shirt is a shirt, not a dress.
    assert restates("a dress shirt", "shirt")
    assert not restates("a dress shirt", "dress")


def test_digits_word_and_numeral():
    assert restates("a handwritten 7 with a bar", "seven", MNIST.names)
    assert restates("the word Seven in ink", "seven", MNIST.names)
    assert not restates("a handwritten 17", "seven", MNIST.names)


def test_several_normal_classes():
    assert restates_class("a red handbag", ["shirt", "bag"], ["coat"], SYNONYMS)
    assert not restates_class("a red hat", ["shirt", "bag"], ["coat"], SYNONYMS)


# --- CleanConfig -------------------------------------------------------------------------------------------------

def test_config_defaults_and_validation():
    cfg = CleanConfig()
    assert (cfg.min_words, cfg.max_words, cfg.max_chars, cfg.similarity_threshold) == (3, 30, 200, 0.9)
    with pytest.raises(ValidationError, match="max_words"):
        CleanConfig(min_words=5, max_words=4)
    with pytest.raises(ValidationError, match="blank synonym"):
        CleanConfig(extra_synonyms={"shirt": [" "]})
    with pytest.raises(ValidationError):
        CleanConfig(min_word=3)


# --- clean -------------------------------------------------------------------------------------------------------

def test_each_rule_has_its_reason():
    long_words = " ".join(["word"] * 31)
    long_chars = "a " + "x" * 199 + " photo"
    kept, rejected = run([
        "", "1. ...", "A hat.", long_words, long_chars,
        "A photo of a leather sandal.", "a photo of a LEATHER sandal!", "A photo of a striped shirt.",
        "A photo of a t-shirt.",
    ])
    assert [k["sentence"] for k in kept] == ["A photo of a leather sandal.", "A photo of a t-shirt."]
    assert reasons(rejected) == [
        ("", "empty"), ("...", "empty"), ("A hat.", "too_short"), (long_words, "too_long"),
        (long_chars, "too_long"), ("a photo of a LEATHER sandal!", "duplicate"),
        ("A photo of a striped shirt.", "restates_normal_class"),
    ]


def test_word_and_char_limits_are_inclusive():
    cfg = CleanConfig(min_words=2, max_words=4, max_chars=20, similarity_threshold=None)
    kept, rejected = run(["red hat", "a red wool hat", "one red wool hat today", "a redredredred hatttt"], cfg=cfg)
    assert [k["sentence"] for k in kept] == ["red hat", "a red wool hat"]
    assert [r["reason"] for r in rejected] == ["too_long", "too_long"]


def test_duplicates_across_rows_and_within_a_row():
    kept, rejected = run(["A photo of a hat. A photo of a scarf.", '1. "a photo of a  HAT"\n2. A photo of a scarf!'])
    assert [(k["row_id"], k["sentence"]) for k in kept] == [(0, "A photo of a hat."), (0, "A photo of a scarf.")]
    assert [(r["row_id"], r["reason"]) for r in rejected] == [(1, "duplicate"), (1, "duplicate")]


def test_duplicate_counts_against_kept_lines_only():
    _, rejected = run(["A photo of a shirt.", "A photo of a shirt."])
    assert [r["reason"] for r in rejected] == ["restates_normal_class"] * 2


def test_extra_synonyms_from_config():
    cfg = CleanConfig(extra_synonyms={"shirt": ["polo"]}, similarity_threshold=None)
    assert [k["sentence"] for k in run(["a white polo with a collar"])[0]] == ["a white polo with a collar"]
    kept, rejected = run(["a white polo with a collar", "white polos with collars"], cfg=cfg)
    assert kept == [] and [r["reason"] for r in rejected] == ["restates_normal_class"] * 2


def test_malformed_rows_never_raise():
    rows = [{"row_id": 0, "text": None}, {"row_id": 1, "text": 42}, {"row_id": 2}, {"text": "a photo of a hat"},
            "a photo of a hat", None, {"row_id": 3, "text": "a photo of a wool hat"}]
    kept, rejected = clean(rows, ["shirt"], ["coat"], ["a photo of a shirt"], NO_SIM)
    assert kept == [{"row_id": 3, "line": 0, "sentence": "a photo of a wool hat"}]
    assert [r["reason"] for r in rejected] == ["malformed"] * 6
    assert [r.get("row_id") for r in rejected] == [0, 1, 2, None, None, None]


def test_provenance_is_copied_to_every_line():
    rows = [{"row_id": 7, "text": "A photo of a hat. A photo of a shirt. Hi.", "prompt": "p", "iteration": 2}]
    kept, rejected = clean(rows, ["shirt"], ["t-shirt"], ["a photo of a shirt"], NO_SIM)
    for line in kept + rejected:
        assert {k: line[k] for k in ("row_id", "prompt", "iteration")} == {"row_id": 7, "prompt": "p", "iteration": 2}
        assert "text" not in line
    assert [k["sentence"] for k in kept] == ["A photo of a hat."]
    assert reasons(rejected) == [("A photo of a shirt.", "restates_normal_class"), ("Hi.", "too_short")]


def test_similarity_encodes_all_candidates_in_one_batch():
    encoder = FakeEncoder()
    kept, rejected = run(["near the beach: a hat. A scarf on a chair. Hi. A scarf on a chair."],
                         cfg=CleanConfig(), encoder=encoder)
    assert encoder.calls == [["near the beach: a hat.", "A scarf on a chair."], ["a photo of a shirt"]]
    assert [k["sentence"] for k in kept] == ["A scarf on a chair."]
    assert reasons(rejected) == [("near the beach: a hat.", "similar_to_normal"), ("Hi.", "too_short"),
                                 ("A scarf on a chair.", "duplicate")]


def test_similarity_threshold_none_never_encodes():
    encoder = FakeEncoder()
    kept, _ = run(["near the beach: a hat."], encoder=encoder)
    assert encoder.calls == [] and len(kept) == 1


# --- the real MiniLM ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm() -> SentenceEncoder:
    return SentenceEncoder()


def test_encoder_output_is_normalised_and_padding_free(minilm):
    texts = ["a photo", "a photo of a leather sandal with thin straps", "a shirt"]
    emb = minilm.encode(texts, batch_size=2)
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # Padding in a mixed-length batch must not change an embedding.
    np.testing.assert_allclose(minilm.encode(["a photo"])[0], emb[0], atol=1e-5)
    assert minilm.encode([]).shape == (0, 384)


def test_token_states_shapes(minilm):
    hidden, mask = minilm.token_states(["a photo", "a photo of a shirt"])
    assert hidden.shape == (2, mask.shape[1], 384) and hidden.dtype == torch.float32
    assert mask.tolist()[0][-1] == 0 and mask[1].all()  # [CLS] a photo of a shirt [SEP]
    assert not hidden.requires_grad
    assert minilm.token_states(["word " * 200])[1].shape == (1, minilm.max_length)


def test_similar_to_normal_with_minilm(minilm):
    normal = ["a photo of a shirt"]
    near, far = "a photo of a shirt.", "a photo of a leather sandal"
    cos = minilm.encode([near, far]) @ minilm.encode(normal).T
    assert cos[0, 0] > 0.95 and cos[1, 0] < 0.6  # seen: 0.995 and 0.412
    # No normal class name here, so the line reaches the similarity rule instead of the restatement rule.
    rows = [{"row_id": 0, "text": f"{near}\n{far}"}]
    kept, rejected = clean(rows, [], [], normal, CleanConfig(similarity_threshold=0.8), minilm)
    assert [k["sentence"] for k in kept] == [far]
    assert reasons(rejected) == [(near, "similar_to_normal")]


def test_preamble_lines_are_rejected():
    rows = [{"row_id": 0, "text": "Here are five new sentences:\na photo of a red dress\nSure, a photo of a bag"}]
    kept, rejected = clean(rows, ["shirt"], [], [], NO_SIM)
    assert [k["sentence"] for k in kept] == ["a photo of a red dress"]
    assert [r["reason"] for r in rejected] == ["preamble", "preamble"]


def test_duplicates_carry_across_calls_with_a_shared_key_set():
    seen: set[str] = set()
    first, _ = clean([{"row_id": 0, "text": "a photo of a red dress"}], ["shirt"], [], [], NO_SIM, kept_keys=seen)
    second, rejected = clean([{"row_id": 1, "text": "A photo of a red dress."}], ["shirt"], [], [], NO_SIM,
                             kept_keys=seen)
    assert len(first) == 1 and not second and rejected[0]["reason"] == "duplicate"


def test_last_line_of_a_truncated_completion_is_rejected():
    rows = [{"row_id": 0, "text": "a photo of a red dress\na woman standing in a", "truncated": True},
            {"row_id": 1, "text": "a photo of a green bag", "truncated": False}]
    kept, rejected = clean(rows, ["shirt"], [], [], NO_SIM)
    assert [k["sentence"] for k in kept] == ["a photo of a red dress", "a photo of a green bag"]
    assert [(r["sentence"], r["reason"]) for r in rejected] == [("a woman standing in a", "truncated")]
