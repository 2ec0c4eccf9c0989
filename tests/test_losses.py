import pytest
import torch

from deblur_rotate.errors import UserError
from deblur_rotate.losses import (PerceptualFeatures, edge_loss, l1_loss, latent_norm_loss, parameter_drift_loss,
                                  perceptual_loss)


def test_l1_and_weights():
    a = torch.zeros(1, 3, 4, 4)
    b = torch.zeros(1, 3, 4, 4)
    b[..., 0, 0] = 1.0
    assert torch.isclose(l1_loss(a, b), torch.tensor(1 / 16))
    w = torch.ones(1, 1, 4, 4)
    w[..., 0, 0] = 2.0  # the differing pixel counts double
    assert torch.isclose(l1_loss(a, b, w), torch.tensor(2 / 17))


def test_edge_loss_sees_blur_not_offset():
    g = torch.Generator().manual_seed(0)
    sharp = (torch.rand(1, 3, 32, 32, generator=g) > 0.5).float() * 2 - 1
    blurred = torch.nn.functional.avg_pool2d(sharp, 3, 1, 1)
    assert edge_loss(sharp + 0.3, sharp) < 1e-6  # a constant shift has no edges
    assert edge_loss(blurred, sharp) > 0.05
    x = blurred.clone().requires_grad_(True)
    edge_loss(x, sharp).backward()
    assert x.grad.abs().sum() > 0


def test_latent_norm_and_drift():
    ws = torch.randn(2, 10, 16)
    ws = ws / ws.norm(dim=-1, keepdim=True) * 3.0
    assert latent_norm_loss(ws, 3.0) < 1e-6 and torch.isclose(latent_norm_loss(ws, 1.5), torch.tensor(1.0))
    net = torch.nn.Linear(3, 2)
    start = {k: v.detach().clone() for k, v in net.named_parameters()}
    assert parameter_drift_loss(net, start) == 0
    with torch.no_grad():
        net.weight += 0.5
    assert torch.isclose(parameter_drift_loss(net, start), torch.tensor(6 * 0.25))


def test_perceptual_fallback_and_vgg(tmp_path):
    with pytest.warns(UserWarning, match="no VGG16 weights"):
        feats = PerceptualFeatures()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert perceptual_loss(x, x, feats) == 0
    y = x.clone().requires_grad_(True)
    loss = perceptual_loss(y, torch.flip(x, dims=[-1]), feats)
    loss.backward()
    assert loss > 0 and y.grad.abs().sum() > 0
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["D"])[:23]  # vgg16().features up to relu4_3: what the loss uses
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, tmp_path / "vgg16.pth")
    vgg = PerceptualFeatures(tmp_path / "vgg16.pth")
    assert len(vgg(x)) == 4 and vgg(x)[0].shape[1] == 64
    (tmp_path / "bad.pth").write_bytes(b"not a state dict")
    with pytest.raises(UserError, match="not a torchvision VGG16"):
        PerceptualFeatures(tmp_path / "bad.pth")
    with pytest.raises(UserError, match="not found"):
        PerceptualFeatures(tmp_path / "missing.pth")
