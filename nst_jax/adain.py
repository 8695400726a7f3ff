"""Arbitrary style transfer with adaptive instance normalization (Huang & Belongie 2017).

The model is an encoder-decoder (report Sec. VI, Fig. 8): the fixed ``vgg_normalised`` encoder f up
to ``relu4_1`` (:data:`nst_jax.vgg.ADAIN_VGG`), an AdaIN layer that gives the content features the
style features' channel means and standard deviations (report eq. 8, 9), and a trained decoder g that
maps the result back to an image (report eq. 10, 11).

The core is pure and jittable:

* :class:`Decoder` is the decoder, a Flax NNX module (its only definition); :func:`decode` runs it
  on a params pytree (``params["dec4_1"]["kernel"]``, HWIO: the module's state as a pure dict);
  :func:`init_decoder` makes random params with the module's initializers;
* :func:`encode` runs the encoder;
* :func:`stylized_features` computes the decoder input with the test-time controls of the official
  code: content-style trade-off ``alpha`` (report eq. 11), style interpolation, spatial control
  with a mask, and colour preservation (:func:`preserve_color`);
* :func:`stylize` decodes that into images; :data:`stylize_jit` is its compiled entry point.

Deviations from the reference code are marked where they happen: the output is cropped to the
content size, masks are thresholded at 0.5, and colour preservation uses report eq. 7 on
covariances rather than ``coral``'s correlation matrices.

The command line (``nst-adain``, ``python -m nst_jax.adain``) lives in :mod:`nst_jax.cli.adain`;
this module reads and writes no files.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nst_jax import color, decoder_layers, losses, vgg
from nst_jax.errors import (
    ConfigError,
    InputImageError,
    WeightsError,
    check_choice,
)

Array = jax.Array
Params = Mapping[str, Mapping[str, Array]]

# Decoder conv layers in forward order, named after the encoder layer each one mirrors (dec4_1
# inverts conv4_1, ..., dec1_1 produces RGB); the table lives in decoder_layers, which the weights
# loader reads too. Decoder.LAYERS is the same tuple.
DECODER_LAYERS: tuple[str, ...] = decoder_layers.LAYERS
# Channels at relu4_1 and after decoder blocks 3, 2, 1 (the encoder's widths, mirrored).
DECODER_WIDTHS: tuple[int, int, int, int] = decoder_layers.WIDTHS
_UPSAMPLE_AFTER = decoder_layers.UPSAMPLE_AFTER
ENCODER_LAYER = "relu4_1"
# Smallest image side for which relu4_1 still has a 2x2 map (reflection padding needs 2 pixels).
MIN_IMAGE_SIZE = vgg.min_image_size((ENCODER_LAYER,))
GRID_NAME = "grid.png"
GRID_CELL = 256  # largest height in pixels of one cell of grid.png


# ----------------------------------------------------------------------------------------------
# Decoder


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
    for name, (cin, cout) in zip(DECODER_LAYERS, decoder_layers.layer_channels(widths)):
        if k[name] != (3, 3, cin, cout) or b[name] != (cout,):
            raise WeightsError(f"decoder layer {name} has kernel {k[name]} and bias {b[name]}, expected "
                               f"{(3, 3, cin, cout)} and {(cout,)} for widths {widths}; the decoder file "
                               "is damaged or not an AdaIN decoder")
    return widths


class ReflectConv(nnx.Module):
    """A conv with reflection padding, its kernel (HWIO) and bias held as ``nnx.Param``.

    Applied by :func:`nst_jax.vgg.conv_layer`, the encoder's custom-VJP convolution, which is what
    keeps the decoder as fast as the encoder in training.

    Args:
      kernel: initial (kh, kw, in, out) kernel.
      bias: initial (out,) bias; zeros if omitted.
    """

    def __init__(self, kernel: Array, bias: Array | None = None):
        self.kernel = nnx.Param(jnp.asarray(kernel, jnp.float32))
        self.bias = nnx.Param(jnp.zeros(kernel.shape[-1:], jnp.float32) if bias is None
                              else jnp.asarray(bias, jnp.float32))

    def __call__(self, x: Array) -> Array:
        # Reflection padding everywhere in g (report Sec. VI-B).
        return vgg.conv_layer(x, self._params(), "reflect")

    def upsampled(self, x: Array) -> Array:
        """The layer applied to ``x`` up-sampled x2 (nearest): :func:`upsample_conv`."""
        return upsample_conv(x, self._params())

    def _params(self) -> dict[str, Array]:
        return {"kernel": self.kernel[...], "bias": self.bias[...]}


class Decoder(nnx.Module):
    """The decoder g (report Sec. VI-B) as a Flax NNX module: the only definition of the network.

    The mirror of the encoder: 3x3 convs with reflection padding, a ReLU after each but the last,
    nearest x2 up-sampling where the encoder pools, no normalization layers. Its parameters, as a
    pure dict (``nnx.to_pure_dict(nnx.state(decoder))``), are the params pytree that
    :func:`decode`, :mod:`nst_jax.weights` and the training checkpoints use:
    ``{"dec4_1": {"kernel": (3, 3, in, out), "bias": (out,)}, ...}``.

    Args:
      widths: channels at relu4_1 and after decoder blocks 3, 2, 1; :data:`DECODER_WIDTHS` for the
        real network, smaller for tests.
      rngs: randomness for the He-normal kernels (biases start at zero).
    """

    LAYERS: tuple[str, ...] = DECODER_LAYERS

    def __init__(self, widths: Sequence[int] = DECODER_WIDTHS, *, rngs: nnx.Rngs):
        channels = decoder_layers.layer_channels(widths)
        sizes = [9 * cin * cout for cin, cout in channels]
        # He et al. (2015) normal init, std sqrt(2 / fan_in), for the ReLU stack (not the truncated
        # variant, whose sampler is slow to compile). One draw for all kernels: a separate random
        # call per layer makes initialization take ten times longer to compile (3 s -> 30 s).
        flat = jax.random.normal(rngs.params(), (sum(sizes),), jnp.float32)
        pieces = jnp.split(flat, np.cumsum(sizes)[:-1])
        for name, piece, (cin, cout) in zip(self.LAYERS, pieces, channels):
            setattr(self, name, ReflectConv(piece.reshape(3, 3, cin, cout) * np.float32(np.sqrt(2.0 / (9 * cin)))))

    def __call__(self, t: Array) -> Array:
        """relu4_1-like features (N, h, w, C) to an image (N, 8h, 8w, 3), not clipped."""
        x, upsample = t, False
        for name in self.LAYERS:
            layer = getattr(self, name)
            x = layer.upsampled(x) if upsample else layer(x)
            if name != self.LAYERS[-1]:
                x = jax.nn.relu(x)
            upsample = name in _UPSAMPLE_AFTER
        return x

    @staticmethod
    def graphdef(widths: Sequence[int] = DECODER_WIDTHS) -> nnx.GraphDef:
        """The static half of ``nnx.split(Decoder(widths))``, without initializing any array."""
        return _graphdef(tuple(int(w) for w in widths))

    @classmethod
    def merge(cls, params: Params) -> Decoder:
        """The module holding ``params`` as they are (arrays or tracers): ``nnx.merge(graphdef, params)``.

        Raises:
          WeightsError: the params do not form a decoder (see :func:`check_decoder_params`).
        """
        return nnx.merge(cls.graphdef(check_decoder_params(params)), params)

    @classmethod
    def from_params(cls, params: Params) -> Decoder:
        """Builds a module holding copies of ``params`` as float32 JAX arrays (checked first)."""
        check_decoder_params(params)
        return cls.merge(jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), dict(params)))

    def to_params(self) -> dict[str, dict[str, Array]]:
        """The params pytree that :func:`decode` takes (the module's state as a pure dict)."""
        return nnx.to_pure_dict(nnx.state(self, nnx.Param))


@functools.lru_cache(maxsize=16)
def _graphdef(widths: tuple[int, int, int, int]) -> nnx.GraphDef:
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Decoder(widths, rngs=nnx.Rngs(0))))
    return graphdef


