"""Every registered detector, anomalib-style: a tiny task fitted with and without anomalies (on a Ray Train
worker, then in Ray Train's local mode), scores in input order, an obvious outlier ranked above held-out
normals."""

import numpy as np
import pytest

from kka_ray.data import build_dataset, make_task
from kka_ray.detectors import DETECTORS, build_detector
from kka_ray.metrics import auroc
from kka_ray.registry import Registry

# The smallest config of each registered detector that still learns something on 28 px images.
TINY = {
    "deepsad": {"epochs": 3, "ae_epochs": 1, "batch_size": 64, "lr": 1e-3, "lr_milestones": [],
                "score_batch_size": 128},
    "knn": {"backbone": {"image_size": 32, "taps": ["head"], "batch_size": 64}},
    "recontrast": {"backbone": {"image_size": 32, "taps": ["b2", "b4", "b10"]}, "bottleneck": 64, "steps": 30,
                   "batch_size": 16, "log_every": 10},
    "simplenet": {"backbone": {"image_size": 32, "taps": ["b4", "b10"], "batch_size": 64}, "pre_dim": 64,
                  "dim": 64, "hidden": 64, "epochs": 5, "batch_size": 8, "lr": 1e-3, "adaptor_lr": 1e-3},
    "ssd": {"backbone": {"image_size": 32, "taps": ["head"]}, "epochs": 1, "batch_size": 64, "anomaly_views": 2,
            "score_batch_size": 128},
}


def tiny_config(name: str, **workers):
    """`workers`: Ray Train settings (num_workers, cpus_per_worker), where the config has them: top-level (Deep
    SAD's) or under `train` (the shared TrainWorkers); a detector that does not train through Ray Train has none."""
    cfg = DETECTORS.get(name).config_cls(**TINY[name])
    if workers and "num_workers" in type(cfg).model_fields:
        return cfg.model_copy(update=workers)
    if workers and "train" in type(cfg).model_fields:
        return cfg.model_copy(update={"train": cfg.train.model_copy(update=workers)})
    return cfg


@pytest.fixture(scope="module")
def tiny_task():
    task = make_task(build_dataset("fashion_mnist"), "fashion_mnist", ["trouser"], seed=0)
    keep = np.sort(np.random.default_rng(0).choice(len(task.test), 300, replace=False))
    return task, task.train_normal.subset(np.arange(256)), task.test.subset(keep), task.test_targets[keep]


def test_every_registered_detector_has_a_tiny_config():
    assert sorted(TINY) == DETECTORS.names()


def test_a_declared_backend_is_imported_on_first_use_and_must_register():
    reg = Registry("thing")
    reg.declare("json", "json")  # a module that registers nothing under that name
    assert reg.names() == ["json"] and "json" in reg and reg.check("json") == "json"
    with pytest.raises(RuntimeError, match="json was declared to register thing 'json' but did not"):
        reg.get("json")
    with pytest.raises(ValueError, match="registered twice"):
        reg.declare("json", "json")
    with pytest.raises(KeyError, match="unknown thing 'nothing'; registered: json"):
        reg.get("nothing")


@pytest.mark.parametrize("name", sorted(TINY))
def test_fit_and_score_a_tiny_task_without_and_with_anomalies(ray_local, tiny_task, tmp_path, name):
    task, normals, test, targets = tiny_task
    anomalies = task.oracle_anomalies(32)
    # One batch: the test images, 100 held-out normals, the training anomalies and an obvious outlier (a white
    # square on black).
    outlier = np.zeros((1, *normals.shape), np.uint8)
    outlier[0, 6:22, 6:22] = 255
    images = np.concatenate([test.images, task.val_normal.images[:100], anomalies.images, outlier])
    n_test, held_out, given = len(test), slice(len(test), len(test) + 100), slice(len(test) + 100, -1)

    def separation(scores):  # how far the given anomalies rank above held-out normals
        return auroc(np.r_[np.zeros(100), np.ones(32)], np.r_[scores[held_out], scores[given]])

    det = build_detector(tiny_config(name))
    det.fit(normals, None, seed=0, workdir=tmp_path)
    scores = det.score(images)
    assert scores.shape == (len(images),) and np.isfinite(scores).all()
    perm = np.random.default_rng(1).permutation(len(images))
    np.testing.assert_allclose(det.score(images[perm]), scores[perm], rtol=1e-4, atol=1e-6)
    assert auroc(targets, scores[:n_test]) > 0.7  # trousers against the rest are easy even for tiny fits
    assert scores[-1] > np.quantile(scores[held_out], 0.9)

    with_anomalies = build_detector(tiny_config(name, num_workers=0))  # Ray Train's local mode: in this process
    with_anomalies.fit(normals, anomalies, seed=0, workdir=tmp_path)
    trained = with_anomalies.score(images)
    assert np.isfinite(trained).all() and auroc(targets, trained[:n_test]) > 0.7
    # The anomalies changed the model, and what it was told is anomalous ranks no lower than before.
    assert not np.allclose(trained, scores) and separation(trained) >= separation(scores)


@pytest.mark.parametrize("name", sorted(TINY))
def test_score_before_fit_is_an_error(name):
    with pytest.raises(RuntimeError, match="before fit"):
        build_detector(tiny_config(name)).score(np.zeros((1, 28, 28, 1), np.uint8))


