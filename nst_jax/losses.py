"""Loss functions for neural style transfer (pure, jittable).

Feature maps are NHWC. Each loss sums over the batch dimension, so a batch of one is the paper's
formula and a larger batch sums independent problems.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def gram(features: Array, *, normalize: bool = False) -> Array:
    """Gram matrix G_ij = sum_hw F_ihw F_jhw (report eq. 2), one per batch element.

    Args:
      features: NHWC activations.
      normalize: divide by M = H*W, the number of positions.

    Returns:
      (N, C, C) Gram matrices, float32.
    """
    n, h, w, c = features.shape
    g = _gram(features.reshape(n, h * w, c).astype(jnp.float32))
    return g / (h * w) if normalize else g


@jax.custom_vjp
def _gram(f: Array) -> Array:
    """F^T F per batch element for (N, M, C) features."""
    return jnp.einsum("nmi,nmj->nij", f, f, precision=jax.lax.Precision.HIGHEST)


def _gram_fwd(f):
    return _gram(f), f


def _gram_bwd(f, dg):
    # d(F^T F) = F (dG + dG^T) as one matmul; JAX's rule makes two, plus transposed copies, which
    # cost XLA:CPU about 2.5x more (scripts/benchmark.py, section ops).
    return (jnp.einsum("nmi,nij->nmj", f, dg + jnp.swapaxes(dg, 1, 2), precision=jax.lax.Precision.HIGHEST),)


_gram.defvjp(_gram_fwd, _gram_bwd)


def content_loss(target: Array, features: Array) -> Array:
    """Content loss L_c = 1/2 sum (P - X)^2 (report eq. 1)."""
    diff = features.astype(jnp.float32) - target.astype(jnp.float32)
    return 0.5 * jnp.sum(diff * diff)


def style_layer_loss(target_gram: Array, features: Array) -> Array:
    """Style loss of one layer, sum (A - G)^2 / (4 N^2 M^2) (report eq. 3).

    ``target_gram`` is the style image's Gram matrix already divided by its own M (positions), and
    the generated image's Gram is divided by its M here. When both images have the same size this is
    exactly eq. 3; when the style image has another size, normalizing each Gram by its own M keeps
    the loss independent of the style image's resolution (deviation from the paper, which assumes
    equal sizes).

    Args:
      target_gram: (N or 1, C, C) normalized Gram matrix of the style features, ``gram(a, normalize=True)``.
      features: NHWC features of the generated image.
    """
    c = features.shape[-1]
    g = gram(features, normalize=True)
    diff = g - target_gram
    return jnp.sum(diff * diff) / (4.0 * c * c)


def masked_gram(features: Array, mask: Array) -> Array:
    """Guided Gram matrix (Gatys et al. 2017, spatial control): F masked by a guidance channel.

    Args:
      features: NHWC activations.
      mask: (N, H, W) or (H, W) guidance in [0, 1] at this layer's resolution.

    Returns:
      (N, C, C) Gram of ``features * mask`` divided by sum(mask^2) (clamped away from zero), so that
      a mask of ones gives ``gram(features, normalize=True)``.
    """
    n, h, w, c = features.shape
    mask = jnp.broadcast_to(mask, (n, h, w)).astype(jnp.float32)
    f = features.astype(jnp.float32) * mask[..., None]
    g = _gram(f.reshape(n, h * w, c))
    denom = jnp.maximum(jnp.sum(mask * mask, axis=(1, 2)), 1e-8)
    return g / denom[:, None, None]


def tv_loss(image: Array) -> Array:
    """Total variation: sum of squared differences between neighbouring pixels (Mahendran & Vedaldi)."""
    dh = image[:, 1:, :, :] - image[:, :-1, :, :]
    dw = image[:, :, 1:, :] - image[:, :, :-1, :]
    return jnp.sum(dh * dh) + jnp.sum(dw * dw)


def mean_std(features: Array, eps: float = 1e-5) -> tuple[Array, Array]:
    """Per-sample, per-channel mean and std over space, as in the AdaIN reference code.

    sigma = sqrt(unbiased variance + eps), the convention of Huang & Belongie's ``calc_mean_std``.

    Returns:
      (mean, std), each (N, 1, 1, C).
    """
    n, h, w, c = features.shape
    f = features.astype(jnp.float32)
    mean = jnp.mean(f, axis=(1, 2), keepdims=True)
    var = jnp.sum((f - mean) ** 2, axis=(1, 2), keepdims=True) / max(h * w - 1, 1)
    return mean, jnp.sqrt(var + eps)


def adain(content: Array, style: Array, eps: float = 1e-5) -> Array:
    """AdaIN(x, y) = sigma(y) (x - mu(x)) / sigma(x) + mu(y) (report eq. 8)."""
    c_mean, c_std = mean_std(content, eps)
    s_mean, s_std = mean_std(style, eps)
    return (content.astype(jnp.float32) - c_mean) / c_std * s_std + s_mean
