"""StyleGAN2 generator / discriminator, save/load and the rosinality import (CPU, micro configs)."""

import argparse
import json
import math

import pytest
import torch
import torch.nn.functional as F

from deblur_rotate.errors import UserError
from deblur_rotate.models import stylegan2 as sg
from deblur_rotate.models.convert import load_rosinality_state_dict, rosinality_config
from deblur_rotate.models.io import load_pretrained, save_pretrained

MICRO = dict(z_dim=16, w_dim=16, img_resolution=16, channel_base=128, channel_max=16, mapping_layers=2)


def micro_g(seed=0, **kw):
    torch.manual_seed(seed)
    g = sg.Generator(**{**MICRO, **kw}).eval()
    with torch.no_grad():  # non-zero noise strengths and biases, so those paths are exercised
        for name, p in g.named_parameters():
            if name.endswith("noise_strength") or name.endswith(".bias"):
                p.copy_(torch.randn_like(p) * 0.3)
    return g


def micro_d(seed=0):
    torch.manual_seed(seed)
    return sg.Discriminator(img_resolution=16, channel_base=128, channel_max=16)


# ------------------------------------------------------------------------------------------ presets, shapes


def test_preset_configs():
    tiny = sg.stylegan2_config("tiny")
    assert (tiny["img_resolution"], tiny["z_dim"], tiny["w_dim"], tiny["mapping_layers"]) == (64, 256, 256, 4)
    assert sg.channels_for(64, tiny["channel_base"], tiny["channel_max"]) == [256, 256, 256, 128, 64]
    paper = sg.stylegan2_config("paper")
    assert (paper["img_resolution"], paper["w_dim"], paper["mapping_layers"]) == (256, 512, 8)
    assert sg.channels_for(256, paper["channel_base"], paper["channel_max"]) == [512, 512, 512, 512, 512, 256, 128]
    with torch.device("meta"):  # build without allocating: structure only
        g = sg.Generator(**paper)
    assert g.num_ws == 14 and g.img_resolution == 256 and g.w_dim == 512
    assert 28e6 < sum(p.numel() for p in g.parameters()) < 32e6  # config-f at 256 px: ~30M parameters
    assert sg.stylegan2_config("tiny", "discriminator")["img_resolution"] == 64
    with pytest.raises(ValueError, match="unknown StyleGAN2 preset"):
        sg.stylegan2_config("huge")


def test_tiny_shapes():
    torch.manual_seed(0)
    g = sg.Generator(**sg.stylegan2_config("tiny")).eval()
    d = sg.Discriminator(**sg.stylegan2_config("tiny", "discriminator"))
    assert (g.num_ws, g.w_dim, g.z_dim, g.img_resolution) == (10, 256, 256, 64)
    with torch.no_grad():
        ws = g.mapping(torch.randn(2, 256))
        img = g.synthesis(ws)
        assert ws.shape == (2, 10, 256) and img.shape == (2, 3, 64, 64)
        assert d(img).shape == (2, 1)


def test_mapping_synthesis_split_equals_forward():
    g = micro_g()
    z = torch.randn(3, 16)
    with torch.no_grad():
        ws = g.mapping(z, truncation_psi=0.7)
        assert ws.shape == (3, g.num_ws, 16) and g.num_ws == 6
        a = g.synthesis(ws, noise_mode="const")
        b = g(z, truncation_psi=0.7, noise_mode="const")
    assert a.shape == (3, 3, 16, 16)
    assert torch.equal(a, b)


def test_noise_modes():
    g = micro_g()
    ws = g.mapping(torch.randn(2, 16)).detach()
    with torch.no_grad():
        c1, c2 = g.synthesis(ws, noise_mode="const"), g.synthesis(ws, noise_mode="const")
        n = g.synthesis(ws, noise_mode="none")
        r1, r2 = g.synthesis(ws, noise_mode="random"), g.synthesis(ws, noise_mode="random")
    assert torch.equal(c1, c2)
    assert (c1 - n).abs().max() > 1e-3
    assert (r1 - r2).abs().max() > 1e-3
    with pytest.raises(ValueError, match="noise_mode"):
        g.synthesis(ws, noise_mode="fixed")


