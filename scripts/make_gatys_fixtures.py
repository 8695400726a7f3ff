"""Writes the PyTorch golden files for the Gatys tests into tests/fixtures/gatys/.

Uses PyTorch once, here only (not a runtime or CI dependency): a narrow VGG-19 with torchvision's
module layout and state-dict keys, a seeded input, every layer's output, the Gatys losses and the
image gradient, and L-BFGS loss curves for the optimizer comparison.

    python scripts/make_gatys_fixtures.py   # needs torch; rerun only when the definitions change
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch
from torch import nn

from _torch_nets import vgg19_features

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "gatys"
# torchvision's VGG-19 configuration "E", with narrow widths so the files stay small.
WIDTHS = {1: 4, 2: 8, 3: 8, 4: 16, 5: 16}
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
CONTENT_LAYER = "relu4_2"
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
ALPHA, BETA = 1e-2, 1.0


def narrow_vgg19(pooling: str = "max") -> tuple[nn.Sequential, list[str]]:
    """torchvision ``vgg19().features`` with narrow widths; returns the modules and layer names."""
    return vgg19_features([WIDTHS[b] for b in range(1, 6)], pooling=pooling, inplace=False)


def all_features(features: nn.Sequential, names, image: torch.Tensor) -> dict[str, torch.Tensor]:
    x = (image - MEAN) / STD
    out = {}
    for name, module in zip(names, features):
        x = module(x)
        out[name] = x
    return out


def gram(f: torch.Tensor) -> torch.Tensor:
    n, c, h, w = f.shape
    f = f.reshape(n, c, h * w)
    return f @ f.transpose(1, 2) / (h * w)


def gatys_losses(features, names, content, style, x):
    p = all_features(features, names, content)[CONTENT_LAYER].detach()
    s = all_features(features, names, style)
    a = {n: gram(s[n]).detach() for n in STYLE_LAYERS}
    f = all_features(features, names, x)
    lc = 0.5 * ((f[CONTENT_LAYER] - p) ** 2).sum()
    per_layer = torch.stack([((gram(f[n]) - a[n]) ** 2).sum() / (4 * f[n].shape[1] ** 2) for n in STYLE_LAYERS])
    ls = per_layer.mean()  # omega_l = 1/5
    return ALPHA * lc + BETA * ls, lc, ls, per_layer


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    features, names = narrow_vgg19()
    for m in features:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.uniform_(m.bias, -0.05, 0.05)
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    # torchvision checkpoints also carry the classifier, which the loader must ignore.
    state["classifier.0.weight"] = torch.randn(8, WIDTHS[5] * 7 * 7)
    state["classifier.0.bias"] = torch.zeros(8)
    torch.save(state, OUT / "vgg19_narrow.pth")

    gen = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 40, 36, generator=gen)
    content = torch.rand(1, 3, 40, 36, generator=gen)
    style = torch.rand(1, 3, 44, 52, generator=gen)  # another size: Grams normalized by their own M
    with torch.no_grad():
        feats = all_features(features, names, image)
        avg_features, _ = narrow_vgg19("avg")
        avg_features.load_state_dict(features.state_dict())
        avg = all_features(avg_features, names, image)

    x = image.clone().requires_grad_(True)
    total, lc, ls, per_layer = gatys_losses(features, names, content, style, x)
    total.backward()

    # L-BFGS comparison on a held-out pair: same weights, same init (content + noise).
    pair = torch.Generator().manual_seed(2)
    c2 = torch.rand(1, 3, 48, 48, generator=pair)
    s2 = torch.rand(1, 3, 48, 56, generator=pair)
    noise = 0.1 * torch.randn(1, 3, 48, 48, generator=pair)
    curves = {}
    iterations = 20
    for label, kwargs in {"default": {}, "strong_wolfe": {"line_search_fn": "strong_wolfe"}}.items():
        y = (c2 + noise).clone().requires_grad_(True)
        opt = torch.optim.LBFGS([y], lr=1.0, max_iter=1, history_size=10, **kwargs)
        curve = [float(gatys_losses(features, names, c2, s2, y)[0])]

        def closure():
            opt.zero_grad()
            loss = gatys_losses(features, names, c2, s2, y)[0]
            loss.backward()
            return loss

        for _ in range(iterations):
            opt.step(closure)
            curve.append(float(gatys_losses(features, names, c2, s2, y)[0]))
        curves[label] = np.asarray(curve, np.float64)

    np.savez_compressed(
        OUT / "reference.npz",
        image=nhwc(image), content=nhwc(content), style=nhwc(style),
        **{f"max/{n}": nhwc(v) for n, v in feats.items()},
        **{f"avg/{n}": nhwc(avg[n]) for n in ("pool1", "relu3_1", "pool5")},
        total=np.float32(total.item()), content_loss=np.float32(lc.item()), style_loss=np.float32(ls.item()),
        style_per_layer=per_layer.detach().numpy().astype(np.float32), grad=nhwc(x.grad),
        lbfgs_content=nhwc(c2), lbfgs_style=nhwc(s2), lbfgs_noise=nhwc(noise),
        lbfgs_torch_default=curves["default"], lbfgs_torch_strong_wolfe=curves["strong_wolfe"],
    )
    print({k: v[-1] for k, v in curves.items()})


if __name__ == "__main__":
    main()
