import math

import numpy as np
import pytest

from kka_ray.metrics import auroc, mean_ci


def test_auroc_known_values():
    assert auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auroc(np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    # one inversion of four pairs
    assert auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.5, 0.4, 0.9])) == 0.75


def test_auroc_errors():
    with pytest.raises(ValueError, match="both normal"):
        auroc(np.array([1, 1]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="NaN"):
        auroc(np.array([0, 1]), np.array([np.nan, 0.2]))


def test_mean_ci_t_interval():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    # sd = 1, sem = 1/sqrt(3), t(0.975, 2) = 4.302653
    assert mean == 2.0
    assert half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)


def test_mean_ci_single_value():
    mean, half = mean_ci([5.0])
    assert mean == 5.0 and math.isnan(half)
