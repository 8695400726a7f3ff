"""Writes the decoder-training golden fixtures in tests/fixtures/train/ with PyTorch (outputs are committed).

The reference is one training step of naoto0804/pytorch-AdaIN (``net.py`` ``Net.forward`` and
``train.py``) on NARROW networks with the real ``nn.Sequential`` layouts, so the state-dict keys are
the real ones: the ``vgg_normalised`` encoder (modules 0-30, up to relu4_1) and the decoder.
For the default loss reduction of ``nst_jax.train`` ("lua", λ = 0.1) it records Lc, Ls, the total,
the gradients of the total with respect to the decoder params, and the params after one and two
``torch.optim.Adam`` steps with lr 1e-4, betas (0.9, 0.9) (the second step makes the betas matter).
For every reduction ("lua", "mse", "l2"; see that module's docstring) it records the loss terms and
their gradients on small random feature maps: the reductions differ only there, and the rest of
the chain rule is the same network as above.

Written files:

* ``vgg_normalised_narrow.pth``, ``decoder_narrow.pth``: state dicts in the pytorch-AdaIN formats.
* ``reference.npz``: uint8 NHWC ``content`` / ``style`` batches; ``enc/<layer>/<leaf>`` and
  ``dec/<layer>/<leaf>`` params already in nst_jax layout (HWIO kernels), so the parity test does not
  depend on the .pth loader; ``lua/lc``, ``lua/ls``, ``lua/total``, ``lua/grad/<layer>/<leaf>``;
  ``adam1/<layer>/<leaf>``, ``adam2/<layer>/<leaf>``; ``heads/out/<layer>``, ``heads/style/<layer>``,
  ``heads/t`` (NHWC) and per norm ``heads/<norm>/{lc,ls,total,style_weight}`` and
  ``heads/<norm>/grad/<layer>`` (d total / d output features, NHWC).

Usage::

    python scripts/make_train_fixtures.py [--out tests/fixtures/train]

Requires torch (the ``torch`` extra); nothing in ``nst_jax`` or ``tests`` imports it.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
import torch
from torch import nn

from _torch_nets import adain_decoder, vgg_normalised

ENC_WIDTHS = (4, 6, 8, 12)  # channels of VGG blocks 1..4 (VGG-19: 64, 128, 256, 512)
BATCH, SIZE = 2, 32
EPS = 1e-5
STYLE_WEIGHTS = {"lua": 0.1, "mse": 10.0, "l2": 0.1}
LR, BETAS = 1e-4, (0.9, 0.9)

ENC_INDEX = {"preprocess": 0, "conv1_1": 2, "conv1_2": 5, "conv2_1": 9, "conv2_2": 12, "conv3_1": 16,
             "conv3_2": 19, "conv3_3": 22, "conv3_4": 25, "conv4_1": 29}
DEC_INDEX = {"dec4_1": 1, "dec3_4": 5, "dec3_3": 8, "dec3_2": 11, "dec3_1": 14, "dec2_2": 18, "dec2_1": 21,
             "dec1_2": 25, "dec1_1": 28}


def calc_mean_std(feat: torch.Tensor, eps: float = EPS):
    """pytorch-AdaIN ``function.calc_mean_std``: unbiased variance + eps."""
    n, c = feat.shape[:2]
    var = feat.view(n, c, -1).var(dim=2) + eps
    return feat.view(n, c, -1).mean(dim=2).view(n, c, 1, 1), var.sqrt().view(n, c, 1, 1)


def adain(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    c_mean, c_std = calc_mean_std(content)
    s_mean, s_std = calc_mean_std(style)
    return (content - c_mean) / c_std * s_std + s_mean


def loss_terms(out_feats, t, style_feats, norm: str):
    """(Lc, Ls) of ``net.Net.forward`` with the reduction selectable (see nst_jax.train's docstring).

    ``"mse"`` is pytorch-AdaIN's ``nn.MSELoss``; ``"lua"`` is the official ``MSECriterion`` with
    ``sizeAverage = false`` divided by N for the style terms; ``"l2"`` is un-squared per-sample norms.
    """
    def term(a, b):  # a, b: (N, C, ...)
        d = (a - b).reshape(a.shape[0], -1)
        if norm == "mse":
            return (d * d).mean()
        if norm == "lua":
            return (d * d).sum() / d.shape[0]
        return torch.linalg.vector_norm(d, dim=1).mean()

    d = (out_feats[-1] - t).reshape(t.shape[0], -1)
    loss_c = torch.linalg.vector_norm(d, dim=1).mean() if norm == "l2" else (d * d).mean()
    loss_s = 0.0
    for g, s in zip(out_feats, style_feats):
        gm, gs = calc_mean_std(g)
        sm, ss = calc_mean_std(s)
        loss_s = loss_s + term(gm, sm.detach()) + term(gs, ss.detach())
    return loss_c, loss_s


class Net(nn.Module):
    """pytorch-AdaIN ``net.Net`` with the loss reduction made selectable."""

    def __init__(self, encoder: nn.Sequential, dec: nn.Sequential):
        super().__init__()
        layers = list(encoder.children())
        self.enc = [nn.Sequential(*layers[:4]), nn.Sequential(*layers[4:11]),
                    nn.Sequential(*layers[11:18]), nn.Sequential(*layers[18:31])]
        self.decoder = dec

    def encode_with_intermediate(self, x):
        feats = []
        for enc in self.enc:
            x = enc(x)
            feats.append(x)
        return feats

    def forward(self, content, style, norm: str):
        style_feats = self.encode_with_intermediate(style)
        t = adain(self.encode_with_intermediate(content)[-1], style_feats[-1]).detach()
        g_feats = self.encode_with_intermediate(self.decoder(t))
        return loss_terms(g_feats, t, style_feats, norm)


def hwio(weight: torch.Tensor) -> np.ndarray:
    return weight.detach().permute(2, 3, 1, 0).numpy().astype(np.float32)


def named(seq: nn.Sequential, index: dict[str, int], what: str = "param") -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for name, i in index.items():
        conv = seq[i]
        w = conv.weight if what == "param" else conv.weight.grad
        b = conv.bias if what == "param" else conv.bias.grad
        out[name] = {"kernel": hwio(w), "bias": b.detach().numpy().astype(np.float32)}
    return out


def flat(prefix: str, params: dict) -> dict[str, np.ndarray]:
    return {f"{prefix}/{layer}/{leaf}": v for layer, d in params.items() for leaf, v in d.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="tests/fixtures/train")
    out = pathlib.Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(0)
    # The decoder's widths mirror the encoder's: (relu4_1, block 3, 2, 1 channels).
    encoder, dec = vgg_normalised(ENC_WIDTHS, through_relu4_1=True), adain_decoder(ENC_WIDTHS[::-1])
    with torch.no_grad():
        for m in encoder.modules():
            if isinstance(m, nn.Conv2d):  # He-normal so activations keep their scale through 10 convs
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.normal_(0.0, (2.0 / fan_in) ** 0.5)
                m.bias.uniform_(-0.05, 0.05)
        for m in dec.modules():
            if isinstance(m, nn.Conv2d):  # He-normal and small positive biases keep the narrow ReLU stack alive
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.normal_(0.0, (2.0 / fan_in) ** 0.5)
                m.bias.uniform_(0.0, 0.05)
    for p in encoder.parameters():
        p.requires_grad_(False)
    init_dec = {k: v.clone() for k, v in dec.state_dict().items()}

    rng = np.random.default_rng(0)
    # Smooth-ish images (low-frequency pattern + noise), uint8 as the input pipeline delivers them.
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE

    def images(phase: float) -> np.ndarray:
        base = np.stack([np.sin(2 * np.pi * (xx * (k + 1) + yy * (2 - k) + phase + j))
                         for j in range(BATCH) for k in range(3)]).reshape(BATCH, 3, SIZE, SIZE)
        return np.clip(127.5 + 80 * base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)

    content_u8, style_u8 = images(0.0), images(0.37)
    content = torch.from_numpy(content_u8.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    style = torch.from_numpy(style_u8.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)

    arrays: dict[str, np.ndarray] = {"content": content_u8, "style": style_u8}
    arrays.update(flat("enc", named(encoder, ENC_INDEX)))
    arrays.update(flat("dec", named(dec, DEC_INDEX)))
    # The whole network, default reduction ("lua", λ = 0.1): losses and decoder gradients.
    net = Net(encoder, dec)
    lc, ls = net(content, style, "lua")
    total = lc + STYLE_WEIGHTS["lua"] * ls
    total.backward()
    grads = named(dec, DEC_INDEX, "grad")
    dead = [name for name, g in grads.items() if not np.abs(g["kernel"]).max() > 0]
    assert not dead, f"zero gradients for {dead}: the narrow nets are dead, change the init"
    arrays.update({"lua/lc": np.float32(lc.item()), "lua/ls": np.float32(ls.item()),
                   "lua/total": np.float32(total.item())})
    arrays.update(flat("lua/grad", grads))
    print(f"network, lua: Lc={lc.item():.6g} Ls={ls.item():.6g} total={total.item():.6g}")

    # Every reduction on small random feature maps (the loss terms alone): values and d(total)/d(features).
    gen = torch.Generator().manual_seed(1)
    shapes = {"relu1_1": (BATCH, 4, 8, 8), "relu2_1": (BATCH, 6, 4, 4), "relu3_1": (BATCH, 8, 4, 4),
              "relu4_1": (BATCH, 12, 2, 2)}
    out_feats = [torch.rand(sh, generator=gen).requires_grad_(True) for sh in shapes.values()]
    style_feats = [torch.rand(sh, generator=gen) * 2 for sh in shapes.values()]
    t = torch.rand(shapes["relu4_1"], generator=gen)
    nhwc = lambda x: x.detach().permute(0, 2, 3, 1).numpy().astype(np.float32)  # noqa: E731
    for layer, o, st in zip(shapes, out_feats, style_feats):
        arrays[f"heads/out/{layer}"], arrays[f"heads/style/{layer}"] = nhwc(o), nhwc(st)
    arrays["heads/t"] = nhwc(t)
    for norm, weight in STYLE_WEIGHTS.items():
        for o in out_feats:
            o.grad = None
        lc, ls = loss_terms(out_feats, t, style_feats, norm)
        total = lc + weight * ls
        total.backward()
        arrays.update({f"heads/{norm}/lc": np.float32(lc.item()), f"heads/{norm}/ls": np.float32(ls.item()),
                       f"heads/{norm}/total": np.float32(total.item()),
                       f"heads/{norm}/style_weight": np.float32(weight)})
        for layer, o in zip(shapes, out_feats):
            arrays[f"heads/{norm}/grad/{layer}"] = nhwc(o.grad)
        print(f"loss terms, {norm}: Lc={lc.item():.6g} Ls={ls.item():.6g} total={total.item():.6g}")

    # Two Adam steps of train.py (constant lr: the plateau schedule has scale 1 this early).
    dec.load_state_dict(init_dec)
    net = Net(encoder, dec)
    opt = torch.optim.Adam(dec.parameters(), lr=LR, betas=BETAS, eps=1e-8)
    for k in (1, 2):
        opt.zero_grad()
        lc, ls = net(content, style, "lua")
        (lc + STYLE_WEIGHTS["lua"] * ls).backward()
        opt.step()
        arrays.update(flat(f"adam{k}", named(dec, DEC_INDEX)))

    dec.load_state_dict(init_dec)
    torch.save(encoder.state_dict(), out / "vgg_normalised_narrow.pth")
    torch.save(dec.state_dict(), out / "decoder_narrow.pth")
    np.savez(out / "reference.npz", **arrays)
    print(f"wrote {out}/reference.npz ({len(arrays)} arrays), vgg_normalised_narrow.pth, decoder_narrow.pth")


if __name__ == "__main__":
    main()
