"""Spatial control of Gatys style transfer with guided Gram matrices (Gatys et al. 2017, §4).

A *guide* is a soft mask over an image. With ``K`` styles and ``K`` guides ``T_r`` over the output
(the content image's frame), region ``r`` of the output is asked to take the style of image ``r``:

    E_l = sum_r c_r^l * sum_ij (G_r^l - A_r^l)_ij^2 / (4 N_l^2)

where ``G_r^l`` is the Gram matrix of the output's features at layer ``l`` masked by ``T_r^l`` and
normalized by ``sum (T_r^l)^2`` (:func:`nst_jax.losses.masked_gram`), ``A_r^l`` is the (optionally
masked) Gram matrix of style ``r``, and ``c_r^l = sum (T_r^l)^2 / M_l`` is the region's coverage of
the layer's ``M_l`` positions. Two properties follow and are tested:

* a single region covering everything (``T = 1``) gives back the unguided loss of report eq. 3;
* an empty region (``T = 0``) contributes nothing, neither to the loss nor to its gradient, so a style
  with an empty mask changes nothing.

The coverage weight is our choice (the paper leaves the per-region weights open): it makes the
guided loss a coverage-weighted average of per-region losses, so its scale matches the unguided loss
and ``--style-weight`` keeps its meaning.

Guides reach deeper layers by *box downsampling*: every 2x2 pooling of VGG is mirrored by a 2x2
average (floor mode, like the network's pooling), so a guide has exactly the feature map's size at
every layer. Deviation: Gatys et al. 2017 also propose propagating guides through the network or
eroding them ("inside" guides); simple downsampling is the first of their options.

Masks are ``(K, H, W)`` float32 in [0, 1]. Everything here is pure ``jax.numpy`` except that label
images arrive as arrays from :func:`nst_jax.image.load_image`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from nst_jax import color, losses, vgg
from nst_jax.errors import ConfigError, InputImageError

Array = jax.Array

__all__ = [
    "coverage",
    "guided_gram",
    "guided_layer_loss",
    "layer_masks",
    "masks_from_images",
    "regions_from_labels",
    "resize_masks",
]


def regions_from_labels(label: Array, count: int, colors: Sequence[Sequence[float]] | None = None) -> Array:
    """Splits a label image into ``count`` one-hot region masks, one per style.

    Without ``colors`` the label image is read as gray levels: its luminance is quantized to
    ``count`` evenly spaced levels from white (style 1) to black (style ``count``); for two styles
    this is a threshold at mid-gray (white -> style 1, black -> style 2). With one style, white marks
    where the style goes and black keeps only the content.

    With ``colors`` (one RGB triple in [0, 1] per style), every pixel goes to the style whose color
    is nearest, for color-coded label maps.

    Args:
      label: ``(H, W, 3)`` RGB label image in [0, 1].
      count: number of styles ``K``.
      colors: optional ``(K, 3)`` label colors in style order.

    Returns:
      ``(K, H, W)`` float32 masks that are 0 or 1 (for ``count >= 2`` they sum to 1 at each pixel).

    Raises:
      ConfigError: ``colors`` does not give one color per style.
    """
    label = jnp.asarray(label, jnp.float32)
    if colors is not None:
        palette = jnp.asarray(colors, jnp.float32)
        if palette.shape != (count, 3):
            raise ConfigError(f"--mask-colors has {len(colors)} colors for {count} styles; give one per style")
        dist = jnp.sum((label[None] - palette[:, None, None, :]) ** 2, axis=-1)
        return jax.nn.one_hot(jnp.argmin(dist, axis=0), count, axis=0, dtype=jnp.float32)
    y = color.luminance(label)[..., 0]
    if count == 1:
        return (y >= 0.5).astype(jnp.float32)[None]
    levels = 1.0 - jnp.arange(count, dtype=jnp.float32) / (count - 1)  # style 1 = white
    nearest = jnp.argmin(jnp.abs(y[None] - levels[:, None, None]), axis=0)
    return jax.nn.one_hot(nearest, count, axis=0, dtype=jnp.float32)


def masks_from_images(images: Iterable[Array]) -> Array:
    """Stacks one grayscale mask per style (their luminance, soft values kept) into ``(K, H, W)``.

    Raises:
      InputImageError: the masks differ in size.
    """
    masks = [color.luminance(jnp.asarray(m, jnp.float32))[..., 0] for m in images]
    shapes = {tuple(m.shape) for m in masks}
    if len(shapes) > 1:
        raise InputImageError(f"the mask images differ in size ({sorted(shapes)}); give masks of one size")
    return jnp.clip(jnp.stack(masks), 0.0, 1.0)


def resize_masks(masks: Array, height: int, width: int) -> Array:
    """Resamples ``(K, H, W)`` masks to ``(K, height, width)`` (linear, antialiased when shrinking).

    Linear interpolation keeps masks that sum to 1 summing to 1, and stays within [0, 1].
    """
    masks = jnp.asarray(masks, jnp.float32)
    if masks.shape[1:] == (height, width):
        return masks
    return jnp.clip(jax.image.resize(masks, (masks.shape[0], height, width), "linear", antialias=True), 0.0, 1.0)


def _box_pool(masks: Array) -> Array:
    # Mirrors vgg._pool without ceil mode: a 2x2 window, stride 2, floor at odd sizes.
    total = lax.reduce_window(masks, 0.0, lax.add, (1, 2, 2), (1, 2, 2), "VALID")
    return total / 4.0


def layer_masks(masks: Array, layers: Iterable[str]) -> dict[str, Array]:
    """Downsamples ``(K, H, W)`` input-resolution masks to each layer's feature-map size.

    Each VGG pooling halves the feature map (floor); the masks get a 2x2 box average at the same
    places, so ``layer_masks(m, ["relu3_1"])["relu3_1"]`` is ``(K, H // 4, W // 4)``.

    Returns:
      ``{layer: (K, H_l, W_l)}`` for every name in ``layers``.
    """
    masks = jnp.asarray(masks, jnp.float32)
    by_level = {0: masks}
    out = {}
    for name in layers:
        level = vgg.num_pools_before(name)
        for k in range(1, level + 1):
            if k not in by_level:
                by_level[k] = _box_pool(by_level[k - 1])
        out[name] = by_level[level]
    return out


def coverage(masks: Array) -> Array:
    """``(K,)`` share of the positions each region covers: ``sum(T_r^2) / M`` (1 for a full mask)."""
    return jnp.sum(masks * masks, axis=(-2, -1)) / (masks.shape[-2] * masks.shape[-1])


def guided_gram(features: Array, masks: Array) -> Array:
    """``(K, C, C)`` Gram matrices of ``(1, H, W, C)`` features under each of ``(K, H, W)`` masks."""
    return jax.vmap(lambda m: losses.masked_gram(features, m[None])[0])(masks)


def guided_layer_loss(target_grams: Array, features: Array, masks: Array) -> Array:
    """Guided style loss of one layer, ``sum_r c_r sum (G_r - A_r)^2 / (4 N^2)`` (see module doc).

    Args:
      target_grams: ``(K, C, C)`` Gram matrices of the styles, one per region.
      features: ``(1, H, W, C)`` features of the generated image at this layer.
      masks: ``(K, H, W)`` guides at this layer's resolution (:func:`layer_masks`).

    Returns:
      Scalar loss; an all-zero mask contributes exactly 0 (value and gradient).
    """
    c = features.shape[-1]
    diff = guided_gram(features, masks) - target_grams
    per_region = jnp.sum(diff * diff, axis=(1, 2)) / (4.0 * c * c)
    return jnp.sum(coverage(masks) * per_region)
