"""Colour control for style transfer (Gatys et al. 2017, "Controlling Perceptual Factors", §5).

Pure ``jax.numpy`` functions; every one is jittable (string arguments are static). Images are RGB in
[0, 1] with channels last: ``(H, W, 3)`` or ``(N, H, W, 3)``.

Two ways to keep the content's colours (``COLOR_MODES``):

* ``"luminance"`` — luminance-only transfer: style transfer runs on the Y channel of both images
  (the style's Y first matched to the content's mean and standard deviation), and the result's Y
  is recombined with the content's chroma (:func:`recombine`).
* ``"histogram"`` — the style image is recoloured so that its RGB mean and covariance equal the
  content's (:func:`match_color`, report eqs. 5-7); ``"histogram-from-style"`` recolours the
  content to the style's colours instead.

Colour spaces (``COLOR_SPACES``): ``"ycbcr"`` is ITU-R BT.601 full range as used by JPEG and
Pillow (Cb and Cr offset by 0.5 so that they lie in [0, 1]); ``"yiq"`` is the standard NTSC YIQ
matrix. Deviation: Gatys' notebook calls its space YIQ but uses the BT.601 YUV matrix
(``[-.147, -.288, .436]``, ``[.615, -.515, -.1]``); we use the standard YIQ rows. All three share
the Y row ``(.299, .587, .114)``, so the luminance that style transfer sees is the same, and since
every inverse maps ``(1, 0, 0)`` to (nearly) ``(1, 1, 1)``, recombination gives the same RGB up to
the rounding of the published matrices. Inverses are computed exactly (not the rounded published
inverses), so every round trip is exact to float precision.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nst_jax.errors import check_choice

__all__ = [
    "COLOR_MODES",
    "COLOR_SPACES",
    "COLOR_TRANSFORMS",
    "color_transform_matrix",
    "luminance",
    "match_color",
    "match_luminance",
    "prepare_color",
    "recombine",
    "restore_color",
    "rgb_to_ycbcr",
    "rgb_to_yiq",
    "to_luminance_rgb",
    "ycbcr_to_rgb",
    "yiq_to_rgb",
]

Array = jax.Array

COLOR_MODES: tuple[str, ...] = ("none", "luminance", "histogram", "histogram-from-style")
COLOR_SPACES: tuple[str, ...] = ("ycbcr", "yiq")
COLOR_TRANSFORMS: tuple[str, ...] = ("eig", "chol", "sym")

_HIGHEST = lax.Precision.HIGHEST  # GPUs would otherwise use TF32 for these small products

# ITU-R BT.601 full range (JFIF): Y in [0, 1], Cb and Cr centred on 0.5.
_YCBCR = np.array([[0.299, 0.587, 0.114],
                   [-0.168736, -0.331264, 0.5],
                   [0.5, -0.418688, -0.081312]])
_YCBCR_OFFSET = np.array([0.0, 0.5, 0.5])
# Standard NTSC YIQ (FCC 1953).
_YIQ = np.array([[0.299, 0.587, 0.114],
                 [0.596, -0.274, -0.322],
                 [0.211, -0.523, 0.312]])

# space -> (forward matrix, offset, exact inverse), all float32.
_SPACES = {
    name: (m.astype(np.float32), off.astype(np.float32), np.linalg.inv(m).astype(np.float32))
    for name, m, off in (("ycbcr", _YCBCR, _YCBCR_OFFSET), ("yiq", _YIQ, np.zeros(3)))
}


def _apply(x: Array, matrix: np.ndarray) -> Array:
    """Multiplies every pixel (last axis) by ``matrix``."""
    return jnp.matmul(x, jnp.asarray(matrix).T, precision=_HIGHEST)


def _to_space(rgb: Array, space: str) -> Array:
    forward, offset, _ = _SPACES[check_choice("colour space", space, COLOR_SPACES)]
    return _apply(jnp.asarray(rgb, jnp.float32), forward) + offset


def _from_space(x: Array, space: str) -> Array:
    _, offset, inverse = _SPACES[check_choice("colour space", space, COLOR_SPACES)]
    return _apply(jnp.asarray(x, jnp.float32) - offset, inverse)


def rgb_to_ycbcr(rgb: Array) -> Array:
    """RGB in [0, 1] -> BT.601 full-range YCbCr (Cb, Cr offset by 0.5), channels last."""
    return _to_space(rgb, "ycbcr")


def ycbcr_to_rgb(ycbcr: Array) -> Array:
    """Inverse of :func:`rgb_to_ycbcr` (not clipped)."""
    return _from_space(ycbcr, "ycbcr")


def rgb_to_yiq(rgb: Array) -> Array:
    """RGB in [0, 1] -> NTSC YIQ, channels last."""
    return _to_space(rgb, "yiq")


def yiq_to_rgb(yiq: Array) -> Array:
    """Inverse of :func:`rgb_to_yiq` (not clipped)."""
    return _from_space(yiq, "yiq")


# --------------------------------------------------------------------------------------------
# Luminance-only transfer


def luminance(image: Array, space: str = "ycbcr") -> Array:
    """Returns the Y channel of an RGB image, keeping a channel axis of size 1."""
    return _to_space(image, space)[..., :1]


def match_luminance(style_y: Array, content_y: Array, eps: float = 1e-3) -> Array:
    """Shifts and scales the style's luminance to the content's mean and standard deviation.

    Gatys et al. 2017, §5.1: ``L_s' = sigma_c / sigma_s * (L_s - mu_s) + mu_c``, with statistics
    over all pixels of each image (the last three axes). ``sigma_s`` is floored at ``eps`` so a
    flat style image gives a flat result at ``mu_c`` instead of NaN. The default, a quarter of an
    8-bit step, keeps the gain below ``1000 * sigma_c``, so float32 rounding in ``L_s - mu_s``
    of a flat image is not blown up into visible noise. Not clipped.

    Args:
      style_y: ``(..., H, W, 1)`` style luminance.
      content_y: ``(..., H', W', 1)`` content luminance (may differ in size).
      eps: the smallest style standard deviation divided by.

    Returns:
      The matched style luminance, shaped like ``style_y``.
    """
    axes = (-3, -2, -1)
    mu_s = jnp.mean(style_y, axis=axes, keepdims=True)
    mu_c = jnp.mean(content_y, axis=axes, keepdims=True)
    sigma_s = jnp.std(style_y, axis=axes, keepdims=True)
    sigma_c = jnp.std(content_y, axis=axes, keepdims=True)
    return sigma_c / jnp.maximum(sigma_s, eps) * (style_y - mu_s) + mu_c


def to_luminance_rgb(y: Array) -> Array:
    """Repeats a ``(..., 1)`` luminance channel three times: the gray RGB image VGG is fed."""
    return jnp.repeat(jnp.asarray(y), 3, axis=-1)


def recombine(result: Array, content_rgb: Array, space: str = "ycbcr") -> Array:
    """Puts the result's luminance under the content's chroma and returns RGB clipped to [0, 1].

    Args:
      result: the stylised luminance, ``(..., H, W, 1)``, or an RGB image ``(..., H, W, 3)`` whose
        Y is taken (the optimiser works on three gray channels that need not stay equal).
      content_rgb: the original content image at the same height and width.
      space: colour space whose chroma channels are kept.

    Returns:
      RGB ``(..., H, W, 3)`` in [0, 1].
    """
    result = jnp.asarray(result, jnp.float32)
    y = luminance(result, space) if result.shape[-1] == 3 else result
    content = _to_space(content_rgb, space)
    if y.shape[-3:-1] != content.shape[-3:-1]:
        raise ValueError(f"recombine needs the result and the content at the same size, got "
                         f"{y.shape[-3:-1]} and {content.shape[-3:-1]}; resize the content first")
    y = jnp.broadcast_to(y, content.shape[:-1] + (1,))
    mixed = jnp.concatenate([y, content[..., 1:]], axis=-1)
    return jnp.clip(_from_space(mixed, space), 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Histogram matching (linear colour transfer)


def _mean_cov(image: Array) -> tuple[Array, Array]:
    """RGB mean (3,) and population covariance (3, 3) over all pixels of one image."""
    pixels = jnp.reshape(image, (-1, 3))
    mu = jnp.mean(pixels, axis=0)
    centred = pixels - mu  # two passes: covariance from centred data keeps float32 accurate
    return mu, jnp.matmul(centred.T, centred, precision=_HIGHEST) / pixels.shape[0]


def _eig_floor(cov: np.ndarray, eps) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposes symmetric matrices ``(..., 3, 3)`` with eigenvalues floored at ``eps``."""
    w, v = np.linalg.eigh((cov + np.swapaxes(cov, -1, -2)) / 2)
    return np.maximum(w, np.asarray(eps, np.float64)[..., None]), v


