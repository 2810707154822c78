"""Deep SAD through Ray Train (2 DDP workers) and Ray Data scoring, on a tiny Fashion-MNIST task."""

import numpy as np
import pytest

from kka_ray.config import DeepSADConfig
from kka_ray.data import build_dataset, make_task
from kka_ray.detectors import DETECTORS, build_detector
from kka_ray.detectors.deepsad.detector import training_arrays
from kka_ray.metrics import auroc


@pytest.fixture(scope="module")
def tiny_task():
    task = make_task(build_dataset("fashion_mnist"), "fashion_mnist", ["trouser"], seed=0)
    rng = np.random.default_rng(0)
    keep = np.sort(rng.choice(len(task.test), 600, replace=False))
    return task, task.train_normal.subset(np.arange(512)), task.test.subset(keep), task.test_targets[keep]


def test_registry_lists_deepsad():
    assert "deepsad" in DETECTORS.names()


def test_training_arrays_semi_targets(tiny_task):
    task, normals, _, _ = tiny_task
    arrays = training_arrays(normals, task.oracle_anomalies(40))
    assert arrays["images"].shape == (552, 28, 28, 1)
    assert (arrays["semi_targets"] == 1).sum() == 512 and (arrays["semi_targets"] == -1).sum() == 40


def test_two_worker_fit_and_score(ray_local, tiny_task, tmp_path):
    task, normals, test, targets = tiny_task
    cfg = DeepSADConfig(epochs=3, ae_epochs=1, batch_size=64, num_workers=2, cpus_per_worker=1,
                        lr=1e-3, lr_milestones=[], score_actors=2, score_batch_size=100)
    det = build_detector(cfg)
    metrics = det.fit(normals, task.oracle_anomalies(64), seed=0, workdir=tmp_path)
    assert metrics["epochs"] == 3 and np.isfinite(metrics["loss"])
    scores = det.score(test.images)
    assert scores.shape == (600,) and np.isfinite(scores).all()
    # Scores come back in input order: scoring a permutation permutes them.
    perm = np.random.default_rng(1).permutation(600)
    np.testing.assert_allclose(det.score(test.images[perm]), scores[perm], rtol=1e-5)
    # Trousers are easy: even three epochs on 512 images separate them from the rest.
    assert auroc(targets, scores) > 0.7
    assert any(tmp_path.rglob("deepsad.safetensors"))


def test_score_before_fit_is_an_error():
    with pytest.raises(RuntimeError, match="before fit"):
        build_detector(DeepSADConfig()).score(np.zeros((1, 28, 28, 1), np.uint8))


def test_fit_starts_from_an_earlier_fits_pretrained_encoder(ray_local, tiny_task, tmp_path):
    import ray.train
    import torch

    from kka_ray.detectors.deepsad import checkpoint as ckpt
    from kka_ray.detectors.deepsad.networks import NetSpec
    from kka_ray.detectors.deepsad.train import _pretrained_encoder

    task, normals, _, _ = tiny_task
    cfg = DeepSADConfig(epochs=1, ae_epochs=1, batch_size=128, cpus_per_worker=1, score_batch_size=100)
    first = build_detector(cfg)
    first.fit(normals, None, seed=0, workdir=tmp_path)
    second = build_detector(cfg.model_copy(update={"ae_epochs": 500}))  # would take minutes if it pretrained
    second.fit(normals, task.oracle_anomalies(16), seed=1, workdir=tmp_path, pretrained=first)

    def saved(det):
        with det.checkpoint.as_directory() as d:
            return ckpt.read(d)

    a, b = saved(first), saved(second)
    assert a["pretrained"].keys() == b["pretrained"].keys()
    assert all(torch.equal(a["pretrained"][k], b["pretrained"][k]) for k in a["pretrained"])
    assert any(not torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    without = tmp_path / "no-pretraining"  # a checkpoint of a fit with pretraining off (written by hand)
    without.mkdir()
    ckpt.write(without, a["state_dict"], a["c"], NetSpec(**a["spec"]), None)
    with pytest.raises(ValueError, match="holds no pretrained encoder"):
        _pretrained_encoder(ray.train.Checkpoint.from_directory(str(without)))


@pytest.mark.slow
def test_a_killed_train_worker_restarts_and_the_fit_equals_an_undisturbed_one(ray_local, tiny_task, tmp_path):
    """SIGKILL the Ray Train worker mid-fit: Ray Train restarts it (max_failures) from the last restart
    checkpoint, and the fitted model is the one an undisturbed fit gives."""
    import torch

    from kka_ray.detectors.deepsad import checkpoint as ckpt
    from kka_ray.faults import Killer

    task, normals, test, _ = tiny_task
    cfg = DeepSADConfig(epochs=40, ae_epochs=0, pretrain=False, batch_size=128, cpus_per_worker=1, lr=1e-3,
                        lr_milestones=[], checkpoint_every=2, max_failures=1, bf16=False)

    def fit(kill: bool):
        det = build_detector(cfg)
        workdir = tmp_path / str(kill)
        # Killed once its first restart checkpoint is reported: mid-training, whatever the CPU's speed (a kill
        # by age hit a slow CPU's worker while it still started, which Ray Train counts as a controller error).
        killer = Killer(("RayTrainWorker",), after_s=0, deadline_s=300,
                        when=lambda: any(workdir.glob("deepsad-*/checkpoint_*")))
        if kill:
            killer.start()
        det.fit(normals, None, seed=0, workdir=workdir)
        killer.stop.set()
        with det.checkpoint.as_directory() as d:
            return ckpt.read(d), killer.kill

    (undisturbed, _), (restarted, kill) = fit(False), fit(True)
    assert kill.pid is not None, "the worker was never killed (the fit ended first)"
    assert torch.equal(undisturbed["c"], restarted["c"])
    for k, v in undisturbed["state_dict"].items():
        assert torch.equal(restarted["state_dict"][k], v), k


@pytest.mark.parametrize("name", ["deepsad", "simplenet"])
def test_local_mode_fits_in_this_process_as_one_worker_does(ray_local, tiny_task, tmp_path, name):
    """num_workers=0 (Ray Train's local mode) runs the fit in the calling process: the same model as one
    worker's, its last checkpoint (of several reported) kept under the workdir, this process's threads back."""
    import torch
    from test_detectors import tiny_config

    task, normals, test, _ = tiny_task
    threads = torch.get_num_threads()

    def fitted(workers: int, workdir):
        cfg = tiny_config(name, num_workers=workers, cpus_per_worker=1)
        det = build_detector(cfg.model_copy(update={"checkpoint_every": 1}) if name == "deepsad" else cfg)
        det.fit(normals.subset(np.arange(256)), task.oracle_anomalies(32), seed=0, workdir=workdir)
        return det.score(test.images[:200])

    local = fitted(0, tmp_path / "local")
    assert torch.get_num_threads() == threads
    kept = list((tmp_path / "local").glob("*/checkpoint_*"))
    assert len(kept) == 1 and not list((tmp_path / "local").rglob(".*.tmp"))
    np.testing.assert_allclose(local, fitted(1, tmp_path / "worker"), rtol=1e-5, atol=1e-7)