def init_decoder(key: Array, widths: Sequence[int] = DECODER_WIDTHS) -> dict[str, dict[str, Array]]:
    """Random decoder params from :class:`Decoder`'s initializers: He-normal kernels, zero biases.

    Args:
      key: PRNG key.
      widths: channels at relu4_1 and after decoder blocks 3, 2, 1.

    Returns:
      ``{"dec4_1": {"kernel": (3, 3, in, out), "bias": (out,)}, ...}`` for every name in
      :data:`DECODER_LAYERS`.
    """
    return Decoder(widths, rngs=nnx.Rngs(params=key)).to_params()


def upsample(x: Array) -> Array:
    """Nearest-neighbour x2 up-sampling of an NHWC map."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


# _PHASE_TAPS[p, a, i]: how much 3x3 kernel row i contributes to tap a of output phase p (see upsample_conv).
_PHASE_TAPS = np.array([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]], np.float32)


def upsample_conv(x: Array, p: Mapping[str, Array]) -> Array:
    """``vgg.conv_layer(upsample(x), p, "reflect")`` for a 3x3 kernel, computed on the small map.

    Exact rewriting, 4 instead of 9 multiply-adds per output pixel and no up-sampled copy of the
    input. Reflection padding of a nearest-up-sampled map is the up-sampling of the map padded by
    repeating its edge, and up-sampled row ``i = 2m + p`` sees rows ``m - 1, m, m`` (phase p = 0) or
    ``m, m, m + 1`` (p = 1) of the small map. So each of the four output phases (p, q) is a 2x2
    convolution of the edge-padded map with kernel rows (k0, k1 + k2) or (k0 + k1, k2), and the same
    for columns; the four phases are one convolution with 4x the output channels, interleaved after.
    In the decoder it is 2x faster than up-sampling first for each layer that follows an up-sampling
    on XLA:CPU (``scripts/benchmark.py --only adain``).

    Args:
      x: (N, H, W, C) map before up-sampling.
      p: ``{"kernel": (3, 3, C, O), "bias": (O,)}``.

    Returns:
      (N, 2H, 2W, O).
    """
    kernel = p["kernel"]
    if kernel.shape[:2] != (3, 3):
        raise ValueError(f"upsample_conv needs a 3x3 kernel, got {kernel.shape[:2]}")
    n, h, w, _ = x.shape
    cout = kernel.shape[-1]
    taps = jnp.asarray(_PHASE_TAPS, kernel.dtype)
    # phases[a, b, c, (p, q, o)] = sum_ij taps[p, a, i] taps[q, b, j] kernel[i, j, c, o]
    phases = jnp.einsum("pai,qbj,ijco->abcpqo", taps, taps, kernel,
                        precision=jax.lax.Precision.HIGHEST)
    phases = phases.reshape(2, 2, kernel.shape[2], 4 * cout).astype(x.dtype)
    edged = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    z = vgg.conv2d(edged, phases, ((0, 1), (0, 1)))  # (N, H + 2, W + 2, 4 * O); rows/cols 0..H, 0..W used
    z = z.reshape(n, h + 2, w + 2, 2, 2, cout)
    rows = [jnp.stack([z[:, a: a + h, b: b + w, a, b] for b in (0, 1)], axis=3) for a in (0, 1)]
    y = jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * w, cout)
    return y + p["bias"].astype(x.dtype)


def decode(params: Params, t: Array) -> Array:
    """Decoder g: relu4_1-like features (N, h, w, C) to an image (N, 8h, 8w, 3), not clipped.

    Runs :class:`Decoder` on ``params`` (``Decoder.merge(params)(t)``); channel counts come from
    ``params``.
    """
    return Decoder.merge(params)(t)


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
    encoded = encode_inputs(vgg_params, content, styles, preserve_color=preserve_color, color_mode=color_mode)
    return transfer_features(encoded, alpha, interpolation_weights=interpolation_weights,
                             content_mask=content_mask)


class Encoded(NamedTuple):
    """What the encoder makes of a content and its styles; :func:`transfer_features` mixes it.

    Keeping it lets a caller change alpha, interpolation weights or the mask at the cost of one
    decoder pass (the web app's sliders).
    """

    content: Array  # f(c) at relu4_1, (B, h, w, C)
    style_mean: Array  # (K, 1, 1, C), one row per style image
    style_std: Array  # (K, 1, 1, C)


def encode_inputs(vgg_params: Params, content: Array, styles: Sequence[Array], *,
                  preserve_color: bool = False, color_mode: str = "eig") -> Encoded:
    """Encodes a content batch and the relu4_1 mean/std of each style (recoloured first if asked).

    Pure and jittable; the inputs are those :func:`stylized_features` has checked.
    """
    if preserve_color:
        styles = [_recolor(content, s, color_mode) for s in styles]
    return Encoded(encode(vgg_params, content)[ENCODER_LAYER], *_style_stats(vgg_params, styles))


def transfer_features(encoded: Encoded, alpha: float | Array = 1.0, *,
                      interpolation_weights: Array | None = None,
                      content_mask: Array | None = None) -> Array:
    """The decoder input of report eq. 11 from already encoded features (see :func:`stylized_features`)."""
    c_feat, s_mean, s_std = encoded
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
        wts = jnp.asarray(interpolation_weights, jnp.float32)
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
    return render(decoder_params, feat, *content.shape[1:3])


def render(decoder_params: Params, features: Array, height: int, width: int) -> Array:
    """Decodes features into images cropped to ``height`` x ``width`` and clipped to [0, 1]."""
    return jnp.clip(decode(decoder_params, features)[:, :height, :width, :], 0.0, 1.0)


# Compiled entry point: repeated calls with the same shapes (and the same static flags) reuse the
# program; alpha, weights and masks are traced.
stylize_jit = jax.jit(stylize, static_argnames=("preserve_color", "color_mode"))


# ----------------------------------------------------------------------------------------------
# Settings of a run (the nst-adain command line is generated from them: nst_jax.cli.adain)


@dataclasses.dataclass(frozen=True)
class AdainConfig:
    """Test-time settings of a stylization run (defaults of the official test scripts).

    ``metadata`` describes each field as a flag of ``nst-adain`` (:mod:`nst_jax.cli.adain`).

    Attributes:
      alpha: content-style trade-off in [0, 1] (report eq. 11).
      size: output (content) HEIGHT in pixels, aspect ratio kept; 0 keeps the original size.
      style_size: style HEIGHT in pixels; 0 keeps the original size; None resizes the style to the
        content's height and width, as the report does at test time (Sec. VI-C).
      preserve_color: recolour styles to the content's colours (official ``-preserveColor``).
      color_transform: the linear colour transfer used for that, one of ``color.COLOR_TRANSFORMS``.
    """

    alpha: float = dataclasses.field(default=1.0, metadata={
        "help": "content-style trade-off, 0 (content) to 1 (style)", "group": "style"})
    size: int = dataclasses.field(default=512, metadata={
        "help": "output HEIGHT in pixels (aspect ratio kept), 0 = original", "group": "images", "min": ">=0",
        "default_help": "512 for images; a clip keeps its own height, lowered to what fits in memory"})
    style_size: int | None = dataclasses.field(default=None, metadata={
        "help": "style HEIGHT in pixels, 0 = original", "group": "images", "min": ">=0",
        "default_help": "resized to the content's height and width"})
    preserve_color: bool = dataclasses.field(default=False, metadata={
        "help": "keep the content's colours by recolouring the styles first", "group": "style"})
    color_transform: str = dataclasses.field(default="eig", metadata={
        "help": "colour transfer for --preserve-color", "group": "style", "choices": color.COLOR_TRANSFORMS})

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


if __name__ == "__main__":
    from nst_jax.cli.adain import console

    console()