def _pow(w: np.ndarray, v: np.ndarray, p: float) -> np.ndarray:
    return (v * w[..., None, :] ** p) @ np.swapaxes(v, -1, -2)


def _transform_f64(cov_source, cov_target, eps, *, mode: str) -> np.ndarray:
    """:func:`color_transform_matrix` in float64 NumPy, batched over leading axes; float32 out.

    The floored covariances can have condition numbers of ``max eigenvalue / eps`` (about 10^4 for
    an image with colour noise), and ``"sym"`` squares that in its middle matrix; float32
    eigen-decompositions would lose up to all their digits there, and differently on every path
    (batched or not, jit or eager, CPU or GPU). In float64 the rounding of these 3x3 products is
    far below float32 precision, so every path gives the same matrix to float32 rounding of the
    covariances it was given.
    """
    cov_s, cov_t = np.asarray(cov_source, np.float64), np.asarray(cov_target, np.float64)
    cov_s, cov_t = np.broadcast_arrays(cov_s, cov_t)
    out = np.full(cov_s.shape, np.nan)
    ok = np.isfinite(cov_s).all((-1, -2)) & np.isfinite(cov_t).all((-1, -2))
    eps = np.broadcast_to(np.asarray(eps, np.float64), cov_s.shape[:-2])[ok]
    ws, vs = _eig_floor(cov_s[ok], eps)
    wt, vt = _eig_floor(cov_t[ok], eps)
    if mode == "eig":
        a = _pow(wt, vt, 0.5) @ _pow(ws, vs, -0.5)
    elif mode == "chol":
        ls = np.linalg.cholesky(_pow(ws, vs, 1.0))
        lt = np.linalg.cholesky(_pow(wt, vt, 1.0))
        # A = Lt Ls⁻¹  <=>  Ls^T A^T = Lt^T; Ls is triangular and well within float64's range.
        a = np.swapaxes(np.linalg.solve(np.swapaxes(ls, -1, -2), np.swapaxes(lt, -1, -2)), -1, -2)
        a = np.tril(a)  # exact zeros above the diagonal, as a triangular solve gives
    else:
        s_half, s_inv_half = _pow(ws, vs, 0.5), _pow(ws, vs, -0.5)
        wm, vm = _eig_floor(s_half @ _pow(wt, vt, 1.0) @ s_half, np.zeros_like(eps))
        a = s_inv_half @ _pow(wm, vm, 0.5) @ s_inv_half
    out[ok] = a
    return out.astype(np.float32)