def test_fused_and_reference_modconv_agree():
    torch.manual_seed(1)
    f = sg.setup_filter([1, 3, 3, 1])
    x, w, s = torch.randn(3, 5, 8, 8), torch.randn(7, 5, 3, 3) / 3, torch.randn(3, 5) + 1
    for up in (1, 2):
        for demod in (True, False):
            a = sg.modulated_conv2d(x, w, s, demodulate=demod, up=up, resample_filter=f, fused=True)
            b = sg.modulated_conv2d(x, w, s, demodulate=demod, up=up, resample_filter=f, fused=False)
            assert a.shape == (3, 7, 8 * up, 8 * up)
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    g = micro_g()
    ws = g.mapping(torch.randn(2, 16)).detach()
    torch.testing.assert_close(g.synthesis(ws, "const", fused_modconv=True),
                               g.synthesis(ws, "const", fused_modconv=False), atol=1e-5, rtol=1e-4)


def test_demodulation_keeps_unit_scale():
    torch.manual_seed(2)
    x = torch.randn(4, 32, 16, 16)
    w = torch.randn(32, 32, 3, 3) * 5.0                        # weight and style scale must not matter
    styles = (torch.randn(4, 32) * 3).abs() + 0.1
    y = sg.modulated_conv2d(x, w, styles, demodulate=True)
    assert 0.8 < y[:, :, 1:-1, 1:-1].std().item() < 1.2
    y_nodemod = sg.modulated_conv2d(x, w, styles, demodulate=False)
    assert y_nodemod.std().item() > 10


def test_truncation_and_w_avg():
    g = micro_g()
    g.mapping.w_avg.copy_(torch.randn(16))
    z = torch.randn(4, 16)
    ws0 = g.mapping(z, truncation_psi=0.0)
    torch.testing.assert_close(ws0, g.mapping.w_avg.expand(4, g.num_ws, 16))
    ws_cut = g.mapping(z, truncation_psi=0.0, truncation_cutoff=2)
    torch.testing.assert_close(ws_cut[:, :2], g.mapping.w_avg.expand(4, 2, 16))
    torch.testing.assert_close(ws_cut[:, 2:], g.mapping(z)[:, 2:])
    before = g.mapping.w_avg.clone()
    w = g.mapping(z)
    g.update_w_avg(w)
    torch.testing.assert_close(g.mapping.w_avg, w[:, 0].mean(0).lerp(before, 0.995))
    g.mapping(z, update_w_avg=True)
    assert not torch.equal(g.mapping.w_avg, before)


def test_discriminator_and_gradients():
    g, d = micro_g(), micro_d()
    g.train(), d.train()
    z = torch.randn(4, 16)
    fake = g(z)
    logits = d(fake)
    assert logits.shape == (4, 1)
    loss = F.softplus(-logits).mean() + F.softplus(d(torch.rand(4, 3, 16, 16) * 2 - 1)).mean()
    loss.backward()
    for name, p in list(g.named_parameters()) + list(d.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in g.mapping.parameters())
    with pytest.raises(ValueError, match="divisible"):
        d(torch.zeros(6, 3, 16, 16))                          # group size 4 does not divide 6


def test_shape_asserts():
    g, d = micro_g(), micro_d()
    with pytest.raises(ValueError, match=r"G.mapping z: expected shape \[\*, 16\], got \[2, 15\]"):
        g.mapping(torch.randn(2, 15))
    with pytest.raises(ValueError, match=r"G.synthesis ws: expected shape \[\*, 6, 16\]"):
        g.synthesis(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match="D img"):
        d(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="power of two"):
        sg.Generator(**{**MICRO, "img_resolution": 24})