def test_a_hub_backbone_from_a_local_folder_gives_the_tapped_maps(tmp_path):
    """The users' path (a transformers AutoBackbone id or folder), with a tiny random ResNet saved locally."""
    import torch
    from transformers import ResNetBackbone, ResNetConfig

    from kka_ray.detectors.backbone import BackboneConfig, build_backbone, to_input

    ResNetBackbone(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                                out_features=["stage4"])).save_pretrained(tmp_path / "resnet")
    net = build_backbone(BackboneConfig(name=str(tmp_path / "resnet"), taps=["stage2", "stage3"])).eval()
    assert net.channels() == [16, 32]
    with torch.no_grad():
        maps = net(to_input(np.zeros((2, 28, 28, 1), np.uint8), 64, net.normalise))
    assert [tuple(m.shape) for m in maps] == [(2, 16, 8, 8), (2, 32, 4, 4)]


def test_an_unreachable_hub_backbone_is_an_error_not_a_fallback(monkeypatch):
    from kka_ray.detectors.backbone import BackboneConfig, build_backbone

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="(?s)backbone 'no-such-org/no-such-net' .* cannot be loaded.*lite0"):
        build_backbone(BackboneConfig(name="no-such-org/no-such-net", taps=["stage2"]))


def test_lite0_taps_are_checked():
    from kka_ray.detectors.backbone import BackboneConfig

    with pytest.raises(ValueError, match="taps are b0..b15 and head"):
        BackboneConfig(taps=["layer2"])
    with pytest.raises(ValueError, match="multiple of 32"):
        BackboneConfig(image_size=112, taps=["head"])


@pytest.mark.parametrize("taps", [["head"], ["b2", "b4", "b10"]])
def test_every_trainable_lite0_parameter_gets_a_gradient(taps):
    """DDP (two or more Ray Train workers) stops at a trainable parameter the forward pass never reached: the
    classifier, blocks past the last tap, the head when untapped (SSD's 2-worker fit failed on the first)."""
    import torch

    from kka_ray.detectors.backbone import Lite0Taps

    net = Lite0Taps(taps, pretrained=False)
    sum(m.sum() for m in net(torch.rand(2, 3, 32, 32))).backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert any(p.requires_grad for p in net.net._blocks[-1].parameters()) == ("head" in taps)


def test_simplenet_fakes_are_on_the_features_own_scale(tmp_path):
    """Backbone features may have any scale (EfficientNet-Lite's pooled taps have a per-dimension std near 3.5):
    the head standardises them by the training normals' statistics, which it saves, so that D learns to tell
    the fakes apart (the truncated-L1 loss leaves 1.0, what it is when D separates nothing)."""
    import torch

    from kka_ray.detectors.simplenet import train

    rng = np.random.default_rng(0)
    normals = (rng.normal(size=(512, 4, 8)) @ rng.normal(size=(8, 32)) * 4 + 10).astype(np.float16)
    cfg = DETECTORS.get("simplenet").config_cls(**{**TINY["simplenet"], "epochs": 6})
    head, metrics = train.fit_head({"normals": normals, "anomalies": normals[:0]}, cfg, seed=0)
    flat = normals.reshape(-1, 32).astype(np.float64)
    np.testing.assert_allclose(head.mean.numpy(), flat.mean(0), rtol=1e-4)
    np.testing.assert_allclose(head.std.numpy(), flat.std(0), rtol=1e-4)
    assert metrics["loss_curve"][0] > metrics["loss"] and metrics["loss"] < 0.5
    train.save(tmp_path, head)
    f = torch.from_numpy(normals[:16])
    torch.testing.assert_close(train.image_scores(train.load(tmp_path), f), train.image_scores(head, f))


def test_knn_head_counts_only_as_evidence_for_an_anomaly():
    """kNN's head variant on synthetic features: the head learns the generated anomalies' side (+x), and real
    anomalies far on the other side (-x) get logits far below the normals'. Summed, that tail ranks them under
    the normals; one-sided, their kNN distance still counts, and the generated kind still ranks high."""
    from kka_ray.detectors.knn.model import AnomalyHead, combine, knn_distance, standardiser

    rng = np.random.default_rng(0)
    shift = np.eye(16)[0] * 6
    bank, held = rng.normal(size=(400, 16)), rng.normal(size=(100, 16))
    generated, real = rng.normal(size=(40, 16)) + shift, rng.normal(size=(100, 16)) - shift
    head = AnomalyHead(1.0, 0).fit(bank, generated)
    z_knn = standardiser(knn_distance(bank, bank, 2, exclude_self=True))
    z_head = standardiser(head.logit(bank))

    def ranked(mode, anomalies):
        query = np.concatenate([held, anomalies])
        scores = combine(z_knn(knn_distance(query, bank, 2)), z_head(head.logit(query)), mode)
        return auroc(np.r_[np.zeros(len(held)), np.ones(len(anomalies))], scores)

    knn_alone = auroc(np.r_[np.zeros(100), np.ones(100)], knn_distance(np.concatenate([held, real]), bank, 2))
    assert knn_alone > 0.95 and ranked("sum", real) < 0.5
    assert ranked("one_sided", real) > 0.95
    assert ranked("one_sided", rng.normal(size=(100, 16)) + shift) > 0.95
