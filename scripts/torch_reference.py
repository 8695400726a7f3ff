"""PyTorch reference implementations used only by ``scripts/benchmark.py --compare-torch``.

Written the standard PyTorch way, independently of ``nst_jax``, so that the benchmark compares
like with like:

* Gatys et al. (2016): a torchvision-layout VGG-19 ``nn.Sequential`` (zero padding, floor max
  pooling, ImageNet normalization) cut after the deepest layer used, content loss
  ``1/2 sum (P - X)^2`` (report eq. 1), style loss ``sum (G - A)^2 / (4 N^2)`` with ``G = F F^T / M``
  (report eq. 3), ``alpha L_c + beta sum_l w_l L_s`` (eq. 4), optimized with ``torch.optim.LBFGS``
  (one ``.step`` per iteration, ``max_iter=1``) or ``torch.optim.Adam``;
* AdaIN (Huang & Belongie 2017) as naoto0804/pytorch-AdaIN: the ``vgg_normalised`` encoder
  (1x1 preprocessing conv, reflection padding, ceil-mode pooling) up to relu4_1, the decoder
  ``nn.Sequential`` of ``net.py``, ``test.py``'s ``style_transfer`` and ``net.py``'s training loss
  (``nn.MSELoss`` on relu4_1 and on channel means / standard deviations) with Adam; for a video,
  ``test_video.py``'s loop, one frame at a time, with the style's features computed once.

Weights come in as numpy arrays in the nst_jax layout (``params["conv1_1"]["kernel"]`` HWIO,
``["bias"]``), converted here to OIHW, so both frameworks run the same network on the same inputs.
Images are NHWC float32 numpy arrays in [0, 1] at this boundary, NCHW tensors inside.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from _torch_nets import (
    ADAIN_RELU4_1_MODULES,
    adain_decoder as adain_decoder_net,
    load_convs,
    out_channels,
    vgg19_features,
    vgg19_layer_names,
    vgg_normalised,
    vgg_normalised_names,
)

# The GPU when there is one (the GPU benchmark suite compares on the same card), else the CPU.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    """Waits for queued GPU work, so that wall-clock timings measure it (a no-op on the CPU)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCH_OPTIMIZERS: tuple[str, ...] = ("lbfgs", "lbfgs-strong-wolfe", "adam")