# ------------------------------------------------------------------------------------------ save / load


def test_save_load_roundtrip(tmp_path):
    g, d = micro_g(), micro_d()
    g.mapping.w_avg.copy_(torch.randn(16))
    save_pretrained(g, tmp_path / "G")
    save_pretrained(d, tmp_path / "D")
    cfg = json.loads((tmp_path / "G" / "config.json").read_text())
    assert cfg["_kind"] == "stylegan2.generator" and cfg["img_resolution"] == 16
    g2 = load_pretrained(sg.Generator, tmp_path / "G")
    g3 = load_pretrained("stylegan2.generator", tmp_path / "G")
    d2 = load_pretrained("stylegan2.discriminator", tmp_path / "D")
    z, img = torch.randn(4, 16), torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        ref = g(z, truncation_psi=0.5, noise_mode="const")
        assert torch.equal(ref, g2(z, truncation_psi=0.5, noise_mode="const"))
        assert torch.equal(ref, g3(z, truncation_psi=0.5, noise_mode="const"))
        assert torch.equal(d(img), d2(img))
    assert not list((tmp_path / "G").glob("*.tmp"))


def test_mismatched_checkpoint_raises(tmp_path):
    save_pretrained(micro_g(), tmp_path / "G")
    other = sg.Generator(**{**MICRO, "img_resolution": 32})
    with pytest.raises(UserError) as e:
        load_pretrained(other, tmp_path / "G")
    msg = str(e.value)
    assert "img_resolution (checkpoint 16, model 32)" in msg
    assert "missing keys: synthesis.b32." in msg
    wide = sg.Generator(**{**MICRO, "channel_max": 8})
    with pytest.raises(UserError, match=r"shape mismatch: .*checkpoint \[16, 16, 3, 3\], model \[8, 8, 3, 3\]"):
        load_pretrained(wide, tmp_path / "G")
    tiny = sg.Generator(**sg.stylegan2_config("tiny"))
    with pytest.raises(UserError, match="checkpoint is preset custom .*, model is preset tiny"):
        load_pretrained(tiny, tmp_path / "G")
    with pytest.raises(UserError, match="holds a 'stylegan2.generator', expected a 'stylegan2.discriminator'"):
        load_pretrained(sg.Discriminator, tmp_path / "G")
    # weights file edited behind the config's back
    from safetensors.torch import load_file, save_file
    state = load_file(tmp_path / "G" / "model.safetensors")
    state.pop("synthesis.b8.torgb.bias")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, tmp_path / "G" / "model.safetensors")
    with pytest.raises(UserError, match=r"missing keys: synthesis.b8.torgb.bias; unexpected keys: extra.weight"):
        load_pretrained(sg.Generator, tmp_path / "G")
    with pytest.raises(UserError, match="no config.json"):
        load_pretrained(sg.Generator, tmp_path / "nothing")


# ------------------------------------------------------------------------------------------ rosinality import
# A rosinality-layout checkpoint built here (their names and shapes, random values), and their forward pass
# written directly from their formulas (model.py of rosinality/stylegan2-pytorch), independent of ours.

ROS_CH = {4: 16, 8: 16, 16: 8}


