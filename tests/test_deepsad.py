import io

import numpy as np
import pytest
import torch

from kka_ray.detectors.deepsad.loss import deep_sad_loss, fix_center, squared_distance
from kka_ray.detectors.deepsad.networks import AutoEncoder, Encoder, net_spec
from kka_ray.detectors.deepsad.train import to_tensor


def test_loss_terms_by_hand():
    dist = torch.tensor([1.0, 4.0, 0.5])
    semi = torch.tensor([0, 1, -1])
    # unlabelled: d = 1; normal: eta*d = 8; anomaly: eta/d = 4  -> mean 13/3
    assert deep_sad_loss(dist, semi, eta=2.0, eps=0.0).item() == pytest.approx(13 / 3)
    # eps keeps the anomaly term finite at d = 0
    assert deep_sad_loss(torch.tensor([0.0]), torch.tensor([-1]), eta=1.0, eps=1e-6).item() == pytest.approx(1e6)


def test_without_anomalies_it_is_deep_svdd():
    dist = torch.rand(16)
    assert deep_sad_loss(dist, torch.ones(16, dtype=torch.long), 1.0, 0.0).item() == pytest.approx(
        dist.mean().item(), rel=1e-6)


def test_squared_distance():
    z = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    np.testing.assert_allclose(squared_distance(z, torch.tensor([1.0, 0.0])).numpy(), [4.0, 1.0])


def test_fix_center_pushes_small_entries_away_from_zero():
    c = fix_center(torch.tensor([0.05, -0.05, 0.5, -0.2, 0.0]))
    np.testing.assert_allclose(c.numpy(), [0.1, -0.1, 0.5, -0.2, 0.1])


@pytest.mark.parametrize("preset, ch, size, rep", [("lenet28", 1, 28, 64), ("lenet32", 3, 32, 128),
                                                   ("conv64", 3, 64, 128), ("auto", 1, 32, 128)])
def test_networks_shapes_and_no_bias(preset, ch, size, rep):
    spec = net_spec(preset, ch, size)
    ae = AutoEncoder(spec)
    x = torch.rand(4, ch, size, size)
    assert ae.encoder(x).shape == (4, rep)
    assert ae(x).shape == x.shape
    # Deep SVDD: a bias (or affine BN) lets the network map everything onto c.
    assert not [n for n, _ in ae.named_parameters() if "bias" in n]
    assert all(not m.affine for m in ae.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))


def test_bad_net_choices():
    with pytest.raises(ValueError, match="unknown Deep SAD net"):
        net_spec("resnet", 1, 28)
    with pytest.raises(ValueError, match="not divisible"):
        net_spec("conv64", 3, 72)


def test_to_tensor_is_chw_unit_range():
    img = np.zeros((2, 5, 6, 3), dtype=np.uint8)
    img[..., 1] = 255
    t = to_tensor(img)
    assert t.shape == (2, 3, 5, 6)
    assert t[:, 1].min() == 1.0 and t[:, 0].max() == 0.0


def test_encoder_is_deterministic_with_seed():
    spec = net_spec("lenet28", 1, 28)
    torch.manual_seed(0)
    a = Encoder(spec).state_dict()
    torch.manual_seed(0)
    b = Encoder(spec).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoints_are_safetensors_and_old_pickles_are_refused_with_the_way_out(tmp_path):
    from kka_ray.detectors.deepsad import checkpoint as ckpt
    from kka_ray.detectors.deepsad.train import load_checkpoint

    spec = net_spec("lenet32", 1, 32, 8)
    torch.manual_seed(0)
    net, pretrained = Encoder(spec), Encoder(spec).state_dict()
    c = torch.randn(8)
    ckpt.write(tmp_path, net.state_dict(), c, spec, pretrained)
    loaded, c2 = load_checkpoint(tmp_path)
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(c2, c) and torch.equal(loaded(x), net.eval()(x))
    assert all(torch.equal(ckpt.read(tmp_path)["pretrained"][k], v) for k, v in pretrained.items())

    old = tmp_path / "old"  # a run folder from before: deepsad.pt, a torch pickle
    old.mkdir()
    torch.save({"state_dict": net.state_dict(), "c": c, "spec": ckpt.asdict(spec), "pretrained": None},
               old / "deepsad.pt")
    with pytest.raises(ValueError, match=f"python jobs/convert_checkpoints.py {old}"):
        load_checkpoint(old)
    assert ckpt.convert(tmp_path) == [old / "deepsad.safetensors"] and not (old / "deepsad.pt").exists()
    assert torch.equal(load_checkpoint(old)[1], c) and ckpt.read(old)["pretrained"] is None

    (old / "deepsad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ValueError, match="not a readable Deep SAD checkpoint"):
        load_checkpoint(old)
    with pytest.raises(FileNotFoundError, match="no Deep SAD checkpoint"):
        load_checkpoint(tmp_path / "nowhere")


@pytest.mark.parametrize("phase", ["ae", "sad"])
def test_a_fit_resumed_from_a_restart_checkpoint_equals_an_undisturbed_one(phase):
    """What a Ray Train worker restarted after a kill does: continue from the last saved epoch boundary."""
    from kka_ray.config import DeepSADConfig
    from kka_ray.detectors.deepsad.train import fit_deep_sad

    rng = np.random.default_rng(0)
    data = {"images": rng.integers(0, 255, (48, 28, 28, 1), dtype=np.uint8),
            "semi_targets": np.array([1] * 40 + [-1] * 8)}
    cfg = DeepSADConfig(epochs=4, lr_milestones=[3], ae_epochs=4, ae_lr_milestones=[1], batch_size=16,
                        checkpoint_every=2, bf16=False)
    spec = net_spec("lenet28", 1, 28, 8)
    saved = []

    def save(state):  # as the worker does: serialised at once, read back with weights_only
        buf = io.BytesIO()
        torch.save(state, buf)
        buf.seek(0)
        saved.append(torch.load(buf, weights_only=True))

    whole = fit_deep_sad(data, spec, cfg, seed=3, save=save)
    assert [(s["phase"], s["epoch"]) for s in saved] == [("ae", 2), ("sad", 2)]
    resumed = fit_deep_sad(data, spec, cfg, seed=3, resume=next(s for s in saved if s["phase"] == phase))
    assert torch.equal(resumed.c, whole.c) and resumed.metrics["loss"] == whole.metrics["loss"]
    for k, v in whole.net.state_dict().items():
        assert torch.equal(resumed.net.state_dict()[k], v), k
