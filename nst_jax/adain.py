"""Arbitrary style transfer with adaptive instance normalization (Huang & Belongie 2017).

The model is an encoder-decoder (report Sec. VI, Fig. 8): the fixed ``vgg_normalised`` encoder f up
to ``relu4_1`` (:data:`nst_jax.vgg.ADAIN_VGG`), an AdaIN layer that gives the content features the
style features' channel means and standard deviations (report eq. 8, 9), and a trained decoder g that
maps the result back to an image (report eq. 10, 11).

The core is pure and jittable:

* :func:`decode` is the decoder as a function of a params pytree (``params["dec4_1"]["kernel"]``,
  HWIO); :func:`init_decoder` makes random params; :class:`Decoder` is the same network as a Flax NNX
  module, convertible both ways;
* :func:`encode` runs the encoder;
* :func:`stylized_features` computes the decoder input with the test-time controls of the official
  code: content-style trade-off ``alpha`` (report eq. 11), style interpolation, spatial control
  with a mask, and colour preservation (:func:`preserve_color`);
* :func:`stylize` decodes that into images; :data:`stylize_jit` is its compiled entry point.

Deviations from the reference code are marked where they happen: the output is cropped to the
content size, masks are thresholded at 0.5, and colour preservation uses report eq. 7 on
covariances rather than ``coral``'s correlation matrices.

``python -m nst_jax.adain`` (console script ``nst-adain``) is the command-line front end
(:func:`main`); it is the only part that reads or writes files.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import sys
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax
from tqdm import tqdm

from nst_jax import cli, color, losses, memory, vgg, weights
from nst_jax import image as image_io
from nst_jax.errors import (
    ConfigError,
    InputImageError,
    MemoryBudgetError,
    NSTError,
    OutputPathError,
    WeightsError,
    check_choice,
    normalized_weights,
)

Array = jax.Array
Params = Mapping[str, Mapping[str, Array]]

# Decoder conv layers in forward order, named after the encoder layer each one mirrors (dec4_1
# inverts conv4_1, ..., dec1_1 produces RGB). Shared with the weights loader so the names cannot drift.
DECODER_LAYERS: tuple[str, ...] = weights.ADAIN_DECODER_LAYERS
# Channels at relu4_1 and after decoder blocks 3, 2, 1 (the encoder's widths, mirrored).
DECODER_WIDTHS: tuple[int, int, int, int] = (512, 256, 128, 64)
# He et al. (2015) Gaussian init, std sqrt(2 / fan_in), for the ReLU stack. Not the truncated
# variant (jax.nn.initializers.he_normal), whose inverse-erf sampler takes far longer to compile.
_KERNEL_INIT = jax.nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# Nearest-neighbour x2 up-sampling follows these layers; it replaces the encoder's max pooling
# (report Sec. VI-B: "pooling layers replaced by nearest up-sampling to reduce checkerboard effects").
_UPSAMPLE_AFTER = ("dec4_1", "dec3_1", "dec2_1")
ENCODER_LAYER = "relu4_1"
# Smallest image side for which relu4_1 still has a 2x2 map (reflection padding needs 2 pixels).
MIN_IMAGE_SIZE = vgg.min_image_size((ENCODER_LAYER,))
GRID_NAME = "grid.png"
GRID_CELL = 256  # largest height in pixels of one cell of grid.png


# ----------------------------------------------------------------------------------------------
# Decoder


def _layer_channels(widths: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """(in, out) channels of each layer in DECODER_LAYERS for encoder widths (w4, w3, w2, w1)."""
    w4, w3, w2, w1 = widths
    return ((w4, w3), (w3, w3), (w3, w3), (w3, w3), (w3, w2), (w2, w2), (w2, w1), (w1, w1), (w1, 3))


def check_decoder_params(params: Params) -> tuple[int, int, int, int]:
    """Checks a decoder params pytree and returns its widths (relu4_1, block 3, 2, 1 channels).

    Raises:
      WeightsError: layers are missing (``-``) or unexpected (``+``), or shapes do not chain.
    """
    missing = [f"-{n}" for n in DECODER_LAYERS if n not in params]
    unexpected = [f"+{n}" for n in params if n not in DECODER_LAYERS]
    if missing or unexpected:
        raise WeightsError("decoder params do not match the AdaIN decoder ("
                           + ", ".join(missing + unexpected)
                           + "); pass a decoder saved by nst_jax or pytorch-AdaIN's decoder.pth")
    try:
        k = {n: tuple(params[n]["kernel"].shape) for n in DECODER_LAYERS}
        b = {n: tuple(params[n]["bias"].shape) for n in DECODER_LAYERS}
    except (KeyError, TypeError, AttributeError) as err:
        raise WeightsError(f"decoder params need a 'kernel' and a 'bias' array per layer ({err!r}); "
                           "pass a decoder saved by nst_jax") from None
    widths = (k["dec4_1"][2], k["dec4_1"][3], k["dec3_1"][3], k["dec2_1"][3])
    for name, (cin, cout) in zip(DECODER_LAYERS, _layer_channels(widths)):
        if k[name] != (3, 3, cin, cout) or b[name] != (cout,):
            raise WeightsError(f"decoder layer {name} has kernel {k[name]} and bias {b[name]}, expected "
                               f"{(3, 3, cin, cout)} and {(cout,)} for widths {widths}; the decoder file "
                               "is damaged or not an AdaIN decoder")
    return widths


def init_decoder(key: Array, widths: Sequence[int] = DECODER_WIDTHS) -> dict[str, dict[str, Array]]:
    """Random decoder params: He-normal kernels (std sqrt(2 / fan_in)) and zero biases.

    Args:
      key: PRNG key.
      widths: channels at relu4_1 and after decoder blocks 3, 2, 1; ``DECODER_WIDTHS`` for the
        real network, smaller for tests.

    Returns:
      ``{"dec4_1": {"kernel": (3, 3, in, out), "bias": (out,)}, ...}`` for every name in
      :data:`DECODER_LAYERS`.
    """
    channels = _layer_channels(widths)
    sizes = [9 * cin * cout for cin, cout in channels]
    # One draw for all kernels: every separate random call adds about a second of compile time.
    flat = jax.random.normal(key, (sum(sizes),), jnp.float32)
    pieces = jnp.split(flat, np.cumsum(sizes)[:-1])
    return {name: {"kernel": piece.reshape(3, 3, cin, cout) * np.float32(np.sqrt(2.0 / (9 * cin))),
                   "bias": jnp.zeros((cout,), jnp.float32)}
            for name, piece, (cin, cout) in zip(DECODER_LAYERS, pieces, channels)}


def _upsample(x: Array) -> Array:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def decode(params: Params, t: Array) -> Array:
    """Decoder g: relu4_1-like features (N, h, w, C) to an image (N, 8h, 8w, 3), not clipped.

    The mirror of the encoder (report Sec. VI-B): 3x3 convs with reflection padding, a ReLU after
    each but the last, nearest x2 up-sampling where the encoder pools, no normalization layers.
    Channel counts come from ``params``.
    """
    x = t
    for name in DECODER_LAYERS:
        p = params[name]
        x = vgg.conv_layer(x, p, "reflect")  # reflection padding everywhere in g (report Sec. VI-B)
        if name != DECODER_LAYERS[-1]:
            x = jax.nn.relu(x)
        if name in _UPSAMPLE_AFTER:
            x = _upsample(x)
    return x


class Decoder(nnx.Module):
    """The decoder g as a Flax NNX module; ``decoder(t)`` equals ``decode(decoder.to_params(), t)``.

    Training and inference use the functional :func:`decode`; this class is for code that prefers
    modules (``nnx.Optimizer``, ``nnx.jit``).
    """

    def __init__(self, widths: Sequence[int] = DECODER_WIDTHS, *, rngs: nnx.Rngs):
        for name, (cin, cout) in zip(DECODER_LAYERS, _layer_channels(widths)):
            # The nnx.Conv holds the parameters; __call__ applies them with reflection padding.
            setattr(self, name, nnx.Conv(cin, cout, kernel_size=(3, 3), padding="VALID",
                                         kernel_init=_KERNEL_INIT,
                                         bias_init=jax.nn.initializers.zeros, rngs=rngs))

    def __call__(self, t: Array) -> Array:
        x = t
        for name in DECODER_LAYERS:
            conv = getattr(self, name)
            x = vgg.conv_layer(x, {"kernel": conv.kernel[...], "bias": conv.bias[...]}, "reflect")
            if name != DECODER_LAYERS[-1]:
                x = jax.nn.relu(x)
            if name in _UPSAMPLE_AFTER:
                x = _upsample(x)
        return x

    @classmethod
    def from_params(cls, params: Params) -> Decoder:
        """Builds a module holding ``params`` (checked with :func:`check_decoder_params`)."""
        widths = check_decoder_params(params)
        # eval_shape skips the random init that the values below would overwrite.
        module = nnx.eval_shape(lambda: cls(widths, rngs=nnx.Rngs(0)))
        for name in DECODER_LAYERS:
            conv = getattr(module, name)
            conv.kernel = nnx.Param(jnp.asarray(params[name]["kernel"], jnp.float32))
            conv.bias = nnx.Param(jnp.asarray(params[name]["bias"], jnp.float32))
        return module

    def to_params(self) -> dict[str, dict[str, Array]]:
        """The params pytree that :func:`decode` takes."""
        return {name: {"kernel": getattr(self, name).kernel[...], "bias": getattr(self, name).bias[...]}
                for name in DECODER_LAYERS}


# ----------------------------------------------------------------------------------------------
# Encoder and AdaIN


def encode(vgg_params: Params, image: Array, layers: Sequence[str] = (ENCODER_LAYER,)) -> dict[str, Array]:
    """Encoder f: ``vgg_normalised`` features of an NHWC [0, 1] image, ``{layer: NHWC}``."""
    return vgg.features(vgg_params, image, layers, network=vgg.ADAIN_VGG)


def _nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    # PyTorch's "nearest" convention (source index floor(i * in / out)), which the fixtures use.
    scale = np.float32(n_in / n_out)
    return np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int32), n_in - 1)


def resize_mask(mask: Array, height: int, width: int) -> Array:
    """Nearest-neighbour resize of the last two axes of a (N, H, W) or (H, W) mask."""
    rows = _nearest_indices(mask.shape[-2], height)
    cols = _nearest_indices(mask.shape[-1], width)
    return jnp.take(jnp.take(mask, rows, axis=-2), cols, axis=-1)


def _masked_mean_std(features: Array, weight: Array, eps: float = 1e-5) -> tuple[Array, Array]:
    """losses.mean_std over the positions where ``weight`` (N, H, W, 1) is 1 (unbiased, + eps).

    An empty region gets finite statistics (its count is clamped), which the caller multiplies by 0.
    """
    count = jnp.sum(weight, axis=(1, 2), keepdims=True)
    mean = jnp.sum(features * weight, axis=(1, 2), keepdims=True) / jnp.maximum(count, 1.0)
    sq = jnp.sum(weight * (features - mean) ** 2, axis=(1, 2), keepdims=True)
    var = sq / jnp.maximum(count - 1.0, 1.0)
    return mean, jnp.sqrt(var + eps)


def _style_stats(vgg_params: Params, styles: Sequence[Array]) -> tuple[Array, Array]:
    # Each entry is encoded on its own, so style images may differ in size from each other.
    stats = [losses.mean_std(encode(vgg_params, s)[ENCODER_LAYER]) for s in styles]
    return (jnp.concatenate([m for m, _ in stats], axis=0), jnp.concatenate([s for _, s in stats], axis=0))


def preserve_color(content: Array, style: Array, mode: str = "eig") -> Array:
    """Recolours ``style`` to the content's colour statistics (official ``-preserveColor``, ``coral``).

    A linear colour transfer (report Sec. IV-A) matching the style's RGB mean and covariance to the
    content's, applied before the style is encoded. The default ``"eig"`` is report eq. 7,
    ``A = Sigma_c^1/2 Sigma_s^-1/2``. Deviation: the official ``coral`` takes those square roots of
    the channel *correlation* matrices (each channel standardized first, plus an identity added to
    the unnormalized sums); both maps give the style the content's mean and covariance and differ
    only in a rotation of the colour space.

    Args:
      content: (1 or N, H, W, 3) content image(s) in [0, 1]; with N > 1 the style batch must be N.
      style: (N or 1, Hs, Ws, 3) style image(s) in [0, 1].
      mode: one of :data:`nst_jax.color.COLOR_TRANSFORMS`.

    Returns:
      The recoloured style, same shape, clipped to [0, 1].
    """
    return color.match_color(style, content, mode, clip=True)


_recolor = preserve_color  # stylize's ``preserve_color`` argument shadows the helper's name


def check_compatible(vgg_params: Params, decoder_params: Params) -> None:
    """Checks that the decoder takes the encoder's relu4_1 channels.

    Raises:
      WeightsError: the decoder params are malformed or their input width differs.
    """
    widths = check_decoder_params(decoder_params)
    try:
        enc_width = vgg_params["conv4_1"]["kernel"].shape[-1]
    except (KeyError, TypeError) as err:
        raise WeightsError(f"encoder params lack conv4_1.kernel ({err!r}); pass the vgg_normalised "
                           "encoder with --vgg") from None
    if enc_width != widths[0]:
        raise WeightsError(f"the decoder takes {widths[0]} channels but the encoder's {ENCODER_LAYER} "
                           f"gives {enc_width}; pass a --vgg and --decoder that belong together")


def _check_image(what: str, x: Array) -> None:
    if x.ndim != 4 or x.shape[-1] != 3:
        raise InputImageError(f"{what} must be an NHWC RGB batch (N, H, W, 3), got shape "
                              f"{tuple(x.shape)}; add a batch axis with image[None]")
    if min(x.shape[1:3]) < MIN_IMAGE_SIZE:
        raise InputImageError(f"{what} is {x.shape[2]}x{x.shape[1]} px; AdaIN needs at least "
                              f"{MIN_IMAGE_SIZE} px per side for {ENCODER_LAYER}; use a larger image")


def stylized_features(
    vgg_params: Params,
    content: Array,
    style: Array | Sequence[Array],
    alpha: float | Array = 1.0,
    *,
    interpolation_weights: Array | Sequence[float] | None = None,
    content_mask: Array | None = None,
    preserve_color: bool = False,
    color_mode: str = "eig",
) -> Array:
    """The decoder input (1 - alpha) f(c) + alpha t of report eq. 11, with t chosen by the mode.

    Pure and jittable. Three modes:

    * plain: ``t = AdaIN(f(c), f(s))`` (report eq. 8, 9), content and style batches paired (or one
      side of batch 1 broadcast to the other);
    * interpolation (``interpolation_weights``, K weights for K styles): ``t = sum_k w_k
      AdaIN(f(c), f(s_k))``, as the official ``-styleInterpWeights``. The weights are used as given
      (the CLI normalizes them to sum 1, as the official scripts do);
    * spatial control (``content_mask``, exactly two styles), as the official ``test.lua -mask``:
      AdaIN is applied separately to the foreground positions (mask >= 0.5) with style 1 and to the
      background with style 2, each region normalized with its own content statistics. The mask is
      resized to the feature resolution with nearest neighbour. Deviation: test.lua keeps only
      mask values of exactly 0 and 1 (other positions get zero features); we threshold at 0.5.

    Args:
      vgg_params: ``vgg_normalised`` encoder params (``preprocess``, ``conv1_1`` ... ``conv4_1``).
      content: (B, H, W, 3) RGB in [0, 1].
      style: (B or 1, Hs, Ws, 3) RGB in [0, 1]; for interpolation or masks the K styles along the
        batch axis. A sequence of arrays (each (n, Hs_i, Ws_i, 3)) is encoded one array at a time
        and concatenated along the batch axis, so its images may differ in size.
      alpha: content-style trade-off in [0, 1]; a traced value does not recompile.
      interpolation_weights: (K,) weights, one per style.
      content_mask: (H', W') or (B, H', W') foreground mask in [0, 1], any resolution.
      preserve_color: recolour each style to the content's colours before encoding
        (:func:`preserve_color`); the content batch must then be 1 or equal to each style batch.
      color_mode: the colour transfer used by ``preserve_color``.

    Returns:
      (B, h, w, C) features at relu4_1 resolution, float32.

    Raises:
      ConfigError: ``alpha`` outside [0, 1], or inconsistent styles / weights / mask.
      InputImageError: an image is not NHWC RGB or is smaller than :data:`MIN_IMAGE_SIZE`.
    """
    if isinstance(alpha, (int, float)) and not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be between 0 (content only) and 1 (full style), got {alpha}")
    if interpolation_weights is not None and content_mask is not None:
        raise ConfigError("style interpolation and a mask cannot be combined; pass one of "
                          "--style-interpolation-weights or --mask")
    styles = list(style) if isinstance(style, (list, tuple)) else [style]
    if not styles:
        raise ConfigError("no style images given; pass at least one")
    _check_image("content", content)
    for s in styles:
        _check_image("style", s)
    n_styles = sum(s.shape[0] for s in styles)
    if content_mask is not None and n_styles != 2:
        raise ConfigError(f"a mask needs exactly two styles (foreground, background), got {n_styles}")
    if interpolation_weights is not None:
        wts = jnp.asarray(interpolation_weights, jnp.float32)
        if wts.shape != (n_styles,):
            raise ConfigError(f"got interpolation weights of shape {wts.shape} for {n_styles} styles; "
                              "give one weight per style")
    elif content_mask is None and n_styles not in (1, content.shape[0]) and content.shape[0] != 1:
        raise ConfigError(f"{content.shape[0]} content images and {n_styles} style images cannot be "
                          "paired; give one style, one content, or equally many")
    if preserve_color:
        styles = [_recolor(content, s, color_mode) for s in styles]

    c_feat = encode(vgg_params, content)[ENCODER_LAYER]
    s_mean, s_std = _style_stats(vgg_params, styles)
    if content_mask is not None:
        fh, fw = c_feat.shape[1:3]
        mask = resize_mask(jnp.asarray(content_mask, jnp.float32), fh, fw)
        fg = (mask >= 0.5).astype(jnp.float32).reshape(-1, fh, fw, 1)
        fg = jnp.broadcast_to(fg, c_feat.shape[:3] + (1,))
        t = jnp.zeros_like(c_feat)
        for region, k in ((fg, 0), (1.0 - fg, 1)):
            c_mean, c_std = _masked_mean_std(c_feat, region)
            t = t + region * ((c_feat - c_mean) / c_std * s_std[k] + s_mean[k])
    elif interpolation_weights is not None:
        # AdaIN is affine in the style statistics, so with n the normalized content features
        # sum_k w_k (sigma_k n + mu_k) = n sum_k w_k sigma_k + sum_k w_k mu_k.
        c_mean, c_std = losses.mean_std(c_feat)
        s_std, s_mean = jnp.tensordot(wts, s_std, axes=1), jnp.tensordot(wts, s_mean, axes=1)
        t = (c_feat - c_mean) / c_std * s_std + s_mean
    else:
        c_mean, c_std = losses.mean_std(c_feat)
        t = (c_feat - c_mean) / c_std * s_std + s_mean  # report eq. 8

    alpha = jnp.asarray(alpha, jnp.float32)
    return alpha * t + (1.0 - alpha) * c_feat  # report eq. 11


def stylize(
    vgg_params: Params,
    decoder_params: Params,
    content: Array,
    style: Array | Sequence[Array],
    alpha: float | Array = 1.0,
    *,
    interpolation_weights: Array | Sequence[float] | None = None,
    content_mask: Array | None = None,
    preserve_color: bool = False,
    color_mode: str = "eig",
) -> Array:
    """AdaIN style transfer, T(c, s, alpha) = g((1 - alpha) f(c) + alpha AdaIN(f(c), f(s))) (eq. 11).

    Pure and jittable; :data:`stylize_jit` is the compiled entry point. The arguments after
    ``decoder_params`` (plain / interpolation / mask modes, colour preservation) are those of
    :func:`stylized_features`.

    Returns:
      (B, H, W, 3) stylized images clipped to [0, 1]. The decoder output (8x the relu4_1 size) is
      cropped to the content size: with sides that are not multiples of 8 the encoder's ceil-mode
      pooling makes it larger (deviation: the reference scripts save the larger image).

    Raises:
      ConfigError: ``alpha`` outside [0, 1], or inconsistent styles / weights / mask.
      InputImageError: an image is not NHWC RGB or is smaller than :data:`MIN_IMAGE_SIZE`.
      WeightsError: malformed decoder params, or a decoder input width that differs from the
        encoder's relu4_1 width.
    """
    check_compatible(vgg_params, decoder_params)
    feat = stylized_features(vgg_params, content, style, alpha,
                             interpolation_weights=interpolation_weights, content_mask=content_mask,
                             preserve_color=preserve_color, color_mode=color_mode)
    h, w = content.shape[1:3]
    return jnp.clip(decode(decoder_params, feat)[:, :h, :w, :], 0.0, 1.0)


# Compiled entry point: repeated calls with the same shapes (and the same static flags) reuse the
# program; alpha, weights and masks are traced.
stylize_jit = jax.jit(stylize, static_argnames=("preserve_color", "color_mode"))


# ----------------------------------------------------------------------------------------------
# Command line


@dataclasses.dataclass(frozen=True)
class AdainConfig:
    """Test-time settings of the command line (defaults of the official test scripts).

    Attributes:
      alpha: content-style trade-off in [0, 1] (report eq. 11).
      size: content short side in pixels; 0 keeps the original size.
      style_size: style short side in pixels; 0 keeps the original size; None resizes the style
        to the content's height and width, as the report does at test time (Sec. VI-C).
      preserve_color: recolour styles to the content's colours (official ``-preserveColor``).
      color_transform: the linear colour transfer used for that, one of ``color.COLOR_TRANSFORMS``.
      max_memory: memory budget in GiB for the size check (:func:`check_memory`); None: the
        device's memory.
    """

    alpha: float = 1.0
    size: int = 512
    style_size: int | None = None
    preserve_color: bool = False
    color_transform: str = "eig"
    max_memory: float | None = None

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:  # also rejects NaN
            raise ConfigError(f"--alpha must be between 0 (content only) and 1 (full style), "
                              f"got {self.alpha}")
        if self.size < 0:
            raise ConfigError(f"--size must be >= 0 (0 keeps the original size), got {self.size}")
        if self.style_size is not None and self.style_size < 0:
            raise ConfigError(f"--style-size must be >= 0 (0 keeps the original size), "
                              f"got {self.style_size}")
        check_choice("colour transform", self.color_transform, color.COLOR_TRANSFORMS, "--color-transform")
        if self.max_memory is not None and not (math.isfinite(self.max_memory) and self.max_memory > 0):
            raise ConfigError(f"--max-memory must be a finite number of GiB > 0, got {self.max_memory}")


def build_parser() -> cli.ArgumentParser:
    """The ``nst-adain`` argument parser; defaults come from :class:`AdainConfig`."""
    d = AdainConfig()
    p = cli.ArgumentParser(
        prog="nst-adain",
        description="Arbitrary style transfer with AdaIN (Huang & Belongie 2017): every content image "
                    "is stylized with every style image in one forward pass.")
    p.add_argument("--content", help="content image file or folder (default: the packaged photo)")
    p.add_argument("--style", nargs="+",
                   help="style image file(s) or folder(s) (default: the packaged painting)")
    p.add_argument("--style-interpolation-weights", nargs="+", type=float, metavar="W",
                   help="blend all styles into one image per content, one weight >= 0 per style "
                        "(normalized to sum 1)")
    p.add_argument("--mask",
                   help="foreground mask image: white takes the first style, black the second; "
                        "needs exactly two styles")
    p.add_argument("--alpha", type=float, default=d.alpha,
                   help=f"content-style trade-off, 0 (content) to 1 (style) (default {d.alpha})")
    p.add_argument("--preserve-color", action="store_true",
                   help="keep the content's colours by recolouring the styles first")
    p.add_argument("--color-transform", default=d.color_transform,
                   help=f"colour transfer for --preserve-color: {', '.join(color.COLOR_TRANSFORMS)} "
                        f"(default {d.color_transform})")
    p.add_argument("--size", type=int, default=d.size,
                   help=f"content short side in pixels, 0 = original (default {d.size})")
    p.add_argument("--style-size", type=int, default=d.style_size,
                   help="style short side in pixels, 0 = original (default: resized to the "
                        "content's height and width)")
    p.add_argument("--output", default=None,
                   help="output image file (one result) or folder (default: folder 'output'); a "
                        "folder gets {content}_stylized_{style}.png per pair (styles joined by _ "
                        f"when blended) and {GRID_NAME} when there are several pairs")
    p.add_argument("--vgg", help="vgg_normalised encoder .pth (default: cached or downloaded)")
    p.add_argument("--decoder",
                   help="decoder .pth or .npz saved by nst_jax (default: cached or downloaded)")
    p.add_argument("--max-memory", type=cli.positive(float, "--max-memory"), default=d.max_memory,
                   help="memory budget in GiB: larger jobs are refused before they start (default: "
                        "the device's memory)")
    return p


@dataclasses.dataclass(frozen=True)
class Job:
    """One output image: a content, its style(s) and where the result goes."""

    content: pathlib.Path
    styles: tuple[pathlib.Path, ...]  # one style, or all of them for interpolation / mask
    output: pathlib.Path


def _expand(paths: Sequence[str], what: str) -> list[pathlib.Path]:
    found: list[pathlib.Path] = []
    for raw in paths:
        path = pathlib.Path(raw)
        if path.is_dir():
            images = image_io.list_images(path)
            if not images:
                raise InputImageError(f"no images in the {what} folder {path}; add "
                                      f"{', '.join(image_io.IMAGE_EXTENSIONS)} files or pass a file")
            found += images
        elif not path.exists():
            raise InputImageError(f"{what} not found: {path}; check the path")
        else:
            found.append(path)
    return found


def _unique(path: pathlib.Path, taken: set[pathlib.Path]) -> pathlib.Path:
    # Contents from nested folders can share a file name; never let one output overwrite another.
    candidate, n = path, 2
    while candidate in taken:
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
        n += 1
    taken.add(candidate)
    return candidate


def _plan(contents, styles, combined: bool, output: str | None) -> tuple[list[Job], pathlib.Path | None]:
    """Returns the jobs and the folder for grid.png (None for a single file or blended styles)."""
    groups = [tuple(styles)] if combined else [(s,) for s in styles]
    n = len(contents) * len(groups)
    out = pathlib.Path(output) if output is not None else pathlib.Path("output")
    if out.suffix and not out.is_dir():
        if n != 1:
            raise ConfigError(f"--output {out} is one file but {n} images will be written; pass a folder")
        image_io.check_output_path(out)
        return [Job(contents[0], groups[0], out)], None
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"--output {out} exists and is not a folder; pass a folder or an "
                              "image file name")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputPathError(f"cannot create the output folder {out} ({err.strerror}); choose "
                              "another --output") from None
    taken: set[pathlib.Path] = set()
    jobs = [Job(c, g, _unique(out / f"{c.stem}_stylized_{'_'.join(s.stem for s in g)}.png", taken))
            for c in contents for g in groups]
    image_io.check_output_path(jobs[0].output)  # writable, before any work
    return jobs, None if combined else out


def _check_outputs(jobs: Sequence[Job], grid_dir: pathlib.Path | None, contents: Sequence[pathlib.Path],
                   styles: Sequence[pathlib.Path], mask: str | None) -> None:
    """Refuses a run where an output (or grid.png) would land on a content, style or mask file."""
    outputs = [("--output", job.output) for job in jobs]
    if grid_dir is not None and len(jobs) > 1:
        outputs.append(("--output (its grid)", grid_dir / GRID_NAME))
    cli.refuse_overwriting_inputs(outputs, [("content image", c) for c in contents]
                                  + [("style image", s) for s in styles] + [("mask image", mask)])


def _download_progress(what: str):
    bar = None

    def progress(done: int, total: int | None) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {what}", disable=None,
                       file=sys.stderr)
        bar.update(done - bar.n)
        if total is not None and done >= total:
            bar.close()

    return progress


def _load_weights(vgg_path: str | None, decoder_path: str | None) -> tuple[Params, Params]:
    # An explicit path never touches the network; otherwise the cache, else a download whose
    # failure message names the URL, the cache folder and the flag to pass instead.
    vgg_params = weights.resolve_weights("adain_vgg", vgg_path,
                                         progress=_download_progress("encoder"))
    decoder_params = weights.resolve_weights("adain_decoder", decoder_path,
                                             progress=_download_progress("decoder"))
    check_compatible(vgg_params, decoder_params)
    return vgg_params, decoder_params


def _sized(img: np.ndarray, short_side: int) -> np.ndarray:
    return img if short_side == 0 else image_io.resize(img, short_side=short_side)


def _decode_hw(path: pathlib.Path, short_side: int) -> tuple[int, int] | None:
    """The size an input is resized to (from its header), so a JPEG can be decoded near it."""
    return None if short_side == 0 else _target_hw(image_io.image_size(path), short_side)


def _largest_content_hw(config: AdainConfig, jobs: Sequence[Job]) -> tuple[int, int] | None:
    sizes = [_decode_hw(c, config.size) for c in dict.fromkeys(job.content for job in jobs)]
    if not sizes or None in sizes:
        return None
    return max(h for h, _ in sizes), max(w for _, w in sizes)


def _thumb(img: np.ndarray, height: int = GRID_CELL) -> np.ndarray:
    return image_io.resize(img, height=min(height, img.shape[0]))


def _grid(rows: list[np.ndarray], cols: list[np.ndarray], cells: dict[tuple[int, int], np.ndarray],
          gutter: int = 4) -> np.ndarray:
    """Contents as rows and styles as columns, headed by the originals, on white.

    Every tile is scaled to the tallest result's height (at most GRID_CELL); columns take the
    width of their widest tile.
    """
    height = max(t.shape[0] for t in cells.values())
    rows = [image_io.resize(r, height=height) for r in rows]
    cols = [image_io.resize(c, height=height) for c in cols]
    cells = {k: image_io.resize(t, height=height) for k, t in cells.items()}
    col_w = [max(r.shape[1] for r in rows)] + [
        max([c.shape[1]] + [cells[(i, j)].shape[1] for i in range(len(rows)) if (i, j) in cells])
        for j, c in enumerate(cols)]
    out = np.ones((gutter + (len(rows) + 1) * (height + gutter), gutter + sum(col_w) + gutter * len(col_w),
                   3), np.float32)

    def put(i: int, j: int, tile: np.ndarray) -> None:
        y = gutter + i * (height + gutter)
        x = gutter + sum(col_w[:j]) + gutter * j
        out[y:y + tile.shape[0], x:x + tile.shape[1]] = tile

    for j, c in enumerate(cols):
        put(0, j + 1, c)
    for i, r in enumerate(rows):
        put(i + 1, 0, r)
    for (i, j), tile in cells.items():
        put(i + 1, j + 1, tile)
    return out


def run(config: AdainConfig, jobs: Sequence[Job], grid_dir: pathlib.Path | None, vgg_params: Params,
        decoder_params: Params, *, interpolation_weights: Sequence[float] | None = None,
        mask: np.ndarray | None = None, progress: bool | None = None,
        done: list[pathlib.Path] | None = None) -> list[pathlib.Path]:
    """Stylizes every job and writes its image (and grid.png); returns the paths written.

    Jobs are expected in content-major order (as the CLI plans them): each content image is loaded
    once, style images are kept in memory for all contents.

    Args:
      config: sizes, alpha and colour settings.
      jobs: what to write, from the CLI's planning step.
      grid_dir: folder for grid.png, or None for no grid.
      vgg_params, decoder_params: the encoder and decoder.
      interpolation_weights: one weight per style of each job (style interpolation).
      mask: (H, W) foreground mask in [0, 1] (spatial control; two styles per job).
      progress: show a tqdm bar; None shows it when stderr is a terminal.
      done: receives each path as soon as it is written, so a caller interrupted with Ctrl-C knows
        what finished.
    """
    written = done if done is not None else []
    styles_in: dict[pathlib.Path, np.ndarray] = {}
    content_thumbs: dict[pathlib.Path, np.ndarray] = {}
    style_thumbs: dict[pathlib.Path, np.ndarray] = {}
    cells: dict[tuple[pathlib.Path, pathlib.Path], np.ndarray] = {}
    weights_arr = None if interpolation_weights is None else jnp.asarray(interpolation_weights, jnp.float32)
    mask_arr = None if mask is None else jnp.asarray(mask, jnp.float32)
    current: tuple[pathlib.Path | None, np.ndarray | None] = (None, None)
    with tqdm(total=len(jobs), unit="image", disable=None if progress is None else not progress,
              file=sys.stderr) as bar:
        for job in jobs:
            if current[0] != job.content:
                content = _sized(image_io.load_image(job.content, "content image",
                                                     min_size=_decode_hw(job.content, config.size)),
                                 config.size)
                image_io.check_min_size(content, MIN_IMAGE_SIZE, "content image", ENCODER_LAYER, "--size")
                current = (job.content, content)
                if grid_dir is not None:
                    content_thumbs[job.content] = _thumb(content)
            content = current[1]
            styles = []
            for path in job.styles:
                if path not in styles_in:
                    # Sampled at --style-size, or at every content's size, and as a grid thumbnail.
                    need = (_decode_hw(path, config.style_size) if config.style_size is not None
                            else _largest_content_hw(config, jobs))
                    if need is not None and grid_dir is not None:
                        need = (max(need[0], GRID_CELL), need[1])
                    original = image_io.load_image(path, "style image", min_size=need)
                    if grid_dir is not None:
                        style_thumbs[path] = _thumb(original)
                    # Keep the resized style when its size does not depend on the content.
                    styles_in[path] = (original if config.style_size is None
                                       else _sized(original, config.style_size))
                style = styles_in[path]
                if config.style_size is None:  # the report resizes the style to the content (Sec. VI-C)
                    style = image_io.resize(style, height=content.shape[0], width=content.shape[1])
                image_io.check_min_size(style, MIN_IMAGE_SIZE, f"style image {path.name}", ENCODER_LAYER,
                                        "--style-size")
                styles.append(jnp.asarray(style)[None])
            result = stylize_jit(vgg_params, decoder_params, jnp.asarray(content)[None], styles, config.alpha,
                                 interpolation_weights=weights_arr, content_mask=mask_arr,
                                 preserve_color=config.preserve_color, color_mode=config.color_transform)
            result = np.asarray(result[0])
            image_io.save_image(job.output, result)
            written.append(job.output)
            if grid_dir is not None:
                cells[(job.content, job.styles[0])] = _thumb(result)
            bar.update(1)
    if grid_dir is not None and len(jobs) > 1:
        contents, styles_seen = list(content_thumbs), list(style_thumbs)
        grid = _grid([content_thumbs[c] for c in contents], [style_thumbs[s] for s in styles_seen],
                     {(contents.index(c), styles_seen.index(s)): t for (c, s), t in cells.items()})
        written.append(image_io.save_image(grid_dir / GRID_NAME, grid))
    return written


def _target_hw(hw: tuple[int, int], short_side: int) -> tuple[int, int]:
    # The size image_io.resize(short_side=...) gives, computed without resizing anything.
    h, w = hw
    if short_side == 0:
        return h, w
    if h <= w:
        return image_io.size_for_height(h, w, short_side)
    return tuple(reversed(image_io.size_for_height(w, h, short_side)))  # type: ignore[return-value]


def check_memory(config: AdainConfig, jobs: Sequence[Job], vgg_params: Params, decoder_params: Params,
                 budget_bytes: int) -> None:
    """Refuses, before any stylization, a job whose memory estimate exceeds the budget.

    Reads the image sizes with :func:`nst_jax.image.image_size` (headers, not pixels, for most
    formats), so missing and non-image inputs are reported here too, before any work.

    Raises:
      MemoryBudgetError: the largest job needs more than ``budget_bytes``
        (:func:`nst_jax.memory.adain_bytes`).
      InputImageError: an input is missing or not an image.
    """
    headers: dict[pathlib.Path, tuple[int, int]] = {}

    def size_of(path: pathlib.Path, what: str) -> tuple[int, int]:
        if path not in headers:
            headers[path] = image_io.image_size(path, what)
        return headers[path]

    worst = (0, None, (0, 0))
    for job in jobs:
        content_hw = _target_hw(size_of(job.content, "content image"), config.size)
        style_hws = []
        for s in job.styles:
            hw = size_of(s, "style image")
            # Without --style-size the style is resized to the content (run() does the same).
            style_hws.append(content_hw if config.style_size is None else _target_hw(hw, config.style_size))
        need = memory.adain_bytes(content_hw, style_hws, vgg_params, decoder_params)
        worst = max(worst, (need, job.content, content_hw), key=lambda t: t[0])
    need, path, (h, w) = worst
    if need > budget_bytes:
        raise MemoryBudgetError(
            f"stylizing {path.name} at {w}x{h} px needs about {need / 2**30:.1f} GiB but "
            f"{budget_bytes / 2**30:.1f} GiB are available; lower --size (and --style-size), or "
            "raise --max-memory if you know better")


def _memory_budget(config: AdainConfig) -> int:
    if config.max_memory is not None:
        return int(config.max_memory * 2**30)
    return memory.available_bytes()


def _load_mask(path: str) -> np.ndarray:
    rgb = image_io.load_image(path, "mask image")
    return rgb.mean(axis=-1)  # gray; stylize takes >= 0.5 as foreground


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nst-adain`` / ``python -m nst_jax.adain``; returns the exit status.

    User errors print ``error: <message>`` to stderr and return 2; Ctrl-C returns 130 and keeps the
    images already written.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error already printed as "error: ..."
        return int(exit_.code or 0)
    done: list[pathlib.Path] = []
    try:
        from nst_jax import compile_cache

        compile_cache.enable()  # before the first compile; the library itself never sets it
        config = AdainConfig(alpha=args.alpha, size=args.size, style_size=args.style_size,
                             preserve_color=args.preserve_color, color_transform=args.color_transform,
                             max_memory=args.max_memory)
        contents = (_expand([args.content], "content image") if args.content
                    else [image_io.default_content_path()])
        styles = _expand(args.style, "style image") if args.style else [image_io.default_style_path()]
        wts = args.style_interpolation_weights
        if wts is not None and args.mask is not None:
            raise ConfigError("--style-interpolation-weights and --mask cannot be combined; pass one "
                              "of them")
        if wts is not None:
            if len(wts) != len(styles):
                raise ConfigError(f"got {len(wts)} --style-interpolation-weights for {len(styles)} "
                                  "style images; give one weight per style")
            wts = list(normalized_weights(wts, "--style-interpolation-weights"))  # as the official scripts do
        mask = None
        if args.mask is not None:
            if len(styles) != 2:
                raise ConfigError(f"--mask needs exactly two style images (foreground, background), "
                                  f"got {len(styles)}")
            mask = _load_mask(args.mask)
        jobs, grid_dir = _plan(contents, styles, wts is not None or mask is not None, args.output)
        _check_outputs(jobs, grid_dir, contents, styles, args.mask)
        vgg_params, decoder_params = _load_weights(args.vgg, args.decoder)
        check_memory(config, jobs, vgg_params, decoder_params, _memory_budget(config))
        run(config, jobs, grid_dir, vgg_params, decoder_params, interpolation_weights=wts, mask=mask,
            done=done)
    except NSTError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"interrupted: {len(done)} image(s) were written and kept", file=sys.stderr)
        return cli.EXIT_INTERRUPTED
    where = done[0].parent if done else ""
    print(f"wrote {len(done)} image(s) to {where}" if len(done) != 1 else f"wrote {done[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
