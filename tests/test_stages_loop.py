"""Eq. 6 (hard / easy split), Eq. 7 pair building and Eq. 8 (add / rep) on hand-made tables."""

import numpy as np
import pyarrow as pa
import pytest

from kka_ray.stages.evaluate import hard_easy_split, with_split
from kka_ray.stages.generate import GenerateConfig
from kka_ray.stages.prefer import PreferConfig, build_pairs, dpo_records
from kka_ray.stages.update import origin_counts, update_anomalies


def table(n, iteration=0, hard=None, score=None, clusters=None):
    cols = {
        "anomaly_id": [f"i{iteration}-{k}" for k in range(n)],
        "iteration": np.full(n, iteration),
        "cluster": np.asarray(clusters if clusters is not None else np.zeros(n, dtype=int)),
        "representative_text": ["a photo of a shirt"] * n,
        "sentence": [f"anomaly {iteration}-{k}" for k in range(n)],
        "image": pa.FixedShapeTensorArray.from_numpy_ndarray(np.full((n, 4, 4, 1), iteration, np.uint8)),
    }
    if hard is not None:
        cols["hard"], cols["score"] = np.asarray(hard), np.asarray(score, dtype=float)
        cols["judged_iteration"] = np.full(n, iteration)
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


def test_with_split_replaces_older_judgements():
    a = table(3, hard=[True, False, False], score=[0, 9, 9])

    class Ev:
        anomaly_scores = np.array([1.0, 2.0, 3.0])
        split = hard_easy_split(anomaly_scores, np.array([2.5]))

    out = with_split(a, Ev, iteration=4)
    assert out.column_names.count("hard") == 1
    assert out.column("hard").to_pylist() == [True, True, False]
    assert out.column("judged_iteration").to_pylist() == [4, 4, 4]


def test_rep_replaces_easiest_easy_keeps_hard_and_count():
    prev = table(6, iteration=0, hard=[True, False, False, True, False, False], score=[1, 5, 9, 2, 7, 3])
    new = table(3, iteration=1)
    out = update_anomalies(prev, new, "rep", seed=0)
    assert len(out) == 6
    kept = [i for i in out.column("anomaly_id").to_pylist() if i.startswith("i0")]
    # the three easiest easy ones (scores 9, 7, 5) go; hard i0-0, i0-3 and the least easy i0-5 stay
    assert kept == ["i0-0", "i0-3", "i0-5"]
    assert origin_counts(out) == {0: 3, 1: 3}
    assert "hard" not in out.column_names and "score" not in out.column_names


def test_rep_with_fewer_new_than_easy_and_add_mode():
    prev = table(4, hard=[False] * 4, score=[1, 2, 3, 4])
    out = update_anomalies(prev, table(2, iteration=1), "rep", seed=0)
    assert len(out) == 4 and origin_counts(out) == {0: 2, 1: 2}
    assert sorted(out.column("anomaly_id").to_pylist())[:2] == ["i0-0", "i0-1"]  # the closer easy ones stay
    out = update_anomalies(prev, table(5, iteration=1), "add", seed=0)
    assert len(out) == 9 and origin_counts(out) == {0: 4, 1: 5}
    with pytest.raises(ValueError, match="'add' or 'rep'"):
        update_anomalies(prev, table(1, iteration=1), "swap", seed=0)


def test_rep_draw_is_seeded():
    prev = table(4, hard=[False] * 4, score=[1, 2, 3, 4])
    ids = [update_anomalies(prev, table(10, iteration=1), "rep", seed=s).column("anomaly_id").to_pylist()
           for s in (0, 0, 1)]
    assert ids[0] == ids[1] and ids[0] != ids[2]


def test_pairs_within_a_prompt_with_fallback_and_cap():
    gen = GenerateConfig()
    a = table(7, hard=[True, False, False, True, True, False, False], score=[0] * 7,
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
    none_hard = table(3, hard=[False] * 3, score=[1, 2, 3])
    all_hard = table(3, hard=[True] * 3, score=[1, 2, 3])
    assert len(build_pairs(none_hard, gen, "x", PreferConfig(), seed=0)) == 0
    assert len(build_pairs(all_hard, gen, "x", PreferConfig(), seed=0)) == 0
