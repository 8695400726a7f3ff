"""The PyTorch reference networks, each defined once, for the fixture generators and torch_reference.

* :func:`vgg19_features`: torchvision ``vgg19().features`` (configuration E: zero padding, floor max
  or average pooling), any widths, optionally cut after a named layer.
* :func:`vgg_normalised`: naoto0804/pytorch-AdaIN ``net.py`` ``vgg`` (the 53-module
  ``vgg_normalised``: a 1x1 conv, then [ReflectionPad2d, Conv2d, ReLU] per conv, ceil-mode max
  pooling), whole or cut after relu4_1 (its first 31 modules, what AdaIN uses).
* :func:`adain_decoder`: pytorch-AdaIN ``net.py`` ``decoder`` (29 modules).

The builders create the modules in the same order as the original ``net.py`` code, so a caller that
seeds torch first gets the same random weights (the committed fixtures depend on it). Networks with
given weights (HWIO numpy params, as nst_jax stores them) come from a builder and
:func:`load_convs`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

VGG19_BLOCKS = (2, 2, 4, 4, 4)  # convs per block of VGG-19 (configuration E)
ADAIN_RELU4_1_MODULES = 31  # vgg_normalised modules 0-30 end with relu4_1


def vgg19_layer_names() -> list[str]:
    """Layer names in torchvision ``vgg19().features`` index order (conv1_1, relu1_1, ..., pool5)."""
    names = []
    for b, n in enumerate(VGG19_BLOCKS, start=1):
        for i in range(1, n + 1):
            names += [f"conv{b}_{i}", f"relu{b}_{i}"]
        names.append(f"pool{b}")
    return names


def vgg19_features(widths: Sequence[int], *, pooling: str = "max", inplace: bool = False,
                   last: str | None = None) -> tuple[nn.Sequential, list[str]]:
    """torchvision ``vgg19().features`` with the given channels per block; (modules, layer names).

    Args:
      widths: output channels of blocks 1..5 (torchvision: 64, 128, 256, 512, 512).
      pooling: "max" (torchvision) or "avg" (Gatys et al.'s variant).
      inplace: ReLU(inplace=...); torchvision uses True, losses that keep outputs need False.
      last: stop after this layer (no module after it is created).
    """
    layers: list[nn.Module] = []
    names: list[str] = []
    cin = 3
    for b, n in enumerate(VGG19_BLOCKS, start=1):
        for i in range(1, n + 1):
            layers += [nn.Conv2d(cin, widths[b - 1], kernel_size=3, padding=1), nn.ReLU(inplace=inplace)]
            names += [f"conv{b}_{i}", f"relu{b}_{i}"]
            cin = widths[b - 1]
            if last in names:
                cut = names.index(last) + 1
                return nn.Sequential(*layers[:cut]), names[:cut]
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2) if pooling == "max" else nn.AvgPool2d(2, 2))
        names.append(f"pool{b}")
        if last == names[-1]:
            break
    return nn.Sequential(*layers), names


def vgg_normalised_names() -> list[str]:
    """The name of each of the 53 ``vgg_normalised`` modules (``conv1_1_pad``, ``conv1_1``, ``relu1_1``, ...)."""
    names = ["preprocess"]
    for name in vgg19_layer_names()[:-1]:  # vgg_normalised ends at relu5_4, without pool5
        names += [f"{name}_pad", name] if name.startswith("conv") else [name]
    return names


def vgg_normalised(widths: Sequence[int], *, through_relu4_1: bool = False) -> nn.Sequential:
    """pytorch-AdaIN ``net.py`` ``vgg`` with the given channels per block (53 modules, or 31).

    Args:
      widths: output channels of blocks 1..5 (the real network: 64, 128, 256, 512, 512); the first
        four suffice with ``through_relu4_1``.
      through_relu4_1: build only modules 0-30 (up to relu4_1), as AdaIN's encoder uses.
    """
    def conv(cin, cout):
        return [nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(cin, cout, (3, 3)), nn.ReLU()]

    def pool():
        return [nn.MaxPool2d((2, 2), (2, 2), (0, 0), ceil_mode=True)]

    w = widths
    layers = [nn.Conv2d(3, 3, (1, 1))]
    layers += conv(3, w[0]) + conv(w[0], w[0]) + pool()
    layers += conv(w[0], w[1]) + conv(w[1], w[1]) + pool()
    layers += conv(w[1], w[2]) + conv(w[2], w[2]) + conv(w[2], w[2]) + conv(w[2], w[2]) + pool()
    if through_relu4_1:
        layers += conv(w[2], w[3])
        net = nn.Sequential(*layers)
        assert len(net) == ADAIN_RELU4_1_MODULES
        return net
    layers += conv(w[2], w[3]) + conv(w[3], w[3]) + conv(w[3], w[3]) + conv(w[3], w[3]) + pool()
    layers += conv(w[3], w[4]) + conv(w[4], w[4]) + conv(w[4], w[4]) + conv(w[4], w[4])
    net = nn.Sequential(*layers)
    assert len(net) == 53
    return net


def adain_decoder(widths: Sequence[int]) -> nn.Sequential:
    """pytorch-AdaIN ``net.py`` ``decoder`` (29 modules) for widths (relu4_1, block 3, 2, 1 channels).

    Reflection pad + 3x3 conv (+ ReLU but after the last), nearest x2 up-sampling after the 1st, 5th
    and 7th conv; the real network has widths (512, 256, 128, 64).
    """
    def conv(cin, cout, relu=True):
        layers = [nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(cin, cout, (3, 3))]
        return layers + ([nn.ReLU()] if relu else [])

    w = widths
    up = [nn.Upsample(scale_factor=2, mode="nearest")]
    layers = conv(w[0], w[1]) + up
    layers += conv(w[1], w[1]) + conv(w[1], w[1]) + conv(w[1], w[1]) + conv(w[1], w[2]) + up
    layers += conv(w[2], w[2]) + conv(w[2], w[3]) + up
    layers += conv(w[3], w[3]) + conv(w[3], 3, relu=False)
    net = nn.Sequential(*layers)
    assert len(net) == 29
    return net


def conv_indices(net: nn.Sequential) -> list[int]:
    """Indices of the Conv2d modules of ``net``, in order."""
    return [i for i, m in enumerate(net) if isinstance(m, nn.Conv2d)]


def load_convs(net: nn.Sequential, names: Sequence[str],
               params: Mapping[str, Mapping[str, np.ndarray]]) -> nn.Sequential:
    """Copies HWIO ``params[name]`` into the convs of ``net`` (paired in order) and freezes them."""
    convs = conv_indices(net)
    if len(convs) != len(names):
        raise ValueError(f"the network has {len(convs)} convs, got names {list(names)}")
    with torch.no_grad():
        for i, name in zip(convs, names):
            kernel = np.asarray(params[name]["kernel"], np.float32)  # HWIO
            net[i].weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))))
            net[i].bias.copy_(torch.from_numpy(np.asarray(params[name]["bias"], np.float32)))
            net[i].requires_grad_(False)
    return net


def out_channels(params: Mapping[str, Mapping[str, np.ndarray]], name: str) -> int:
    """Output channels of conv ``name`` in HWIO params."""
    return int(np.shape(params[name]["kernel"])[-1])
