"""Eq. 6 (hard / easy split), Eq. 7 pair building and Eq. 8 (add / rep) on hand-made tables."""

import numpy as np
import pyarrow as pa
import pytest

from kka_ray.stages.evaluate import Split, hard_easy_split, with_split
from kka_ray.stages.generate import GenerateConfig
from kka_ray.stages.prefer import PreferConfig, build_pairs, dpo_records, mark_trained
from kka_ray.stages.update import origin_counts, update_anomalies


def table(n, iteration=0, hard=None, margin=None, clusters=None):
    cols = {
        "anomaly_id": [f"i{iteration}-{k}" for k in range(n)],
        "iteration": np.full(n, iteration),
        "cluster": np.asarray(clusters if clusters is not None else np.zeros(n, dtype=int)),
        "representative_text": ["a photo of a shirt"] * n,
        "sentence": [f"anomaly {iteration}-{k}" for k in range(n)],
        "image": pa.FixedShapeTensorArray.from_numpy_ndarray(np.full((n, 4, 4, 1), iteration, np.uint8)),
    }
    if hard is not None:
        cols["hard"], cols["margin"] = np.asarray(hard), np.asarray(margin, dtype=float)
    return pa.table(cols)


def test_split_uses_the_largest_validation_distance():
    s = hard_easy_split(np.array([0.5, 1.0, 2.0, 3.0]), np.array([0.1, 1.5, 2.0]))
    assert s.threshold == 2.0
    assert s.hard.tolist() == [True, True, False, False]  # strictly below the boundary
    assert (s.hard_count, s.easy_count, s.hard_share) == (2, 2, 0.5)


def test_split_quantile_and_errors():
    val = np.arange(101, dtype=float)
    s = hard_easy_split(np.array([49.0, 50.0, 51.0]), val, quantile=0.5)
    assert s.threshold == 50.0 and s.hard.tolist() == [True, False, False]
    with pytest.raises(ValueError, match="validation normal"):
        hard_easy_split(np.array([1.0]), np.array([]))


def test_with_split_records_distance_boundary_and_verdict():
    s = hard_easy_split(np.array([1.0, 2.0, 3.0]), np.array([2.5]))
    out = with_split(table(3), s, iteration=4)
    assert out.column("hard").to_pylist() == [True, True, False]
    assert out.column("margin").to_pylist() == pytest.approx([0.4, 0.8, 1.2])
    assert out.column("boundary").to_pylist() == [2.5] * 3 and out.column("judged_iteration").to_pylist() == [4] * 3
    assert isinstance(s, Split) and s.scores.tolist() == [1.0, 2.0, 3.0]


def test_rep_replaces_easiest_easy_with_hardest_new_and_keeps_count():
    prev = table(6, iteration=0, hard=[True, False, False, True, False, True], margin=[0.5, 1.5, 3, 0.9, 2, 0.8])
    new = table(4, iteration=1, hard=[False, True, False, False], margin=[1.4, 0.7, 5.0, 1.2])
    out = update_anomalies(prev, new, "rep")
    assert len(out) == 6
    ids = out.column("anomaly_id").to_pylist()
    # the three easy ones go, the hard i0-0, i0-3, i0-5 stay; the three hardest new ones (margins 0.7, 1.2,
    # 1.4, not 5.0) come in, in generation order
    assert ids == ["i0-0", "i0-3", "i0-5", "i1-0", "i1-1", "i1-3"]
    assert origin_counts(out) == {0: 3, 1: 3}
    assert out.column("hard").to_pylist() == [True, True, True, False, True, False]  # verdicts kept


def test_rep_with_fewer_new_than_easy_and_add_mode():
    prev = table(4, hard=[False] * 4, margin=[1, 2, 3, 4])
    new = table(2, iteration=1, hard=[False, False], margin=[2, 2])
    out = update_anomalies(prev, new, "rep")
    assert out.column("anomaly_id").to_pylist() == ["i0-0", "i0-1", "i1-0", "i1-1"]  # the closer easy ones stay
    new5 = table(5, iteration=1, hard=[False] * 5, margin=[2] * 5)
    assert origin_counts(update_anomalies(prev, new5, "add")) == {0: 4, 1: 5}
    with pytest.raises(ValueError, match="'add' or 'rep'"):
        update_anomalies(prev, new, "swap")


def test_rep_keeps_everything_when_all_are_hard():
    prev = table(3, hard=[True] * 3, margin=[0.1, 0.2, 0.3])
    out = update_anomalies(prev, table(3, iteration=1, hard=[True] * 3, margin=[0.1] * 3), "rep")
    assert out.column("anomaly_id").to_pylist() == prev.column("anomaly_id").to_pylist()


def test_pairs_within_a_prompt_with_fallback_and_cap():
    gen = GenerateConfig()
    a = table(7, hard=[True, False, False, True, True, False, False], margin=[0] * 7,
              clusters=[0, 0, 0, 1, 2, 2, 2])
    pairs = build_pairs(a, gen, "clothing items", PreferConfig(pairs_per_hard=2), seed=0)
    rows = pairs.to_pylist()
    by_id = dict(zip(a.column("anomaly_id").to_pylist(), a.column("cluster").to_pylist(), strict=True))
    hard = {i for i, h in zip(a.column("anomaly_id").to_pylist(), a.column("hard").to_pylist(), strict=True) if h}
    assert len(rows) == 6  # 3 hard x 2 easy each
    for r in rows:
        assert r["chosen_id"] in hard and r["rejected_id"] not in hard
        if by_id[r["chosen_id"]] != 1:  # clusters 0 and 2 have easy ones of their own
            assert by_id[r["rejected_id"]] == by_id[r["chosen_id"]]
        assert r["prompt"][-1]["role"] == "user" and "clothing items" in r["prompt"][-1]["content"]
    assert {r["chosen_id"] for r in rows if by_id[r["chosen_id"]] == 1} == {"i0-3"}  # borrowed easy ones
    assert len({(r["chosen_id"], r["rejected_id"]) for r in rows}) == 6  # distinct pairs
    capped = build_pairs(a, gen, "clothing items", PreferConfig(pairs_per_hard=2, max_pairs=4), seed=0)
    assert len(capped) == 4
    rec = dpo_records(capped)[0]
    assert rec["chosen"][0]["role"] == "assistant" and isinstance(rec["prompt"], list)


def test_no_pairs_without_hard_or_easy():
    gen = GenerateConfig()
    none_hard = table(3, hard=[False] * 3, margin=[1, 2, 3])
    all_hard = table(3, hard=[True] * 3, margin=[1, 2, 3])
    assert len(build_pairs(none_hard, gen, "x", PreferConfig(), seed=0)) == 0
    assert len(build_pairs(all_hard, gen, "x", PreferConfig(), seed=0)) == 0


def test_trained_pairs_are_what_the_steps_consume():
    gen = GenerateConfig()
    a = table(7, hard=[True, False, False, True, True, False, False], margin=[0] * 7, clusters=[0, 0, 0, 1, 2, 2, 2])
    pairs = build_pairs(a, gen, "clothing items", PreferConfig(pairs_per_hard=2), seed=0)
    marked = mark_trained(pairs, PreferConfig(steps=2, batch_size=2), seed=0)
    assert marked.column("trained").to_pylist().count(True) == 4  # 2 steps x 2 pairs
    assert marked.column("trained").to_pylist() == mark_trained(pairs, PreferConfig(steps=2, batch_size=2),
                                                                seed=0).column("trained").to_pylist()
    assert all(mark_trained(pairs, PreferConfig(steps=20), seed=0).column("trained").to_pylist())  # fewer: all
