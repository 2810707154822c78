import numpy as np
import pytest

from kka_ray.data import build_dataset, make_task


@pytest.fixture(scope="module")
def fmnist():
    return build_dataset("fashion_mnist")


@pytest.fixture(scope="module")
def shirt(fmnist):
    return make_task(fmnist, "fashion_mnist", ["shirt"], seed=3, val_fraction=0.1)


def test_train_and_val_are_disjoint_normals(shirt):
    assert set(shirt.train_normal.ids).isdisjoint(shirt.val_normal.ids)
    assert len(shirt.train_normal) + len(shirt.val_normal) == 6000
    assert len(shirt.val_normal) == 600
    for part in (shirt.train_normal, shirt.val_normal):
        assert set(part.labels) == {6}
        assert part.split == "train"
        assert all(i.startswith("train:") for i in part.ids)


def test_no_anomaly_class_or_test_image_in_training(shirt):
    training_ids = set(shirt.train_normal.ids) | set(shirt.val_normal.ids)
    assert training_ids.isdisjoint(shirt.test.ids)
    assert not np.isin(shirt.train_normal.labels, [c for c in range(10) if c != 6]).any()


def test_test_targets_mark_every_other_class_anomalous(shirt):
    assert len(shirt.test) == 10000
    np.testing.assert_array_equal(shirt.test_targets, (shirt.test.labels != 6).astype(int))
    assert shirt.test_targets.sum() == 9000


def test_oracle_draws_only_anomaly_class_training_images(shirt):
    oracle = shirt.oracle_anomalies(500)
    assert len(oracle) == 500 and oracle.split == "train"
    assert 6 not in set(oracle.labels)
    assert set(oracle.ids).isdisjoint(shirt.train_normal.ids)
    np.testing.assert_array_equal(oracle.ids, shirt.oracle_anomalies(500).ids)  # seeded


def test_split_is_deterministic_per_seed(fmnist):
    a = make_task(fmnist, "fashion_mnist", ["coat"], seed=1)
    b = make_task(fmnist, "fashion_mnist", ["coat"], seed=1)
    c = make_task(fmnist, "fashion_mnist", ["coat"], seed=2)
    np.testing.assert_array_equal(a.val_normal.ids, b.val_normal.ids)
    assert set(a.val_normal.ids) != set(c.val_normal.ids)


def test_several_normal_classes_and_indices(fmnist):
    task = make_task(fmnist, "fashion_mnist", [0, "trouser"], seed=0)
    assert task.normal_classes == ("t-shirt", "trouser")
    assert set(task.train_normal.labels) == {0, 1}
    assert task.name == "fashion_mnist/t-shirt+trouser/seed0"


@pytest.mark.parametrize("bad, msg", [(["jacket"], "unknown normal class 'jacket'"), ([12], "out of range")])
def test_bad_class_names_the_problem(fmnist, bad, msg):
    with pytest.raises(ValueError, match=msg):
        make_task(fmnist, "fashion_mnist", bad)


def test_bad_val_fraction(fmnist):
    with pytest.raises(ValueError, match="val_fraction"):
        make_task(fmnist, "fashion_mnist", ["shirt"], val_fraction=1.5)
