"""over_classes on a hand-made table of 3 classes x 2 seeds, every answer worked out by hand below."""

import math

import numpy as np
import pandas as pd
import pytest

from kka_ray.summary import over_classes

T2 = 4.302652729749464  # Student t, 97.5% quantile, 2 degrees of freedom (3 classes)
T1 = 12.706204736174707  # 1 degree of freedom (2 classes)


@pytest.fixture()
def df() -> pd.DataFrame:
    # class means: base b 70, a 85, c 62; new b 73, a 89, c 69; y b 3, a 1, c none (both NaN)
    return pd.DataFrame({"class": ["b", "a", "c", "b", "a", "c"], "seed": [0, 0, 0, 1, 1, 1],
                         "base": [70.0, 80.0, 60.0, 70.0, 90.0, 64.0],
                         "new": [71.0, 86.0, 70.0, 75.0, 92.0, 68.0],
                         "y": [2.0, 1.0, np.nan, 4.0, np.nan, np.nan]})


def half_width(values: list[float], t: float) -> float:
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return t * sd / math.sqrt(len(values))


def test_seeds_are_averaged_within_a_class_before_the_interval(df):
    m, per_class = over_classes(df, ["base", "new"])
    assert list(per_class.index) == ["b", "a", "c"]  # first appearance
    assert per_class.loc["a", "base"] == 85 and per_class.loc["c", "new"] == 69
    assert m["base"] == pytest.approx(217 / 3)
    # 3 class means, 2 degrees of freedom; over the 6 runs it would be 5 and a narrower interval
    assert m["base_ci95"] == pytest.approx(half_width([70, 85, 62], T2))
    assert m["base_ci95"] == pytest.approx(29.0055, abs=1e-3)
    assert (m["classes"], m["seeds"], m["runs"]) == (3, 2, 6)
    assert not any(k.startswith("gain_") for k in m)


def test_paired_gain_over_classes_with_a_prefix(df):
    m, _ = over_classes(df, ["base", "new"], reference="base", prefix="auroc_")
    assert m["auroc_base"] == pytest.approx(217 / 3) and m["auroc_new"] == pytest.approx(77)
    # per-class gains 3, 4, 7: the interval of their mean, not of the difference of two unpaired means
    assert m["gain_new"] == pytest.approx(14 / 3)
    assert m["gain_new_ci95"] == pytest.approx(half_width([3, 4, 7], T2))
    assert "gain_base" not in m and "auroc_gain_new" not in m


def test_nan_is_skipped_per_column_and_in_the_gain(df):
    m, per_class = over_classes(df, ["base", "y"], reference="base")
    # y: class b (2, 4) -> 3, class a (1, NaN) -> 1, class c has none: mean over the 2 classes with a value is
    # 2 (the mean over the 3 rows would be 7/3)
    assert np.isnan(per_class.loc["c", "y"]) and m["y"] == pytest.approx(2)
    assert m["y_ci95"] == pytest.approx(half_width([3, 1], T1))
    # the gain over the classes that have both: b 3 - 70, a 1 - 85
    assert m["gain_y"] == pytest.approx(-75.5) and m["gain_y_ci95"] == pytest.approx(half_width([-67, -84], T1))
    assert m["base"] == pytest.approx(217 / 3)  # base keeps its 3 classes


def test_one_class_gives_means_without_intervals(df):
    m, _ = over_classes(df[df["class"] == "a"], ["base", "new", "y"], reference="base")
    assert m == {"base": 85, "new": 89, "y": 1, "gain_new": 4, "gain_y": -84, "classes": 1, "seeds": 2, "runs": 2}


def test_a_column_without_values_gives_no_key_and_a_bad_reference_is_named(df):
    m, _ = over_classes(df[df["class"] == "c"], ["base", "y"])
    assert "y" not in m and m["base"] == 62
    with pytest.raises(ValueError, match="reference 'z'"):
        over_classes(df, ["base"], reference="z")


def test_provenance_keeps_rows_made_outside_git():
    """A job under `ray job submit` runs in a working dir without .git: its rows have no commit, and they are
    still counted and printed."""
    from kka_ray.summary import provenance, provenance_table

    sha = "a" * 40
    df = pd.DataFrame({"commit": [sha, sha + "+modified", None], "machine": ["m", "m", "m"]})
    assert sorted(p["fits"] for p in provenance(df, "fits")) == [1, 1, 1]
    lines = provenance_table(df, "fits")
    assert "| 1 | (no git) | m |" in lines and f"| 1 | {'a' * 12}+modified | m |" in lines
