"""Duplicates are dropped in generation order (issue 13): the cleaner in the stream, whatever order the LM pool's
batches reach it in, and the final pass of `collect` give the tables of one cleaning pass in row_id order."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from kka_ray.stages import generate
from kka_ray.stages.generate import Cleaner, GenerateConfig, NormalContext
from kka_ray.stages.render import collect
from kka_ray.text.clean import CleanConfig, clean_lines, drop_later_copies

CTX = NormalContext(task="fashion_mnist/shirt/seed0", domain="clothing items", normal_names=("shirt",),
                    other_names=("t-shirt", "dress"), normal_descriptions=("a photo of a shirt",))
CFG = CleanConfig(similarity_threshold=0.9)
PROVENANCE = {"model": "m", "adapter": "", "backend": "hf", "temperature": 0.9, "top_p": 0.95, "max_new_tokens": 40}
COMPLETIONS = [
    "A photo of a red hat. A woman in a wool scarf.",
    "A woman in a wool scarf! A photo of a striped shirt.\na photo of a yellow kite",
    "Hi. a photo of a red hat",  # a later copy the similarity rule rejects on its own: a duplicate
    "A green bag on a chair. A green bag on a chair.",
    "a GREEN bag on a chair",
    "Here are some:\nA blue sock on the floor.",
    "a blue sock on the floor\nA photo of a yellow kite.",  # an earlier copy failed a rule: this one is kept
    "A green bag on a chair",
]


class FakeEncoder:
    """2-d unit vectors: a line opening "a photo of a" (lower case) points like the normal description."""

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.array([[1.0, 0.0] if t.startswith("a photo of a") else [0.0, 1.0] for t in texts])


class FakeStream:
    """What `collect` reads of a Ray Dataset: numpy batches, here in a chosen arrival order."""

    def __init__(self, batches: list[dict[str, np.ndarray]]):
        self.batches = batches

    def iter_batches(self, batch_size=None, batch_format="numpy"):
        yield from self.batches


@pytest.fixture
def cleaner(monkeypatch):
    monkeypatch.setattr("kka_ray.text.encoder.SentenceEncoder", FakeEncoder)
    threads = torch.get_num_threads()
    yield lambda: Cleaner(CTX, CFG.model_dump(), PROVENANCE)
    torch.set_num_threads(threads)  # the actor sets one thread for its process


def lm_batch(rows: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"row_id": rows, "generated_text": [COMPLETIONS[r] for r in rows],
                         "num_generated_tokens": [10] * len(rows), "prompt": [f"p{r}" for r in rows],
                         "seed": [100 + r for r in rows]})


def rendered(lines: pd.DataFrame) -> dict[str, np.ndarray]:
    """The render stage on a cleaned batch: kept lines get an image, rejected ones pass through."""
    n, keep = len(lines), (lines["reason"] == "").to_numpy()
    return {**{c: lines[c].to_numpy() for c in lines.columns}, "image": np.zeros((n, 2, 2, 1), np.uint8),
            "rendered": keep, "render_seed": lines["row_id"].to_numpy(), "render_seconds": np.ones(n),
            "render_start": np.zeros(n), "render_end": np.ones(n)}


def stream_in(order: list[list[int]], make_cleaner):
    cleaner = make_cleaner()
    return collect(FakeStream([rendered(cleaner(lm_batch(rows))) for rows in order]), "r", cleaned=True)


def test_later_copies_become_duplicates_in_generation_order():
    rows = [0, 1, 1, 1, 2, 3]
    sentences = ["a red hat", "A red hat!", "Hi.", "a blue kite", "a red hat", "a blue kite"]
    reasons = ["", "", "too_short", "similar_to_normal", "similar_to_normal", ""]
    assert drop_later_copies(rows, sentences, reasons) == [
        "", "duplicate", "too_short", "similar_to_normal", "duplicate", ""]


@pytest.mark.parametrize("order", [
    [[6, 7], [4, 5], [2, 3], [0, 1]],  # batches reversed
    [[4, 5], [0, 1], [6, 7], [2, 3]],  # batches shuffled
    [[7, 2, 5], [4, 0], [3, 6, 1]],  # rows mixed across batches, each batch out of order
])
def test_kept_and_rejected_lines_do_not_depend_on_arrival_order(cleaner, order):
    in_order = stream_in([[0, 1], [2, 3], [4, 5], [6, 7]], cleaner)
    other = stream_in(order, cleaner)
    assert other.anomalies.equals(in_order.anomalies)
    assert other.rejects.equals(in_order.rejects)
    # Both are what one cleaning pass over all rows in generation order gives.
    rows = lm_batch(list(range(len(COMPLETIONS)))).rename(columns={"generated_text": "text"}).to_dict("records")
    lines = clean_lines(rows, CTX.normal_names, CTX.other_names, CTX.normal_descriptions, CFG, FakeEncoder())
    kept = [{"row_id": x["row_id"], "sentence": x["sentence"]} for x in lines if not x["reason"]]
    rejected = [{k: x[k] for k in ("row_id", "sentence", "reason")} for x in lines if x["reason"]]
    assert in_order.anomalies.select(["row_id", "sentence"]).to_pylist() == kept
    assert in_order.rejects.select(["row_id", "sentence", "reason"]).to_pylist() == rejected
    assert [(x["row_id"], x["sentence"]) for x in kept] == [
        (0, "A photo of a red hat."), (0, "A woman in a wool scarf."), (3, "A green bag on a chair."),
        (5, "A blue sock on the floor."), (6, "A photo of a yellow kite.")]
    assert [(x["row_id"], x["sentence"]) for x in rejected if x["reason"] == "duplicate"] == [
        (1, "A woman in a wool scarf!"), (2, "a photo of a red hat"), (3, "A green bag on a chair."),
        (4, "a GREEN bag on a chair"), (6, "a blue sock on the floor"), (7, "A green bag on a chair")]


def test_the_knowledge_path_settles_duplicates_too(cleaner, monkeypatch):
    def blocks(order: list[list[int]]):
        make = cleaner()
        return [pa.Table.from_pandas(make(lm_batch(rows)), preserve_index=False) for rows in order]

    def described(order: list[list[int]]):
        stream = type("Stream", (), {"to_arrow_refs": lambda self: blocks(order)})()
        monkeypatch.setattr(generate, "description_stream", lambda *args: stream)
        monkeypatch.setattr(generate.ray, "get", lambda refs: refs)
        return generate.generate_descriptions([], CTX, GenerateConfig())

    in_order, reversed_ = described([[0, 1], [2, 3], [4, 5], [6, 7]]), described([[6, 7], [4, 5], [2, 3], [0, 1]])
    assert reversed_.descriptions.equals(in_order.descriptions) and reversed_.rejects.equals(in_order.rejects)
    assert in_order.descriptions.column("row_id").to_pylist() == [0, 0, 3, 5, 6]
    assert in_order.stats["rejected_duplicate"] == reversed_.stats["rejected_duplicate"] == 6


@pytest.mark.parametrize("restart_after", [1, 2, 3])
def test_a_restarted_cleaner_gives_the_same_tables(cleaner, restart_after):
    """Ray restarts a dead cleaner actor with empty memory of the lines it kept; the final pass in row_id
    order makes that memory an optimisation, so the tables match an undisturbed stream's."""
    order = [[0, 1], [2, 3], [4, 5], [6, 7]]
    first, second = cleaner(), cleaner()  # `second` is the restarted actor: it saw none of the earlier rows
    batches = [rendered((first if k < restart_after else second)(lm_batch(rows))) for k, rows in enumerate(order)]
    restarted = collect(FakeStream(batches), "r", cleaned=True)
    undisturbed = stream_in(order, cleaner)
    assert restarted.anomalies.equals(undisturbed.anomalies) and restarted.rejects.equals(undisturbed.rejects)