def nchw(image: np.ndarray) -> torch.Tensor:
    """NHWC numpy [0, 1] to a contiguous NCHW float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(image, np.float32).transpose(0, 3, 1, 2))).to(DEVICE)


def nhwc(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().permute(0, 2, 3, 1).contiguous().cpu().numpy()


# ----------------------------------------------------------------------------------------------
# Gatys


def gram(f: torch.Tensor) -> torch.Tensor:
    """Gram matrix normalized by the number of positions, G = F F^T / M, per batch element."""
    n, c, h, w = f.shape
    f = f.reshape(n, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (h * w)


class GatysTorch:
    """The Gatys objective over a torchvision-layout VGG-19 cut after the deepest layer used."""

    def __init__(self, params: Mapping[str, Mapping[str, np.ndarray]], content: np.ndarray,
                 style: np.ndarray, content_layers: Sequence[str], style_layers: Sequence[str],
                 content_weight: float = 1e-2, style_weight: float = 1.0,
                 style_layer_weights: Sequence[float] | None = None):
        names = vgg19_layer_names()
        wanted = set(content_layers) | set(style_layers)
        last = names[max(names.index(n) for n in wanted)]
        widths = [out_channels(params, f"conv{b}_1") if f"conv{b}_1" in params else 1 for b in range(1, 6)]
        # inplace=False: the outputs are kept for the losses.
        net, self.names = vgg19_features(widths, pooling="max", inplace=False, last=last)
        self.net = load_convs(net, [n for n in self.names if n.startswith("conv")], params).eval().to(DEVICE)
        self.content_layers = tuple(content_layers)
        self.style_layers = tuple(style_layers)
        self.alpha, self.beta = float(content_weight), float(style_weight)
        n = len(self.style_layers)
        self.omega = [1.0 / n] * n if style_layer_weights is None else [float(w) for w in style_layer_weights]
        self.mean = torch.tensor(IMAGENET_MEAN, device=DEVICE).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=DEVICE).view(1, 3, 1, 1)
        with torch.no_grad():  # targets computed once
            c = self.features(nchw(content))
            s = self.features(nchw(style))
            self.content_targets = {n: c[n] for n in self.content_layers}
            self.style_targets = {n: gram(s[n]) for n in self.style_layers}

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (x - self.mean) / self.std
        out = {}
        for name, module in zip(self.names, self.net):
            x = module(x)
            out[name] = x
        return out

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        content = sum(0.5 * ((f[n] - self.content_targets[n]) ** 2).sum() for n in self.content_layers)
        style = sum(w * ((gram(f[n]) - self.style_targets[n]) ** 2).sum() / (4.0 * f[n].shape[1] ** 2)
                    for w, n in zip(self.omega, self.style_layers))
        return self.alpha * content + self.beta * style

    def value_and_grad(self, x: torch.Tensor) -> tuple[float, torch.Tensor]:
        """One function evaluation: loss and its gradient with respect to the image."""
        x = x.detach().requires_grad_(True)
        loss = self.loss(x)
        (grad,) = torch.autograd.grad(loss, x)
        return float(loss.detach()), grad


class GatysTorchRun:
    """Steps one optimization of the image with a torch optimizer, a given number of iterations at a time.

    ``lbfgs``: ``torch.optim.LBFGS(lr=1, max_iter=1, history_size=...)`` without line search (one
    function evaluation per iteration); ``lbfgs-strong-wolfe``: the same with
    ``line_search_fn="strong_wolfe"``; ``adam``: ``torch.optim.Adam(lr)``.
    """

    def __init__(self, model: GatysTorch, x0: np.ndarray, optimizer: str, lr: float | None = None,
                 history_size: int = 10):
        if optimizer not in TORCH_OPTIMIZERS:
            raise ValueError(f"unknown torch optimizer {optimizer!r}; one of {', '.join(TORCH_OPTIMIZERS)}")
        self.model = model
        self.kind = optimizer
        self.x = nchw(x0).clone().requires_grad_(True)
        if optimizer == "adam":
            self.opt = torch.optim.Adam([self.x], lr=0.02 if lr is None else lr)
        else:
            self.opt = torch.optim.LBFGS(
                [self.x], lr=1.0 if lr is None else lr, max_iter=1, history_size=history_size,
                line_search_fn="strong_wolfe" if optimizer == "lbfgs-strong-wolfe" else None)
        self.evals = 0
        self.iterations = 0
        self.seconds: list[tuple[int, float]] = []  # (iterations, wall seconds) per call of run()
        self._step_losses: list[float] = []  # loss at the iterate each step started from
        self._first_in_step = False

    def _closure(self) -> torch.Tensor:
        self.evals += 1
        self.opt.zero_grad()
        loss = self.model.loss(self.x)
        loss.backward()
        if self._first_in_step:  # every optimizer evaluates the current iterate first
            self._step_losses.append(float(loss.detach()))
            self._first_in_step = False
        return loss

    @property
    def losses(self) -> list[float]:
        """Loss at the init and after each iteration (the last one computed here, untimed)."""
        return self._step_losses + [self.current_loss()]

    def current_loss(self) -> float:
        """Exact loss at the current image (not counted, not timed)."""
        with torch.no_grad():
            return float(self.model.loss(self.x))

    def run(self, n: int) -> float:
        """Runs ``n`` iterations; returns their wall seconds."""
        t0 = time.perf_counter()
        for _ in range(n):
            self._first_in_step = True
            self.opt.step(self._closure)
        sync()
        dt = time.perf_counter() - t0
        self.iterations += n
        self.seconds.append((n, dt))
        return dt


# ----------------------------------------------------------------------------------------------
# AdaIN


def adain_encoder(params: Mapping[str, Mapping[str, np.ndarray]]) -> tuple[nn.Sequential, list[str]]:
    """pytorch-AdaIN's ``vgg_normalised`` up to relu4_1; returns modules and the name of each output."""
    widths = [out_channels(params, f"conv{b}_1") for b in range(1, 5)]
    net = vgg_normalised(widths, through_relu4_1=True)
    names = vgg_normalised_names()[:ADAIN_RELU4_1_MODULES]
    convs = ["preprocess"] + [n for n in names if n.startswith("conv") and not n.endswith("_pad")]
    return load_convs(net, convs, params).eval(), names


