"""nst_jax.flow: bilinear warp against closed forms, DIS flow on a known pan, Ruder et al.'s mask."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("cv2")

import _clips  # noqa: E402
from nst_jax import flow  # noqa: E402
from nst_jax.errors import ConfigError  # noqa: E402

# Eager JAX compiles every primitive on first use; the functions are pure, so test them compiled.
warp = jax.jit(flow.warp, static_argnames="interpolation")
consistency_mask = jax.jit(flow.consistency_mask)
temporal_error = jax.jit(flow.temporal_error)


def _image(h=12, w=16, seed=0):
    # NumPy's generator: JAX's would compile a random-bits program per shape for a few numbers.
    return jnp.asarray(np.random.default_rng(seed).random((h, w, 3), np.float32))


@settings(max_examples=15, deadline=None)
@given(dx=st.integers(-3, 3), dy=st.integers(-3, 3), interpolation=st.sampled_from(flow.INTERPOLATIONS))
def test_integer_translation_is_a_shift(dx, dy, interpolation):
    img = np.asarray(_image())
    out = np.asarray(warp(img, np.broadcast_to(np.asarray([dx, dy], np.float32), (12, 16, 2)), interpolation))
    # out(y, x) = img(y + dy, x + dx) wherever that lies inside the image.
    ys = slice(max(0, -dy), 12 - max(0, dy))
    xs = slice(max(0, -dx), 16 - max(0, dx))
    expected = img[max(0, dy):12 + min(0, dy), max(0, dx):16 + min(0, dx)]
    np.testing.assert_allclose(out[ys, xs], expected, atol=1e-6)


@pytest.mark.parametrize("interpolation", flow.INTERPOLATIONS)
def test_zero_flow_is_identity(interpolation):
    img = _image()
    np.testing.assert_array_equal(warp(img, jnp.zeros((12, 16, 2)), interpolation), img)


def test_half_pixel_is_the_average_of_neighbours():
    img = _image()
    out = warp(img, jnp.broadcast_to(jnp.asarray([0.5, 0.0]), (12, 16, 2)))
    np.testing.assert_allclose(out[:, :-1], 0.5 * (img[:, :-1] + img[:, 1:]), atol=1e-6)


@pytest.mark.parametrize("interpolation", flow.INTERPOLATIONS)
def test_warp_is_linear_in_the_image_and_jittable(interpolation):
    a, b = _image(seed=1), _image(seed=2)
    f = 2.0 * np.random.default_rng(3).standard_normal((12, 16, 2), np.float32)
    np.testing.assert_allclose(warp(a + 2 * b, f, interpolation), warp(a, f, interpolation)
                               + 2 * warp(b, f, interpolation), atol=1e-5)


def _lanczos3_reference(img: np.ndarray, flow_: np.ndarray) -> np.ndarray:
    """Lanczos-3 sampling written out pixel by pixel (float64): 6x6 taps around floor(p + flow),
    weights sinc(d) sinc(d / 3) normalized per axis, positions and taps clamped to the image."""
    h, w = img.shape[:2]
    out = np.zeros(img.shape, np.float64)
    for y in range(h):
        for x in range(w):
            sx = min(max(x + float(flow_[y, x, 0]), 0.0), w - 1.0)
            sy = min(max(y + float(flow_[y, x, 1]), 0.0), h - 1.0)
            ix, iy = int(np.floor(sx)), int(np.floor(sy))
            kx = [np.sinc(sx - i) * np.sinc((sx - i) / 3) for i in range(ix - 2, ix + 4)]
            ky = [np.sinc(sy - j) * np.sinc((sy - j) / 3) for j in range(iy - 2, iy + 4)]
            for a, j in zip(np.asarray(ky) / np.sum(ky), range(iy - 2, iy + 4)):
                for b, i in zip(np.asarray(kx) / np.sum(kx), range(ix - 2, ix + 4)):
                    out[y, x] += a * b * img[min(max(j, 0), h - 1), min(max(i, 0), w - 1)]
    return out


def test_lanczos3_warp_matches_a_pixel_by_pixel_reference():
    img = np.asarray(_image(seed=4), np.float64)
    f = 1.5 * np.random.default_rng(5).standard_normal((12, 16, 2), np.float32)
    # Float32 weights and sums of 36 terms of values <= 1 (kernel weights up to ~1.1 in magnitude).
    np.testing.assert_allclose(warp(jnp.asarray(img, jnp.float32), f, "lanczos3"), _lanczos3_reference(img, f),
                               atol=1e-5)


def test_half_pixel_shift_of_a_4_pixel_period_keeps_its_contrast_with_lanczos3():
    """The closed forms: a half-pixel shift multiplies cos(2 pi f x) by cos(pi f) with bilinear
    sampling, and by sum_k w_k cos(2 pi f (k - 1/2)) with the normalized Lanczos-3 weights w_k."""
    f = 0.25
    xs = np.arange(32)
    img = np.broadcast_to(np.cos(2 * np.pi * f * xs)[None, :, None], (4, 32, 3)).astype(np.float32)
    shift = np.broadcast_to(np.asarray([0.5, 0.0], np.float32), (4, 32, 2))
    shifted = np.broadcast_to(np.cos(2 * np.pi * f * (xs + 0.5))[None, :, None], img.shape)
    k = np.arange(-2, 4)
    wk = np.sinc(0.5 - k) * np.sinc((0.5 - k) / 3)
    gain = np.sum(wk / wk.sum() * np.cos(2 * np.pi * f * (k - 0.5)))
    inner = slice(3, -3)  # away from the clamped borders
    np.testing.assert_allclose(warp(img, shift)[:, inner], (np.cos(np.pi * f) * shifted)[:, inner], atol=1e-6)
    np.testing.assert_allclose(warp(img, shift, "lanczos3")[:, inner], (gain * shifted)[:, inner], atol=1e-5)
    assert abs(gain - 1) < 0.03 < 1 - np.cos(np.pi * f)


def test_unknown_interpolation_is_refused():
    with pytest.raises(ConfigError, match="interpolation"):
        flow.warp(jnp.zeros((4, 4, 3)), jnp.zeros((4, 4, 2)), "cubic")


@pytest.mark.parametrize("method", flow.FLOW_METHODS)
def test_flow_recovers_a_pan(method):
    frames = _clips.pan_frames(2, step=2)
    back, fwd = flow.flows(frames[0], frames[1], method)
    # Frame 1 is frame 0 shifted left by 2 px: frame1(p) = frame0(p + (2, 0)).
    inner = (slice(4, -4), slice(4, -8))
    assert np.median(np.abs(back[inner] - [2.0, 0.0])) < 0.1
    assert np.median(np.abs(fwd[4:-4, 8:-4] - [-2.0, 0.0])) < 0.1


def test_mask_on_a_pan_excludes_only_what_left_the_frame():
    back = jnp.broadcast_to(jnp.asarray([2.0, 0.0]), (12, 16, 2))
    mask = consistency_mask(back, -back)
    assert np.all(mask[:, :14] == 1) and np.all(mask[:, 14:] == 0)


def test_mask_flags_disagreement_and_motion_boundaries():
    back = np.zeros((12, 16, 2), np.float32)
    back[:, 8:, 0] = 3.0  # right half moves: a motion boundary at column 7/8
    fwd = np.zeros_like(back)  # forward flow says nothing moved: inconsistent on the right
    mask = np.asarray(consistency_mask(jnp.asarray(back), jnp.asarray(fwd)))
    assert np.all(mask[:, :7] == 1)
    assert np.all(mask[:, 7] == 0)  # boundary: |grad u|^2 = 9 > 0.002
    assert np.all(mask[:, 8:] == 0)  # |w~ + w^|^2 = 9 > 0.01 * 9 + 0.5


def test_temporal_error_is_zero_for_an_exact_warp():
    frames = _clips.pan_frames(2, step=2)
    back = jnp.broadcast_to(jnp.asarray([2.0, 0.0]), frames[0].shape[:2] + (2,))
    mask = consistency_mask(back, -back)
    err = temporal_error(jnp.asarray(frames[1]), jnp.asarray(frames[0]), back, mask)
    assert float(err) < 1e-6
    other = temporal_error(jnp.asarray(frames[1]), jnp.asarray(frames[0]), jnp.zeros_like(back), mask)
    assert float(other) > 0.01


def test_unknown_method():
    with pytest.raises(ConfigError, match="farneback"):
        flow.optical_flow(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)), "farnback")
