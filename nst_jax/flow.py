"""Optical flow between frames, warping, and the consistency mask of Ruder et al. (2016).

Convention: ``flow = optical_flow(a, b)`` gives, for every pixel ``p`` of ``a``, the displacement
``(dx, dy)`` to where it is in ``b``: ``a(p) ~ b(p + flow(p))``. So ``warp(b, flow)`` samples ``b``
at ``p + flow(p)`` and reproduces ``a``. For video, frame t gets the previous stylized frame
warped by the *backward* flow ``optical_flow(frame_t, frame_{t-1})``.

Flow is computed on the host by OpenCV's DIS (Kroeger et al. 2016, ``cv2.DISOpticalFlow``, preset
MEDIUM): on the test clips it is as accurate as Farneback at a fraction of the time (README,
Video). Warping and the mask are pure JAX.

Reference: M. Ruder, A. Dosovitskiy, T. Brox, "Artistic style transfer for videos", GCPR 2016,
Sec. 3.2 (temporal loss, occlusion and motion-boundary detection).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax.errors import ConfigError, check_choice

Array = jax.Array
FLOW_METHODS: tuple[str, ...] = ("dis", "farneback")
INTERPOLATIONS: tuple[str, ...] = ("bilinear", "lanczos3")


def _cv2():
    try:
        import cv2
    except ImportError:
        raise ConfigError('video needs OpenCV for optical flow; install it with '
                          'pip install "nst_jax[video]"') from None
    return cv2


def _gray8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, np.float32)
    y = image @ np.asarray([0.299, 0.587, 0.114], np.float32)  # BT.601 luma, as OpenCV's RGB2GRAY
    return np.clip(y * 255.0 + 0.5, 0, 255).astype(np.uint8)


def optical_flow(a: np.ndarray, b: np.ndarray, method: str = "dis") -> np.ndarray:
    """Dense flow from frame ``a`` to frame ``b`` (both (H, W, 3) float in [0, 1]), (H, W, 2) float32.

    ``flow[..., 0]`` is the horizontal and ``flow[..., 1]`` the vertical displacement in pixels.
    """
    check_choice("flow method", method, FLOW_METHODS, "--flow")
    cv2 = _cv2()
    ga, gb = _gray8(a), _gray8(b)
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        flow = dis.calc(ga, gb, None)
    else:
        # OpenCV's documented example parameters (pyramid 0.5, 3 levels, window 15).
        flow = cv2.calcOpticalFlowFarneback(ga, gb, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    return np.asarray(flow, np.float32)


def warp(image: Array, flow: Array, interpolation: str = "bilinear") -> Array:
    """Samples ``image`` (H, W, C) at ``p + flow(p)`` (pure, jittable).

    ``interpolation``: ``"bilinear"`` (2x2 pixels), or ``"lanczos3"`` (6x6 pixels, the Lanczos
    kernel sinc(x) sinc(x/3) normalized to sum to 1 along each axis), which keeps an image's fine
    detail at fractional positions: at a half-pixel shift bilinear sampling multiplies the contrast
    of a frequency f (cycles per pixel) by cos(pi f) per axis, 0.71 for a 4-pixel period, while
    Lanczos-3 keeps it within 3% up to that period. Both reproduce integer shifts exactly. Positions outside the image take the nearest border pixel;
    :func:`consistency_mask` marks them as inconsistent, so the temporal loss never uses them.
    """
    check_choice("interpolation", interpolation, INTERPOLATIONS)
    h, w = image.shape[:2]
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    x = jnp.clip(xs + flow[..., 0], 0.0, w - 1.0)
    y = jnp.clip(ys + flow[..., 1], 0.0, h - 1.0)
    x0, y0 = jnp.floor(x), jnp.floor(y)
    fx, fy = x - x0, y - y0
    x0i, y0i = x0.astype(jnp.int32), y0.astype(jnp.int32)
    if interpolation == "bilinear":
        fx, fy = fx[..., None], fy[..., None]
        x1i, y1i = jnp.minimum(x0i + 1, w - 1), jnp.minimum(y0i + 1, h - 1)
        top = image[y0i, x0i] * (1 - fx) + image[y0i, x1i] * fx
        bottom = image[y1i, x0i] * (1 - fx) + image[y1i, x1i] * fx
        return top * (1 - fy) + bottom * fy
    taps = jnp.arange(-2, 4)  # the 6 pixels per axis whose Lanczos-3 weight can be non-zero
    wx, wy = _lanczos3(fx[..., None] - taps), _lanczos3(fy[..., None] - taps)  # (H, W, 6)
    wx, wy = wx / jnp.sum(wx, -1, keepdims=True), wy / jnp.sum(wy, -1, keepdims=True)
    xi, yi = jnp.clip(x0i[..., None] + taps, 0, w - 1), jnp.clip(y0i[..., None] + taps, 0, h - 1)
    patches = image[yi[..., :, None], xi[..., None, :]]  # (H, W, 6, 6, C): one gather
    return jnp.einsum("hwj,hwi,hwji...->hw...", wy, wx, patches, precision=jax.lax.Precision.HIGHEST)


def _lanczos3(d: Array) -> Array:
    # Exactly 1 at 0 and 0 at the other integers (float32 sinc is ~1e-8 there): integer shifts copy.
    value = jnp.where(jnp.abs(d) < 3.0, jnp.sinc(d) * jnp.sinc(d / 3.0), 0.0)
    return jnp.where(d == jnp.round(d), (d == 0).astype(value.dtype), value)


def _inside(flow: Array) -> Array:
    h, w = flow.shape[:2]
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    x, y = xs + flow[..., 0], ys + flow[..., 1]
    return (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)


def _gradient_sq(u: Array) -> Array:
    # Forward differences, zero at the last row/column.
    dx = jnp.pad(u[:, 1:] - u[:, :-1], ((0, 0), (0, 1)))
    dy = jnp.pad(u[1:, :] - u[:-1, :], ((0, 1), (0, 0)))
    return dx**2 + dy**2


def consistency_mask(backward: Array, forward: Array) -> Array:
    """Ruder et al. (2016) weights c in {0, 1} (H, W) for frame t: 0 at disocclusions and motion boundaries.

    Args:
      backward: flow frame t -> t-1 (the one used to warp frame t-1 onto frame t), called w-hat there.
      forward: flow frame t-1 -> t, called w.

    With ``w~(p) = w(p + w-hat(p))`` (the forward flow brought onto frame t), a pixel is
    disoccluded where ``|w~ + w-hat|^2 > 0.01 (|w~|^2 + |w-hat|^2) + 0.5`` and on a motion
    boundary where ``|grad u-hat|^2 + |grad v-hat|^2 > 0.01 |w-hat|^2 + 0.002``. Pixels whose
    backward flow leaves the image are masked too (deviation: the paper does not say).
    """
    fwd_on_t = warp(forward, backward)
    sq = lambda f: jnp.sum(f**2, axis=-1)  # noqa: E731
    occluded = sq(fwd_on_t + backward) > 0.01 * (sq(fwd_on_t) + sq(backward)) + 0.5
    boundary = _gradient_sq(backward[..., 0]) + _gradient_sq(backward[..., 1]) > 0.01 * sq(backward) + 0.002
    return (~occluded & ~boundary & _inside(backward)).astype(jnp.float32)


def temporal_error(current: Array, previous: Array, backward: Array, mask: Array,
                   interpolation: str = "bilinear") -> Array:
    """Mean |current - warp(previous)| over consistent pixels and channels (Ruder et al.'s measure).

    Returns 0 when no pixel is consistent.
    """
    diff = jnp.abs(current - warp(previous, backward, interpolation)) * mask[..., None]
    return jnp.sum(diff) / jnp.maximum(jnp.sum(mask) * current.shape[-1], 1.0)


def flows(previous: np.ndarray, current: np.ndarray, method: str = "dis") -> tuple[np.ndarray, np.ndarray]:
    """(backward, forward) flows between two frames: current -> previous and previous -> current."""
    return optical_flow(current, previous, method), optical_flow(previous, current, method)