def color_transform_matrix(cov_source: Array, cov_target: Array, mode: str = "eig",
                           eps: float = 1e-5) -> Array:
    """Returns ``A`` with ``A Σs Aᵀ = Σt`` (report eq. 5), for one of ``COLOR_TRANSFORMS``.

    * ``"eig"`` (report eq. 7): ``A = Σt^½ Σs^-½`` with eigen square roots.
    * ``"chol"`` (report eq. 6): ``A = Lt Ls⁻¹`` with Cholesky factors ``Σ = L Lᵀ``.
    * ``"sym"`` (Gatys' notebook): ``A = Σs^-½ (Σs^½ Σt Σs^½)^½ Σs^-½``, the symmetric solution
      (it is the optimal-transport map between Gaussians); ``A Σs A = Σs^-½ M Σs^-½ = Σt``.

    Both covariances first get their eigenvalues floored at ``eps``, so nearly gray images (a
    rank-deficient covariance) give a finite ``A``. When every eigenvalue of ``Σs`` and ``Σt`` is at
    least ``eps`` nothing changes and the match is exact; otherwise ``Σt`` is matched up to ``eps``
    per direction, and a direction in which the source has (almost) no variance cannot gain any.

    The 3x3 algebra runs in float64 on the host (:func:`_transform_f64`): directly for concrete
    arrays, through ``jax.pure_callback`` under ``jit``/``vmap``, so every path computes the same
    matrix. It is not differentiable (colour matching is a preprocessing step). Leading axes of
    the covariances (and of ``eps``) broadcast. A non-finite covariance gives a NaN matrix.
    """
    check_choice("colour transform", mode, COLOR_TRANSFORMS)
    fn = functools.partial(_transform_f64, mode=mode)
    if not any(isinstance(x, jax.core.Tracer) for x in (cov_source, cov_target, eps)):
        return jnp.asarray(fn(cov_source, cov_target, np.asarray(eps, np.float32)))
    shape = jnp.broadcast_shapes(jnp.shape(cov_source), jnp.shape(cov_target))
    return jax.pure_callback(fn, jax.ShapeDtypeStruct(shape, jnp.float32), cov_source, cov_target,
                             jnp.asarray(eps, jnp.float32), vmap_method="broadcast_all")