def adain_decoder(params: Mapping[str, Mapping[str, np.ndarray]], layer_names: Sequence[str]) -> nn.Sequential:
    """pytorch-AdaIN ``net.decoder``: reflection pad + 3x3 conv (+ ReLU), nearest x2 up-sampling."""
    if len(layer_names) != 9:
        raise ValueError(f"the AdaIN decoder has 9 convs, got names {list(layer_names)}")
    first = np.shape(params[layer_names[0]]["kernel"])
    widths = (first[2], first[3], out_channels(params, layer_names[4]), out_channels(params, layer_names[6]))
    return load_convs(adain_decoder_net(widths), layer_names, params)


def calc_mean_std(feat: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    n, c = feat.shape[:2]
    var = feat.reshape(n, c, -1).var(dim=2) + eps
    return feat.reshape(n, c, -1).mean(dim=2).view(n, c, 1, 1), var.sqrt().view(n, c, 1, 1)


def adaptive_instance_normalization(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    size = content.size()
    s_mean, s_std = calc_mean_std(style)
    c_mean, c_std = calc_mean_std(content)
    return (content - c_mean.expand(size)) / c_std.expand(size) * s_std.expand(size) + s_mean.expand(size)


class AdainTorch:
    """test.py ``style_transfer`` and net.py ``Net`` training step over the same weights."""

    STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")

    def __init__(self, vgg_params, decoder_params, decoder_layer_names: Sequence[str]):
        self.encoder, self.names = adain_encoder(vgg_params)
        self.encoder.to(DEVICE)
        self.decoder = adain_decoder(decoder_params, decoder_layer_names).to(DEVICE)
        # net.py splits the encoder into enc_1..enc_4 ending at relu1_1..relu4_1.
        ends = [self.names.index(n) + 1 for n in self.STYLE_LAYERS]
        starts = [0] + ends[:-1]
        self.slices = [self.encoder[a:b] for a, b in zip(starts, ends)]
        self.optimizer: torch.optim.Optimizer | None = None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def encode_with_intermediate(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [x]
        for part in self.slices:
            feats.append(part(feats[-1]))
        return feats[1:]

    def stylize(self, content: torch.Tensor, style: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        with torch.no_grad():
            content_f = self.encode(content)
            style_f = self.encode(style)
            feat = adaptive_instance_normalization(content_f, style_f)
            feat = feat * alpha + content_f * (1 - alpha)
            out = self.decoder(feat).clamp(0.0, 1.0)
        sync()  # the caller times this call
        return out

    def stylize_frames(self, frames: Sequence[np.ndarray], style: np.ndarray, alpha: float = 1.0) -> list[np.ndarray]:
        """A clip frame by frame as pytorch-AdaIN's ``test_video.py``, the style encoded once.

        ``frames`` are (H, W, 3) numpy images in [0, 1] and so are the results: each frame goes to a
        tensor, through the encoder, AdaIN with the style's statistics, the decoder and back, as a
        video loop reads and writes frames.
        """
        out = []
        with torch.no_grad():
            s_mean, s_std = calc_mean_std(self.encode(nchw(style)))
            for frame in frames:
                content_f = self.encode(nchw(frame[None]))
                c_mean, c_std = calc_mean_std(content_f)
                feat = (content_f - c_mean) / c_std * s_std + s_mean
                feat = feat * alpha + content_f * (1 - alpha)
                out.append(nhwc(self.decoder(feat).clamp(0.0, 1.0))[0])  # nhwc copies to the host: synced
        return out

    def losses(self, content: torch.Tensor, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """net.py ``Net.forward``: (loss_c, loss_s) with nn.MSELoss reductions."""
        mse = nn.functional.mse_loss
        style_feats = self.encode_with_intermediate(style)
        content_feat = self.encode(content)
        t = adaptive_instance_normalization(content_feat, style_feats[-1])
        g_t_feats = self.encode_with_intermediate(self.decoder(t))
        loss_c = mse(g_t_feats[-1], t)
        loss_s = 0.0
        for g, s in zip(g_t_feats, style_feats):
            g_mean, g_std = calc_mean_std(g)
            s_mean, s_std = calc_mean_std(s)
            loss_s = loss_s + mse(g_mean, s_mean) + mse(g_std, s_std)
        return loss_c, loss_s

    def train_step(self, content: torch.Tensor, style: torch.Tensor, lr: float = 1e-4,
                   content_weight: float = 1.0, style_weight: float = 10.0) -> float:
        """train.py's loop body: loss, zero_grad, backward, Adam step; returns the loss."""
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(self.decoder.parameters(), lr=lr)
            self.decoder.requires_grad_(True)
        loss_c, loss_s = self.losses(content, style)
        loss = content_weight * loss_c + style_weight * loss_s
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss)
