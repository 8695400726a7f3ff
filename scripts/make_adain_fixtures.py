"""Writes the AdaIN golden fixtures in tests/fixtures/adain/ with PyTorch (run once; commit the output).

The networks are NARROW copies of the AdaIN ``vgg_normalised`` encoder and decoder: the same
``nn.Sequential`` layouts as naoto0804/pytorch-AdaIN ``net.py`` (so the state-dict keys are the real
ones, ``"0.weight"``, ``"2.weight"``, ...), with few channels so the files stay tiny. The encoder keeps
all 53 modules, so the loader has to ignore the keys past ``relu4_1``.

The reference functions below follow pytorch-AdaIN ``function.py`` / ``test.py`` (``calc_mean_std``,
``adaptive_instance_normalization``, ``style_transfer``) and, for spatial control, the official
AdaIN-style ``test.lua -mask`` (AdaIN applied separately to the foreground and background positions
of the content features). Style images of different sizes are encoded one by one.

Usage::

    python scripts/make_adain_fixtures.py [--out tests/fixtures/adain]

Requires torch (the ``torch`` extra); nothing in ``nst_jax`` or ``tests`` imports it.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from _torch_nets import adain_decoder, vgg_normalised

# Channels of VGG blocks 1..5 in the narrow encoder (VGG-19: 64, 128, 256, 512, 512).
ENC_WIDTHS = (4, 6, 8, 16, 16)
# Decoder widths mirror the encoder: relu4_1 channels, then blocks 3, 2, 1.
DEC_WIDTHS = (ENC_WIDTHS[3], ENC_WIDTHS[2], ENC_WIDTHS[1], ENC_WIDTHS[0])
CONTENT_HW = (35, 29)  # odd sizes exercise ceil-mode pooling (35->18->9->5, 29->15->8->4)
STYLE_HWS = ((27, 33), (31, 25))  # two styles of different sizes
EPS = 1e-5
OUT_STD = 0.25


# Sequential index of the ReLU ending each named encoder layer (pytorch-AdaIN net.py slices).
ENC_RELU_INDEX = {"relu1_1": 3, "relu2_1": 10, "relu3_1": 17, "relu4_1": 30}


def calc_mean_std(feat: torch.Tensor, eps: float = EPS):
    n, c = feat.shape[:2]
    feat_var = feat.view(n, c, -1).var(dim=2) + eps  # unbiased, as in pytorch-AdaIN
    feat_std = feat_var.sqrt().view(n, c, 1, 1)
    feat_mean = feat.view(n, c, -1).mean(dim=2).view(n, c, 1, 1)
    return feat_mean, feat_std


def adaptive_instance_normalization(content_feat, style_feat):
    size = content_feat.size()
    style_mean, style_std = calc_mean_std(style_feat)
    content_mean, content_std = calc_mean_std(content_feat)
    normalized = (content_feat - content_mean.expand(size)) / content_std.expand(size)
    return normalized * style_std.expand(size) + style_mean.expand(size)


def masked_target(content_f, fg_style_f, bg_style_f, mask):
    """test.lua -mask: AdaIN of the foreground positions with style 1, background with style 2."""
    _, c, h, w = content_f.shape
    m = F.interpolate(mask[None, None], size=(h, w), mode="nearest").view(-1)
    fg = torch.nonzero(m == 1).squeeze(1)
    bg = torch.nonzero(m == 0).squeeze(1)
    view = content_f.view(c, -1)
    target = torch.zeros_like(view)
    t_fg = adaptive_instance_normalization(view[:, fg].reshape(1, c, -1, 1), fg_style_f)
    t_bg = adaptive_instance_normalization(view[:, bg].reshape(1, c, -1, 1), bg_style_f)
    target[:, fg] = t_fg.reshape(c, -1)
    target[:, bg] = t_bg.reshape(c, -1)
    return target.view_as(content_f)


def _center_biases(net: nn.Sequential, x: torch.Tensor, active: float = 0.7) -> None:
    for i, module in enumerate(net):
        if isinstance(module, nn.Conv2d) and i + 1 < len(net) and isinstance(net[i + 1], nn.ReLU):
            module.bias.zero_()
            pre = module(x).transpose(0, 1).reshape(module.out_channels, -1)
            module.bias.copy_(-torch.quantile(pre, 1.0 - active, dim=1))
        x = module(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "adain"
    parser.add_argument("--out", default=str(default_out), help="output folder (default: %(default)s)")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(0)
    vgg = vgg_normalised(ENC_WIDTHS).eval()
    dec = adain_decoder(DEC_WIDTHS).eval()
    with torch.no_grad():
        for m in list(vgg) + list(dec):
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.uniform_(m.bias, -0.1, 0.1)
    encoder = vgg[:31]  # shares the modules, so changes below reach the saved state dict

    g = torch.Generator().manual_seed(1)
    content = torch.rand(1, 3, *CONTENT_HW, generator=g)
    styles = [torch.rand(1, 3, *hw, generator=g) for hw in STYLE_HWS]

    with torch.no_grad():
        # Data-dependent biases: each ReLU passes ~70% of its channel on the fixture images, so no
        # channel is dead or constant (random narrow nets otherwise leave half the relu4_1
        # channels at zero, and AdaIN of a constant channel tests little).
        _center_biases(encoder, torch.cat([content, *[F.interpolate(s, CONTENT_HW) for s in styles]]))
        _center_biases(dec[:-2], encoder(content))
        # Scale the last decoder layer so that the output has mean 0.5 and std OUT_STD on the
        # content: mostly inside [0, 1], with some values outside, so clipping is exercised.
        y = dec(encoder(content))
        dec[-1].weight.mul_(OUT_STD / y.std())
        dec[-1].bias.add_(0.5 - dec(encoder(content)).mean())
    torch.save(vgg.state_dict(), out / "vgg_normalised_narrow.pth")
    torch.save(dec.state_dict(), out / "decoder_narrow.pth")

    # Foreground = left 12 columns and top 20 rows of the content (binary, at content resolution).
    mask = torch.zeros(CONTENT_HW)
    mask[:20, :12] = 1.0

    ref: dict[str, np.ndarray] = {
        "content": content, "style0": styles[0], "style1": styles[1], "mask": mask,
    }
    with torch.no_grad():
        x = content
        for i, module in enumerate(encoder):
            x = module(x)
            for name, idx in ENC_RELU_INDEX.items():
                if idx == i:
                    ref[f"enc_{name}"] = x
        cf = encoder(content)
        sfs = [encoder(s) for s in styles]
        mean, std = calc_mean_std(cf)
        ref["content_mean"], ref["content_std"] = mean, std
        t = adaptive_instance_normalization(cf, sfs[0])
        ref["adain"] = t
        ref["decoded_adain"] = dec(t)
        for alpha in (1.0, 0.5):
            feat = alpha * adaptive_instance_normalization(cf, sfs[0]) + (1 - alpha) * cf
            ref[f"stylized_alpha{alpha:g}"] = dec(feat)
        weights = (0.3, 0.7)
        feat = sum(wk * adaptive_instance_normalization(cf, sf) for wk, sf in zip(weights, sfs))
        ref["interp_weights"] = torch.tensor(weights)
        ref["stylized_interp"] = dec(feat)
        for alpha in (1.0, 0.5):
            feat = alpha * masked_target(cf, sfs[0], sfs[1], mask) + (1 - alpha) * cf
            ref[f"stylized_mask_alpha{alpha:g}"] = dec(feat)

    arrays = {}
    for k, v in ref.items():
        a = v.detach().numpy().astype(np.float32)
        if a.ndim == 4:  # NCHW -> NHWC, the layout nst_jax uses
            a = a.transpose(0, 2, 3, 1)
        arrays[k] = a
    np.savez_compressed(out / "reference.npz", **arrays)
    dead = int((arrays["content_std"] < 2 * EPS**0.5).sum())
    print(f"relu4_1 channels constant over the content: {dead} of {arrays['content_std'].size}")
    for k, a in arrays.items():
        print(f"{k:24s} {str(a.shape):20s} min {a.min():+.3f} max {a.max():+.3f}")


if __name__ == "__main__":
    main()