def _match_one(source: Array, target: Array, mode: str, eps: float, clip: bool) -> Array:
    mu_s, cov_s = _mean_cov(source)
    mu_t, cov_t = _mean_cov(target)
    a = color_transform_matrix(cov_s, cov_t, mode, eps)
    # rho' = A rho + b with b = mu_t - A mu_s (report eq. 5), written around the means.
    out = jnp.matmul(source - mu_s, a.T, precision=_HIGHEST) + mu_t
    return jnp.clip(out, 0.0, 1.0) if clip else out


def match_color(source: Array, target: Array, mode: str = "eig", eps: float = 1e-5,
                clip: bool = False) -> Array:
    """Recolours ``source`` so its RGB mean and covariance equal ``target``'s (report eqs. 5-7).

    Not clipped by default, so the statistics match exactly; values may leave [0, 1] slightly.
    Callers that feed the result to VGG clip it (:func:`prepare_color` does).

    Args:
      source: ``(H, W, 3)`` or ``(..., H, W, 3)`` image to recolour.
      target: image whose colour statistics to take; its size may differ, leading axes broadcast.
      mode: one of ``COLOR_TRANSFORMS`` (static under jit).
      eps: eigenvalue floor for the covariances; see :func:`color_transform_matrix`.
      clip: clip the result to [0, 1] (static under jit).

    Returns:
      The recoloured source, float32, same shape as ``source``.

    Raises:
      ConfigError: unknown ``mode``.
    """
    check_choice("colour transform", mode, COLOR_TRANSFORMS)
    fn = functools.partial(_match_one, mode=mode, eps=eps, clip=clip)
    return jnp.vectorize(fn, signature="(h,w,c),(i,j,c)->(h,w,c)")(
        jnp.asarray(source, jnp.float32), jnp.asarray(target, jnp.float32))


# --------------------------------------------------------------------------------------------
# The colour modes as a pre- and a post-processing step


def prepare_color(content: Array, style: Array, color_mode: str, *, transform: str = "eig",
                  space: str = "ycbcr", eps: float = 1e-5) -> tuple[Array, Array]:
    """Returns the (content, style) pair style transfer should run on for ``color_mode``.

    * ``"none"``: unchanged.
    * ``"luminance"``: both as gray RGB of their Y channel, the style's Y matched to the
      content's mean and std (:func:`match_luminance`); call :func:`restore_color` afterwards.
    * ``"histogram"``: the style recoloured to the content's colour statistics.
    * ``"histogram-from-style"``: the content recoloured to the style's colour statistics.

    Results are clipped to [0, 1], the range VGG expects; clipping moves the matched statistics
    only where the linear map overshoots. ``eps`` is :func:`match_color`'s eigenvalue floor.

    Raises:
      ConfigError: unknown ``color_mode``, ``transform`` or ``space``.
    """
    check_choice("colour mode", color_mode, COLOR_MODES)
    check_choice("colour transform", transform, COLOR_TRANSFORMS)
    check_choice("colour space", space, COLOR_SPACES)
    if color_mode == "luminance":
        content_y = luminance(content, space)
        style_y = match_luminance(luminance(style, space), content_y)
        return (to_luminance_rgb(jnp.clip(content_y, 0.0, 1.0)),
                to_luminance_rgb(jnp.clip(style_y, 0.0, 1.0)))
    if color_mode == "histogram":
        return jnp.asarray(content), match_color(style, content, transform, eps, clip=True)
    if color_mode == "histogram-from-style":
        return match_color(content, style, transform, eps, clip=True), jnp.asarray(style)
    return jnp.asarray(content), jnp.asarray(style)


def restore_color(result: Array, content: Array, color_mode: str, *,
                  space: str = "ycbcr") -> Array:
    """Undoes :func:`prepare_color` on the stylised result; only ``"luminance"`` needs it.

    Args:
      result: the stylised image.
      content: the ORIGINAL content RGB (not the one prepare_color returned), same height/width.
      color_mode: one of ``COLOR_MODES``.
      space: the colour space given to prepare_color.

    Returns:
      RGB in [0, 1]: for ``"luminance"`` the result's Y under the content's chroma, otherwise
      ``result`` clipped.
    """
    check_choice("colour mode", color_mode, COLOR_MODES)
    if color_mode == "luminance":
        return recombine(result, content, space)
    return jnp.clip(jnp.asarray(result), 0.0, 1.0)
