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
warp = jax.jit(flow.warp)
consistency_mask = jax.jit(flow.consistency_mask)
temporal_error = jax.jit(flow.temporal_error)


def _image(h=12, w=16, seed=0):
    return jax.random.uniform(jax.random.key(seed), (h, w, 3))


@settings(max_examples=15, deadline=None)
@given(dx=st.integers(-3, 3), dy=st.integers(-3, 3))
def test_integer_translation_is_a_shift(dx, dy):
    img = np.asarray(_image())
    out = np.asarray(warp(img, np.broadcast_to(np.asarray([dx, dy], np.float32), (12, 16, 2))))
    # out(y, x) = img(y + dy, x + dx) wherever that lies inside the image.
    ys = slice(max(0, -dy), 12 - max(0, dy))
    xs = slice(max(0, -dx), 16 - max(0, dx))
    expected = img[max(0, dy):12 + min(0, dy), max(0, dx):16 + min(0, dx)]
    np.testing.assert_allclose(out[ys, xs], expected, atol=1e-6)


def test_zero_flow_is_identity():
    img = _image()
    np.testing.assert_array_equal(warp(img, jnp.zeros((12, 16, 2))), img)


def test_half_pixel_is_the_average_of_neighbours():
    img = _image()
    out = warp(img, jnp.broadcast_to(jnp.asarray([0.5, 0.0]), (12, 16, 2)))
    np.testing.assert_allclose(out[:, :-1], 0.5 * (img[:, :-1] + img[:, 1:]), atol=1e-6)


def test_warp_is_linear_in_the_image_and_jittable():
    a, b = _image(seed=1), _image(seed=2)
    f = 2.0 * jax.random.normal(jax.random.key(3), (12, 16, 2))
    w = warp
    np.testing.assert_allclose(w(a + 2 * b, f), w(a, f) + 2 * w(b, f), atol=1e-5)


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