def make_ros_generator_sd(size=16, style_dim=16, n_mlp=2, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rn(*shape, s=1.0):
        return torch.randn(*shape, generator=gen) * s

    kernel = torch.tensor([1.0, 3, 3, 1])
    kernel = kernel[:, None] * kernel[None, :]
    kernel = kernel / kernel.sum() * 4
    sd = {}
    for i in range(1, n_mlp + 1):
        sd[f"style.{i}.weight"] = rn(style_dim, style_dim, s=100.0)   # stored /lr_mul
        sd[f"style.{i}.bias"] = rn(style_dim, s=10.0)

    def styled(name, cin, cout, up):
        sd[f"{name}.conv.weight"] = rn(1, cout, cin, 3, 3)
        sd[f"{name}.conv.modulation.weight"] = rn(cin, style_dim)
        sd[f"{name}.conv.modulation.bias"] = 1 + rn(cin, s=0.1)
        if up:
            sd[f"{name}.conv.blur.kernel"] = kernel.clone()
        sd[f"{name}.noise.weight"] = rn(1, s=0.3)
        sd[f"{name}.activate.bias"] = rn(cout, s=0.1)

    def torgb(name, cin, up):
        if up:
            sd[f"{name}.upsample.kernel"] = kernel.clone()
        sd[f"{name}.conv.weight"] = rn(1, 3, cin, 1, 1)
        sd[f"{name}.conv.modulation.weight"] = rn(cin, style_dim)
        sd[f"{name}.conv.modulation.bias"] = 1 + rn(cin, s=0.1)
        sd[f"{name}.bias"] = rn(1, 3, 1, 1, s=0.1)

    log_size = int(math.log2(size))
    sd["input.input"] = rn(1, ROS_CH[4], 4, 4)
    styled("conv1", ROS_CH[4], ROS_CH[4], False)
    torgb("to_rgb1", ROS_CH[4], False)
    cin = ROS_CH[4]
    for k, i in enumerate(range(3, log_size + 1)):
        cout = ROS_CH[2 ** i]
        styled(f"convs.{2 * k}", cin, cout, True)
        styled(f"convs.{2 * k + 1}", cout, cout, False)
        torgb(f"to_rgbs.{k}", cout, True)
        cin = cout
    for j in range((log_size - 2) * 2 + 1):
        r = 2 ** ((j + 5) // 2)
        sd[f"noises.noise_{j}"] = rn(1, 1, r, r)
    return sd


def make_ros_discriminator_sd(size=16, seed=1):
    gen = torch.Generator().manual_seed(seed)
    rn = lambda *shape, s=1.0: torch.randn(*shape, generator=gen) * s  # noqa: E731
    k = torch.tensor([1.0, 3, 3, 1])
    k = k[:, None] * k[None, :] / 64
    sd = {"convs.0.0.weight": rn(ROS_CH[size], 3, 1, 1), "convs.0.1.bias": rn(ROS_CH[size], s=0.1)}
    j, res = 1, size
    while res > 4:
        cin, cout = ROS_CH[res], ROS_CH[res // 2]
        sd.update({f"convs.{j}.conv1.0.weight": rn(cin, cin, 3, 3), f"convs.{j}.conv1.1.bias": rn(cin, s=0.1),
                   f"convs.{j}.conv2.0.kernel": k.clone(), f"convs.{j}.conv2.1.weight": rn(cout, cin, 3, 3),
                   f"convs.{j}.conv2.2.bias": rn(cout, s=0.1), f"convs.{j}.skip.0.kernel": k.clone(),
                   f"convs.{j}.skip.1.weight": rn(cout, cin, 1, 1)})
        j, res = j + 1, res // 2
    c4 = ROS_CH[4]
    sd.update({"final_conv.0.weight": rn(c4, c4 + 1, 3, 3), "final_conv.1.bias": rn(c4, s=0.1),
               "final_linear.0.weight": rn(c4, c4 * 16), "final_linear.0.bias": rn(c4, s=0.1),
               "final_linear.1.weight": rn(1, c4), "final_linear.1.bias": rn(1, s=0.1)})
    return sd


def _ros_lrelu(x, b):
    return F.leaky_relu(x + b.view(1, -1, *([1] * (x.ndim - 2))), 0.2) * math.sqrt(2)


def _ros_blur(x, k, pad):
    # upfirdn2d with up=down=1: pad, then a true convolution (flipped kernel), channel by channel
    c = x.shape[1]
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    return F.conv2d(x, torch.flip(k, [0, 1]).expand(c, 1, *k.shape), groups=c)


def _ros_upsample(x, k):
    n, c, h, w = x.shape
    z = x.new_zeros(n, c, 2 * h, 2 * w)
    z[:, :, ::2, ::2] = x
    return _ros_blur(z, k, (2, 1))  # Upsample: pad0 = (p+1)//2 + 1, pad1 = p//2 with p = 2


def ros_generator_forward(sd, latent, n_mlp=2):
    """Their Generator.forward(input_is_latent=True, randomize_noise=False) for a latent [B, n_latent, w]."""
    b = latent.shape[0]
    w_dim = latent.shape[-1]

    def modconv(x, name, style, demod, up):
        weight = sd[f"{name}.conv.weight"]
        _, o, i, k, _ = weight.shape
        s = F.linear(style, sd[f"{name}.conv.modulation.weight"] / math.sqrt(w_dim), sd[f"{name}.conv.modulation.bias"])
        wgt = (1 / math.sqrt(i * k * k)) * weight * s.view(b, 1, i, 1, 1)
        if demod:
            wgt = wgt * torch.rsqrt(wgt.pow(2).sum([2, 3, 4]) + 1e-8).view(b, o, 1, 1, 1)
        outs = []
        for n in range(b):
            if up:
                y = F.conv_transpose2d(x[n:n + 1], wgt[n].transpose(0, 1), stride=2)
                y = _ros_blur(y, sd[f"{name}.conv.blur.kernel"], (1, 1))
            else:
                y = F.conv2d(x[n:n + 1], wgt[n], padding=k // 2)
            outs.append(y)
        return torch.cat(outs)

    def styled(x, name, style, noise, up=False):
        out = modconv(x, name, style, True, up)
        out = out + sd[f"{name}.noise.weight"] * noise
        return _ros_lrelu(out, sd[f"{name}.activate.bias"])

    def torgb(x, name, style, skip=None):
        out = modconv(x, name, style, False, False) + sd[f"{name}.bias"]
        if skip is not None:
            out = out + _ros_upsample(skip, sd[f"{name}.upsample.kernel"])
        return out

    out = sd["input.input"].repeat(b, 1, 1, 1)
    out = styled(out, "conv1", latent[:, 0], sd["noises.noise_0"])
    skip = torgb(out, "to_rgb1", latent[:, 1])
    i, k = 1, 0
    while f"to_rgbs.{k}.bias" in sd:
        out = styled(out, f"convs.{2 * k}", latent[:, i], sd[f"noises.noise_{2 * k + 1}"], up=True)
        out = styled(out, f"convs.{2 * k + 1}", latent[:, i + 1], sd[f"noises.noise_{2 * k + 2}"])
        skip = torgb(out, f"to_rgbs.{k}", latent[:, i + 2], skip)
        i, k = i + 2, k + 1
    return skip


def ros_mapping(sd, z, n_mlp=2, lr_mul=0.01):
    x = z * torch.rsqrt(torch.mean(z ** 2, dim=1, keepdim=True) + 1e-8)
    for i in range(1, n_mlp + 1):
        w = sd[f"style.{i}.weight"]
        x = _ros_lrelu(F.linear(x, w * (lr_mul / math.sqrt(w.shape[1]))), sd[f"style.{i}.bias"] * lr_mul)
    return x


def ros_discriminator_forward(sd, img):
    def conv(x, w, b, down, act):
        scale = 1 / math.sqrt(w.shape[1] * w.shape[2] * w.shape[3])
        if down:
            p = 2 + (w.shape[-1] - 1)
            x = _ros_blur(x, k, ((p + 1) // 2, p // 2))
            x = F.conv2d(x, w * scale, stride=2)
        else:
            x = F.conv2d(x, w * scale, padding=w.shape[-1] // 2)
        return _ros_lrelu(x, b) if act else x

    k = sd["convs.1.conv2.0.kernel"]
    out = conv(img, sd["convs.0.0.weight"], sd["convs.0.1.bias"], False, True)
    j = 1
    while f"convs.{j}.conv1.0.weight" in sd:
        y = conv(out, sd[f"convs.{j}.conv1.0.weight"], sd[f"convs.{j}.conv1.1.bias"], False, True)
        y = conv(y, sd[f"convs.{j}.conv2.1.weight"], sd[f"convs.{j}.conv2.2.bias"], True, True)
        out = (y + conv(out, sd[f"convs.{j}.skip.1.weight"], None, True, False)) / math.sqrt(2)
        j += 1
    n, c, h, w = out.shape
    g = min(n, 4)
    s = out.view(g, -1, 1, c, h, w)
    s = torch.sqrt(s.var(0, unbiased=False) + 1e-8).mean([2, 3, 4], keepdim=True).squeeze(2).repeat(g, 1, h, w)
    out = conv(torch.cat([out, s], 1), sd["final_conv.0.weight"], sd["final_conv.1.bias"], False, True).view(n, -1)
    w0, w1 = sd["final_linear.0.weight"], sd["final_linear.1.weight"]
    out = _ros_lrelu(F.linear(out, w0 / math.sqrt(w0.shape[1])), sd["final_linear.0.bias"])
    return F.linear(out, w1 / math.sqrt(w1.shape[1]), sd["final_linear.1.bias"])


def test_rosinality_import_matches_their_formulas(tmp_path):
    g_sd, d_sd = make_ros_generator_sd(), make_ros_discriminator_sd()
    latent_avg = torch.randn(16)
    ckpt = {"g": make_ros_generator_sd(seed=5), "g_ema": g_sd, "d": d_sd, "g_optim": {"state": {}, "param_groups": []},
            "args": argparse.Namespace(size=16, latent=16), "latent_avg": latent_avg}
    torch.save(ckpt, tmp_path / "ros.pt")

    g, report = load_rosinality_state_dict(tmp_path / "ros.pt")
    assert report.ok and report.unused == [] and report.missing == []
    assert len(report.constants) == 4 and "args" in report.ignored_top_level
    assert len(report.loaded) + len(report.constants) == len(g_sd) + 1      # + w_avg from latent_avg
    assert (g.img_resolution, g.num_ws, g.channels) == (16, 6, [16, 16, 8])
    torch.testing.assert_close(g.mapping.w_avg, latent_avg)

    z = torch.randn(2, 16)
    with torch.no_grad():
        w_ref = ros_mapping(g_sd, z)
        ws = g.mapping(z)
        torch.testing.assert_close(ws[:, 0], w_ref, atol=1e-5, rtol=1e-4)
        latent = torch.randn(2, 6, 16)                                      # distinct w per layer
        ref = ros_generator_forward(g_sd, latent)
        ours = g.synthesis(latent, noise_mode="const")
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(g.synthesis(latent, noise_mode="const", fused_modconv=False), ref,
                                   atol=1e-4, rtol=1e-4)

    d, d_report = load_rosinality_state_dict(tmp_path / "ros.pt", which="d")
    assert d_report.ok and len(d_report.constants) == 4
    img = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(d(img), ros_discriminator_forward(d_sd, img), atol=1e-4, rtol=1e-4)


def test_rosinality_psp_layout_and_errors(tmp_path):
    g_sd = make_ros_generator_sd()
    psp = {"state_dict": {**{f"decoder.{k}": v for k, v in g_sd.items()}, "encoder.body.0.weight": torch.zeros(2)},
           "opts": {"output_size": 16}, "latent_avg": torch.randn(6, 16)}
    g, report = load_rosinality_state_dict(psp)
    assert report.ok and "encoder" in report.ignored_top_level and "rows differ" in report.w_avg_source

    bare = dict(g_sd)
    g2, report2 = load_rosinality_state_dict(bare)
    assert report2.ok and "not in checkpoint" in report2.w_avg_source

    broken = dict(g_sd)
    broken.pop("to_rgbs.0.conv.modulation.bias")
    broken["convs.9.conv.extra"] = torch.zeros(3)
    torch.save({"g_ema": broken}, tmp_path / "broken.pt")
    with pytest.raises(UserError) as e:
        load_rosinality_state_dict(tmp_path / "broken.pt")
    assert "not matched: convs.9.conv.extra" in str(e.value)
    assert "not filled: synthesis.b8.torgb.affine.bias" in str(e.value)
    _, lax = load_rosinality_state_dict(tmp_path / "broken.pt", strict=False)
    assert lax.unused == ["convs.9.conv.extra"] and lax.missing == ["synthesis.b8.torgb.affine.bias"]

    torch.save({"g_ema": {"mapping.fc0.weight": torch.zeros(4, 4)}}, tmp_path / "nvlabs_like.pt")
    with pytest.raises(UserError, match="not a rosinality StyleGAN2 generator state dict: no 'style.1.weight'"):
        load_rosinality_state_dict(tmp_path / "nvlabs_like.pt")

    torch.save({"g_ema": {"x": _Unsafe()}}, tmp_path / "code.pt")
    with pytest.raises(UserError, match="weights-only"):
        load_rosinality_state_dict(tmp_path / "code.pt")

    bad_shape = dict(g_sd)
    bad_shape["conv1.conv.weight"] = torch.zeros(1, 16, 16, 3, 1)
    with pytest.raises(UserError, match="wrong size: conv1.conv.weight"):
        load_rosinality_state_dict(bad_shape)


class _Unsafe:
    pass


def test_rosinality_config_helper():
    cfg = rosinality_config(256, 512, 8, channel_multiplier=2)
    assert (cfg["channel_base"], cfg["channel_max"]) == (32768, 512)
    assert cfg == {**sg.stylegan2_config("paper")}
    cfg1 = rosinality_config(256, channel_multiplier=1)
    assert sg.channels_for(256, cfg1["channel_base"], cfg1["channel_max"]) == [512, 512, 512, 512, 256, 128, 64]


def test_dense_input_starts_as_const_learns_a_layout_and_round_trips(tmp_path):
    """input_mode='dense': zero-initialised, so a dense G renders what the const G with the same weights
    renders; once the dense layer moves, the 4 px input depends on w_0; config.json keeps the mode and
    preset_generator rebuilds it from a folder."""
    from deblur_rotate.models.stylegan2 import preset_generator

    torch.manual_seed(0)
    const = sg.Generator(**sg.stylegan2_config("micro"))
    dense = sg.Generator(**sg.stylegan2_config("micro"), input_mode="dense")
    missing, unexpected = dense.load_state_dict(const.state_dict(), strict=False)
    assert all(k.startswith("synthesis.b4.dense.") for k in missing) and not unexpected
    ws = torch.randn(2, dense.num_ws, dense.w_dim)
    assert torch.allclose(dense.synthesis(ws, noise_mode="const"), const.synthesis(ws, noise_mode="const"), atol=1e-6)
    with torch.no_grad():
        dense.synthesis.b4.dense.weight.normal_()
    assert not torch.allclose(dense.synthesis(ws, noise_mode="const"), const.synthesis(ws, noise_mode="const"))
    assert dense.config["input_mode"] == "dense" and "input_mode" not in const.config  # old files unchanged
    folder = save_pretrained(dense, tmp_path / "g")
    again = load_pretrained(preset_generator("micro", folder), folder)
    assert torch.equal(again.synthesis(ws, noise_mode="const"), dense.eval().synthesis(ws, noise_mode="const"))
    with pytest.raises(ValueError, match="input_mode"):
        sg.Generator(**sg.stylegan2_config("micro"), input_mode="conv")
