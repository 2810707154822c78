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
