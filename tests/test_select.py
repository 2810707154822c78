"""Stage 1 (Eq. 1-2) on synthetic features whose most central point per cluster is known."""

import numpy as np
import pytest
from sklearn.covariance import LedoitWolf

from kka_ray.stages.select import (
    REPRESENTATIVES_SCHEMA,
    SelectConfig,
    mahalanobis_scores,
    representatives_table,
    select_representatives,
)

DIM, PAIRS = 16, 20


def blobs(seed: int = 0):
    """3 far-apart blobs: the centre plus 20 mirrored pairs around it, so the centre is exactly the mean (score 0)."""
    rng = np.random.default_rng(seed)
    z, ids, desc = [], [], []
    for b in range(3):
        centre = np.zeros(DIM)
        centre[b] = 50.0
        g = rng.normal(size=(PAIRS, DIM))
        z += [centre, *(centre + g), *(centre - g)]
        ids += [f"b{b}:{i}" for i in range(2 * PAIRS + 1)]
        desc += [f"centre of blob {b}"] + [f"blob {b} point {i}" for i in range(1, 2 * PAIRS + 1)]
    perm = rng.permutation(len(z))  # the centres must not be found by position
    return np.array(z)[perm], [ids[i] for i in perm], [desc[i] for i in perm]


@pytest.mark.parametrize("shrinkage", ["ledoit_wolf", "oas"])
def test_selects_each_blob_centre(shrinkage):
    z, ids, desc = blobs()
    reps = select_representatives(z, ids, desc, k=3, seed=0, shrinkage=shrinkage)
    assert [r.cluster for r in reps] == [0, 1, 2]
    assert sorted(r.description for r in reps) == [f"centre of blob {b}" for b in range(3)]
    assert all(r.sample_id.endswith(":0") and r.cluster_size == 2 * PAIRS + 1 for r in reps)
    assert all(r.mahalanobis == pytest.approx(0.0, abs=1e-9) for r in reps)


def test_deterministic_for_a_seed():
    z, ids, desc = blobs(seed=1)
    z = z + np.random.default_rng(2).normal(scale=20.0, size=z.shape)  # blur the blobs: k-means must choose
    runs = [select_representatives(z, ids, desc, k=4, seed=7, shrinkage="ledoit_wolf") for _ in range(2)]
    assert runs[0] == runs[1]


def test_k_larger_than_n():
    z, ids, desc = blobs()
    with pytest.raises(ValueError, match=r"k=5 .*N=3"):
        select_representatives(z[:3], ids[:3], desc[:3], k=5, seed=0, shrinkage="oas")


def test_singleton_cluster_scores_zero():
    z, ids, desc = blobs()
    keep = [i for i, d in enumerate(desc) if "blob 0" in d]
    z = np.vstack([z[keep], np.full(DIM, -100.0)])
    reps = select_representatives(z, [ids[i] for i in keep] + ["far"], [desc[i] for i in keep] + ["far away"],
                                  k=2, seed=0, shrinkage="ledoit_wolf")
    lone = [r for r in reps if r.cluster_size == 1]
    assert len(lone) == 1 and lone[0].sample_id == "far" and lone[0].mahalanobis == 0.0


def test_score_matches_hand_computation():
    z = np.random.default_rng(3).normal(size=(30, DIM)) * np.linspace(0.5, 3.0, DIM)
    fit = LedoitWolf().fit(z)
    d = z - fit.location_
    by_hand = np.einsum("ij,jk,ik->i", d, np.linalg.inv(fit.covariance_), d)
    np.testing.assert_allclose(mahalanobis_scores(z, "ledoit_wolf"), by_hand, rtol=1e-8)
    (rep,) = select_representatives(z, [str(i) for i in range(30)], [f"d{i}" for i in range(30)],
                                    k=1, seed=0, shrinkage="ledoit_wolf")
    assert rep.sample_id == str(np.argmin(by_hand)) and rep.mahalanobis == pytest.approx(by_hand.min())


def test_table_and_config():
    z, ids, desc = blobs()
    table = representatives_table(select_representatives(z, ids, desc, k=3, seed=0, shrinkage="oas"))
    assert table.schema == REPRESENTATIVES_SCHEMA and table.num_rows == 3
    assert representatives_table([]).schema == REPRESENTATIVES_SCHEMA
    assert SelectConfig().features.name == "efficientnet_lite0"
    with pytest.raises(ValueError):
        SelectConfig(shrinkage="empirical")
