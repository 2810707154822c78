"""Eq. 6 (hard / easy split), Eq. 7 pair building and Eq. 8 (add / rep) on hand-made tables."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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


def test_rep_replaces_random_easy_with_new_hard_only_and_keeps_count():
    prev = table(6, iteration=0, hard=[True, False, False, True, False, True], margin=[0.5, 1.5, 3, 0.9, 2, 0.8])
    new = table(4, iteration=1, hard=[False, True, False, True], margin=[1.4, 0.7, 5.0, 0.2])
    outs = [update_anomalies(prev, new, "rep", seed) for seed in range(12)]
    for out in outs:
        ids = out.column("anomaly_id").to_pylist()
        assert len(out) == 6 and origin_counts(out) == {0: 4, 1: 2}
        assert {"i0-0", "i0-3", "i0-5"} <= set(ids)  # hard ones stay
        assert ids[-2:] == ["i1-1", "i1-3"]  # only the new hard ones enter, in generation order
        assert out.column("hard").to_pylist()[-2:] == [True, True]  # verdicts kept
    dropped = {frozenset({"i0-1", "i0-2", "i0-4"} - set(o.column("anomaly_id").to_pylist())) for o in outs}
    assert len(dropped) > 1  # which easy ones go is a random (seeded) draw, not the easiest first
    assert outs[3].equals(update_anomalies(prev, new, "rep", 3))


def test_rep_with_more_new_hard_than_easy_slots_and_add_mode():
    prev = table(4, hard=[False, True, True, True], margin=[1, 2, 3, 4])
    new = table(3, iteration=1, hard=[True, True, False], margin=[0.1, 0.2, 2])
    out = update_anomalies(prev, new, "rep", 0)
    assert len(out) == 4 and origin_counts(out) == {0: 3, 1: 1}  # one easy slot, one of the two hard new ones
    added = update_anomalies(prev, new, "add", 0)
    assert added.column("anomaly_id").to_pylist() == [*prev.column("anomaly_id").to_pylist(), "i1-0", "i1-1"]
    assert len(update_anomalies(prev, table(2, iteration=1, hard=[False] * 2, margin=[2] * 2), "add", 0)) == 4
    with pytest.raises(ValueError, match="'add' or 'rep'"):
        update_anomalies(prev, new, "swap", 0)


def test_rep_keeps_everything_when_all_are_hard():
    prev = table(3, hard=[True] * 3, margin=[0.1, 0.2, 0.3])
    out = update_anomalies(prev, table(3, iteration=1, hard=[True] * 3, margin=[0.1] * 3), "rep", 0)
    assert out.column("anomaly_id").to_pylist() == prev.column("anomaly_id").to_pylist()


def lines(spec: dict[int, tuple[int, str]]) -> tuple[pa.Table, pa.Table]:
    """Judged anomalies and rejected lines of completions: row_id -> (cluster, levels), one letter per line in
    order (h hard, e easy, r rejected by the cleaner)."""
    judged, rejects = [], []
    for row, (cluster, levels) in spec.items():
        for i, level in enumerate(levels):
            line = {"row_id": row, "line": i, "cluster": cluster, "representative_text": f"rep {cluster}",
                    "sentence": f"line {row}.{i} {level}"}
            (rejects if level == "r" else judged).append({**line, "hard": level == "h"})
    schema = pa.schema([("row_id", pa.int64()), ("line", pa.int64()), ("cluster", pa.int64()),
                        ("representative_text", pa.string()), ("sentence", pa.string()), ("hard", pa.bool_())])
    return pa.Table.from_pylist(judged, schema=schema), pa.Table.from_pylist(rejects, schema=schema).drop(["hard"])


def test_pairs_compare_whole_completions_of_one_prompt_by_three_levels():
    judged, rejects = lines({0: (0, "hhe"), 1: (0, "eee"), 2: (0, "rre"), 3: (0, "her"), 4: (1, "hh"),
                             5: (1, "rr"), 6: (2, "hh")})
    cfg = PreferConfig(pairs_per_chosen=3, heldout_fraction=0.0)
    pairs = build_pairs(judged, rejects, GenerateConfig(), "clothing items", cfg, seed=0).to_pylist()
    got = {(p["chosen_id"], p["rejected_id"]) for p in pairs}
    # scores: r0 5/3, r1 1, r2 1/3, r3 1, r4 2, r5 0, r6 2 (alone in its prompt: no pair); gap >= 0.5
    assert got == {("r0", "r1"), ("r0", "r2"), ("r0", "r3"), ("r1", "r2"), ("r3", "r2"), ("r4", "r5")}
    one = next(p for p in pairs if p["chosen_id"] == "r3")
    assert one["chosen"] == "line 3.0 h\nline 3.1 e\nline 3.2 r"  # the whole completion, lines in order
    assert one["chosen_score"] == pytest.approx(1.0) and one["rejected_score"] == pytest.approx(1 / 3)
    assert all(p["prompt"][-1]["role"] == "user" and "rep" in p["prompt"][-1]["content"] for p in pairs)
    assert not any(p["heldout"] for p in pairs)
    rec = dpo_records(build_pairs(judged, rejects, GenerateConfig(), "x", cfg, seed=0))[0]
    assert rec["chosen"][0]["role"] == "assistant" and isinstance(rec["prompt"], list)
    capped = build_pairs(judged, rejects, GenerateConfig(), "x", cfg.model_copy(update={"max_pairs": 2}), seed=0)
    assert len(capped) == 2


def test_heldout_pairs_come_from_completions_never_trained():
    spec = {k: (k % 2, "hhhee"[: 1 + k % 5] + "r" * (k % 3)) for k in range(40)}
    judged, rejects = lines(spec)
    cfg = PreferConfig(heldout_fraction=0.25, steps=2, batch_size=2)
    pairs = build_pairs(judged, rejects, GenerateConfig(), "x", cfg, seed=0)
    rows = pairs.to_pylist()
    train = {i for p in rows if not p["heldout"] for i in (p["chosen_id"], p["rejected_id"])}
    held = {i for p in rows if p["heldout"] for i in (p["chosen_id"], p["rejected_id"])}
    assert held and train and not held & train  # disjoint completions
    assert len([p for p in rows if p["heldout"]]) <= cfg.max_heldout_pairs
    marked = mark_trained(pairs, cfg, seed=0).to_pylist()
    assert sum(p["trained"] for p in marked) == 4 and not any(p["trained"] and p["heldout"] for p in marked)
    assert pairs.equals(build_pairs(judged, rejects, GenerateConfig(), "x", cfg, seed=0))  # seeded
    assert not pairs.equals(build_pairs(judged, rejects, GenerateConfig(), "x", cfg, seed=1))


def test_no_pairs_when_completions_score_alike_and_old_tables_are_named():
    judged, rejects = lines({0: (0, "ee"), 1: (0, "ee"), 2: (0, "e")})
    assert len(build_pairs(judged, rejects, GenerateConfig(), "x", PreferConfig(), seed=0)) == 0
    with pytest.raises(ValueError, match="lack columns \\['line'\\]"):
        build_pairs(judged.drop(["line"]), rejects, GenerateConfig(), "x", PreferConfig(), seed=0)


def test_anomaly_grid_of_a_filtered_table_and_of_none():
    """Fig. 3's grid of the new hard anomalies: a filtered table (several chunks), and an iteration with none."""
    from kka_ray.figures import anomaly_grid

    images = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4, 1)
    part = pa.table({"image": pa.FixedShapeTensorArray.from_numpy_ndarray(images), "sentence": ["a", "b", "c"],
                     "hard": [True, False, True]})
    table = pa.concat_tables([part, part])
    for hard in (table.filter(table.column("hard")), table.filter(pc.equal(table.column("sentence"), "z"))):
        png = anomaly_grid(hard, 8, f"{len(hard)} hard")
        assert png.startswith(b"\x89PNG")
