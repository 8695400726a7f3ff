"""Tests for nst_jax.color against closed forms and Pillow's YCbCr conversion.

Statistics of the outputs are recomputed here in float64 NumPy, independently of the JAX code.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from nst_jax import color
from nst_jax.errors import ConfigError

RNG = np.random.default_rng(1)
EPS32 = float(np.finfo(np.float32).eps)


@pytest.fixture(autouse=True)
def _fresh_rng():
    """Every test draws the same data whatever ran before it (pytest-randomly shuffles the order)."""
    global RNG
    RNG = np.random.default_rng(1)


def _stats(image) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.asarray(image, np.float64).reshape(-1, 3)
    return pixels.mean(0), np.cov(pixels.T, bias=True)


def _colorful(h=24, w=32) -> np.ndarray:
    x = RNG.random((h, w, 3))
    mix = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.1], [0.1, 0.2, 0.4]])
    return (x @ mix.T + np.array([0.05, 0.1, 0.2])).astype(np.float32)


def _grayish(h=20, w=18, noise=0.02) -> np.ndarray:
    gray = RNG.random((h, w, 1)) * 0.7 + 0.15
    return (gray + noise * RNG.standard_normal((h, w, 3))).astype(np.float32)


def _spd(scale: float = 0.05) -> np.ndarray:
    m = RNG.standard_normal((3, 3))
    return scale * (m @ m.T / 3 + 0.05 * np.eye(3))


# ----------------------------------------------------------------------------------------------
# Colour spaces


@pytest.mark.parametrize("space", color.COLOR_SPACES)
def test_round_trip(space):
    rgb = RNG.random((2, 9, 11, 3)).astype(np.float32)
    fwd, inv = {"ycbcr": (color.rgb_to_ycbcr, color.ycbcr_to_rgb),
                "yiq": (color.rgb_to_yiq, color.yiq_to_rgb)}[space]
    np.testing.assert_allclose(inv(fwd(rgb)), rgb, atol=2e-6)


def test_ycbcr_matches_pillow():
    pixels = RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    theirs = np.asarray(Image.fromarray(pixels).convert("YCbCr"), np.float64)
    ours = np.asarray(color.rgb_to_ycbcr(pixels / np.float32(255)), np.float64) * 255
    # Pillow uses fixed-point arithmetic and rounds to integers.
    np.testing.assert_allclose(ours, theirs, atol=1.0)
    assert np.abs(ours - theirs).mean() < 0.5


def test_yiq_closed_form():
    eye = jnp.eye(3)  # pure red, green, blue
    np.testing.assert_allclose(color.rgb_to_yiq(eye).T, [[0.299, 0.587, 0.114],
                                                        [0.596, -0.274, -0.322],
                                                        [0.211, -0.523, 0.312]], atol=1e-7)
    np.testing.assert_allclose(color.rgb_to_yiq(jnp.ones(3)), [1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(color.rgb_to_ycbcr(jnp.ones(3)), [1.0, 0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(color.rgb_to_ycbcr(jnp.zeros(3)), [0.0, 0.5, 0.5], atol=1e-7)


# ----------------------------------------------------------------------------------------------
# Luminance-only transfer


def test_match_luminance_takes_content_mean_and_std():
    style_y = RNG.random((1, 12, 10, 1)).astype(np.float32) ** 2
    content_y = (0.3 + 0.1 * RNG.standard_normal((1, 8, 9, 1))).astype(np.float32)
    out = np.asarray(color.match_luminance(style_y, content_y), np.float64)
    assert out.shape == style_y.shape
    np.testing.assert_allclose(out.mean(), content_y.astype(np.float64).mean(), atol=1e-6)
    np.testing.assert_allclose(out.std(), content_y.astype(np.float64).std(), atol=1e-6)
    # An affine map of the style: correlation with the input stays 1.
    np.testing.assert_allclose(np.corrcoef(out.ravel(), style_y.ravel())[0, 1], 1.0, atol=1e-6)


def test_match_luminance_of_flat_style_is_finite():
    out = color.match_luminance(jnp.full((5, 5, 1), 0.4), jnp.linspace(0, 1, 25).reshape(5, 5, 1))
    np.testing.assert_allclose(out, 0.5, atol=1e-4)


@pytest.mark.parametrize("space", color.COLOR_SPACES)
def test_recombine_keeps_content_chroma(space):
    content = (0.35 + 0.3 * RNG.random((10, 12, 3))).astype(np.float32)
    content_y = np.asarray(color.luminance(content, space))
    result_y = (content_y + 0.08 * RNG.standard_normal(content_y.shape)).clip(0.35, 0.65)
    out = color.recombine(result_y.astype(np.float32), content, space)
    assert float(out.min()) > 0.0 and float(out.max()) < 1.0  # no clipping happened
    back = np.asarray(color._to_space(out, space))
    content_space = np.asarray(color._to_space(content, space))
    np.testing.assert_allclose(back[..., 1:], content_space[..., 1:], atol=2e-6)
    np.testing.assert_allclose(back[..., :1], result_y, atol=2e-6)
    # An RGB result is reduced to its luminance first.
    rgb_result = color.to_luminance_rgb(result_y.astype(np.float32))
    np.testing.assert_allclose(color.recombine(rgb_result, content, space), out, atol=2e-6)


def test_recombine_size_mismatch():
    with pytest.raises(ValueError, match="same size"):
        color.recombine(jnp.zeros((4, 4, 1)), jnp.zeros((5, 4, 3)))


def test_spaces_agree_on_luminance_recombination():
    # Same Y row, and both inverses send (1, 0, 0) to about (1, 1, 1): results differ only by the
    # rounding of the published matrices.
    content = (0.3 + 0.4 * RNG.random((6, 7, 3))).astype(np.float32)
    y = (0.4 + 0.2 * RNG.random((6, 7, 1))).astype(np.float32)
    np.testing.assert_allclose(color.recombine(y, content, "yiq"),
                               color.recombine(y, content, "ycbcr"), atol=2e-3)


# ----------------------------------------------------------------------------------------------
# Histogram matching


CASES = {
    "colorful": (_colorful, lambda: _colorful(16, 20) * 0.5 + 0.3),
    "grayish-source": (_grayish, _colorful),
    "grayish-target": (_colorful, _grayish),
    "both-grayish": (_grayish, lambda: _grayish(noise=0.01)),
}


@pytest.mark.parametrize("mode", color.COLOR_TRANSFORMS)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("direction", ["histogram", "histogram-from-style"])
def test_match_color_moments(mode, case, direction):
    content, style = (make() for make in CASES[case])
    source, target = (style, content) if direction == "histogram" else (content, style)
    out = color.match_color(source, target, mode)
    assert out.shape == source.shape and out.dtype == jnp.float32
    mu_o, cov_o = _stats(out)
    mu_t, cov_t = _stats(target)
    np.testing.assert_allclose(mu_o, mu_t, atol=1e-5)
    np.testing.assert_allclose(cov_o, cov_t, atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode", color.COLOR_TRANSFORMS)
def test_transform_matrix_solves_eq5(mode):
    cov_s, cov_t = _spd(), _spd(0.02)
    a = np.asarray(color.color_transform_matrix(jnp.asarray(cov_s, jnp.float32),
                                                jnp.asarray(cov_t, jnp.float32), mode), np.float64)
    np.testing.assert_allclose(a @ cov_s @ a.T, cov_t, atol=2e-6)
    if mode == "chol":  # Lt Ls^-1 is lower triangular
        np.testing.assert_allclose(np.triu(a, 1), 0.0, atol=1e-6)
    if mode == "sym":
        np.testing.assert_allclose(a, a.T, atol=1e-5)


def test_eig_sym_chol_coincide_for_diagonal_covariances():
    s, t = np.array([0.04, 0.01, 0.002]), np.array([0.01, 0.03, 0.005])
    expected = np.diag(np.sqrt(t / s))
    for mode in color.COLOR_TRANSFORMS:
        a = color.color_transform_matrix(jnp.diag(jnp.asarray(s, jnp.float32)),
                                         jnp.diag(jnp.asarray(t, jnp.float32)), mode)
        np.testing.assert_allclose(a, expected, rtol=1e-5, atol=1e-6)


def test_eig_and_sym_agree_when_covariances_commute():
    q, _ = np.linalg.qr(RNG.standard_normal((3, 3)))
    cov_s = q @ np.diag([0.03, 0.01, 0.004]) @ q.T
    cov_t = q @ np.diag([0.002, 0.02, 0.05]) @ q.T
    eig = color.color_transform_matrix(jnp.asarray(cov_s, jnp.float32),
                                       jnp.asarray(cov_t, jnp.float32), "eig")
    sym = color.color_transform_matrix(jnp.asarray(cov_s, jnp.float32),
                                       jnp.asarray(cov_t, jnp.float32), "sym")
    expected = q @ np.diag(np.sqrt([0.002 / 0.03, 0.02 / 0.01, 0.05 / 0.004])) @ q.T
    np.testing.assert_allclose(eig, expected, atol=5e-5)
    np.testing.assert_allclose(sym, expected, atol=5e-5)


def test_exactly_gray_target_is_matched_up_to_eps():
    source = _colorful()
    target = np.repeat(RNG.random((12, 12, 1)), 3, -1).astype(np.float32)  # rank-1 covariance
    for mode in color.COLOR_TRANSFORMS:
        out = np.asarray(color.match_color(source, target, mode, eps=1e-5))
        assert np.all(np.isfinite(out))
        mu_o, cov_o = _stats(out)
        mu_t, cov_t = _stats(target)
        np.testing.assert_allclose(mu_o, mu_t, atol=1e-5)
        np.testing.assert_allclose(cov_o, cov_t, atol=3e-5)  # eps in two flat directions
        # Nearly gray: channels differ by about sqrt(eps).
        assert np.abs(out - out.mean(-1, keepdims=True)).max() < 0.02


def test_exactly_gray_source_stays_finite():
    source = np.repeat(RNG.random((10, 10, 1)), 3, -1).astype(np.float32)
    target = _colorful()
    mu_t, cov_t = _stats(target)
    w, v = np.linalg.eigh(cov_t)
    u = np.ones(3) / np.sqrt(3)
    for mode in color.COLOR_TRANSFORMS:
        out = np.asarray(color.match_color(source, target, mode))
        assert np.all(np.isfinite(out))
        mu_o, cov_o = _stats(out)
        np.testing.assert_allclose(mu_o, mu_t, atol=1e-5)
        # Variance can only appear along one direction: the image of the gray axis.
        assert np.linalg.eigvalsh(cov_o)[1] < 1e-6
        if mode == "eig":
            # Σs^-½ Σs Σs^-½ = u uᵀ on the gray axis u, so the output covariance is
            # (Σt^½ u)(Σt^½ u)ᵀ.
            g = (v * np.sqrt(w)) @ v.T @ u
            np.testing.assert_allclose(cov_o, np.outer(g, g), atol=1e-4)


def test_match_color_does_not_clip_unless_asked():
    source, target = _colorful(), _colorful() * 1.6 - 0.3  # target leaves [0, 1]
    out = color.match_color(source, target)
    assert float(out.min()) < 0.0 or float(out.max()) > 1.0
    clipped = color.match_color(source, target, clip=True)
    np.testing.assert_allclose(clipped, jnp.clip(out, 0, 1))


def _ref_transform(cov_s, cov_t, mode, eps=1e-5):
    """Float64 reference of color_transform_matrix, written independently with SciPy."""
    from scipy import linalg

    def floor(c):
        w, v = np.linalg.eigh(c)
        return (v * np.maximum(w, eps)) @ v.T

    s, t = floor(cov_s), floor(cov_t)
    if mode == "eig":
        return np.real(linalg.sqrtm(t)) @ np.linalg.inv(np.real(linalg.sqrtm(s)))
    if mode == "chol":
        return np.linalg.cholesky(t) @ np.linalg.inv(np.linalg.cholesky(s))
    s_half = np.real(linalg.sqrtm(s))
    s_inv_half = np.linalg.inv(s_half)
    return s_inv_half @ np.real(linalg.sqrtm(s_half @ t @ s_half)) @ s_inv_half


def _ref_match(source, target, mode):
    """Float64 reference of match_color for one image, and a bound on float32 paths' deviation.

    The only float32 step whose rounding differs between paths (batched or not, jit or eager, one
    CPU or another) is the reduction giving the means and covariances: an n-term sum rounds to
    within about sqrt(n) * eps32 of each term's size (the probabilistic bound, Higham §2.8; here
    with a factor 4 of margin). How much that moves A is the conditioning of the transform, measured
    here as its float64 Jacobian (central differences) with respect to every covariance entry. So the
    tolerance grows with the condition numbers of the floored covariances, not with a machine.
    """
    xs, xt = (np.asarray(x, np.float64).reshape(-1, 3) for x in (source, target))
    mu_s, mu_t = xs.mean(0), xt.mean(0)
    cs, ct = xs - mu_s, xt - mu_t
    cov_s, cov_t = cs.T @ cs / len(cs), ct.T @ ct / len(ct)
    a = _ref_transform(cov_s, cov_t, mode)
    out = (cs @ a.T + mu_t).reshape(np.shape(source))

    d_cov = [4 * np.sqrt(len(c)) * EPS32 * (np.abs(c).T @ np.abs(c)) / len(c) for c in (cs, ct)]
    d_a = np.zeros((3, 3))
    covs = [cov_s, cov_t]
    for which in range(2):
        for i in range(3):
            for j in range(i, 3):
                h = 1e-6 * np.abs(covs[which]).max()
                step = np.zeros((3, 3))
                step[i, j] = step[j, i] = h
                plus, minus = ([c + sign * step if k == which else c for k, c in enumerate(covs)]
                               for sign in (1, -1))
                jac = (_ref_transform(*plus, mode) - _ref_transform(*minus, mode)) / (2 * h)
                d_a += np.abs(jac) * d_cov[which][i, j]
    d_mu = [4 * np.sqrt(len(x)) * EPS32 * np.abs(x).max(0) for x in (xs, xt)]
    bound = (np.abs(cs) @ d_a.T + d_mu[0] @ np.abs(a).T + d_mu[1]
             + 4 * EPS32 * (np.abs(cs) @ np.abs(a).T + np.abs(mu_t)))  # + rounding of A (x - mu) + mu
    return out, bound.reshape(np.shape(source))


@pytest.mark.parametrize("mode", color.COLOR_TRANSFORMS)
def test_transform_of_near_singular_covariances_is_exact_on_every_path(mode):
    # Rank-deficient (gray) and nearly so: the eigenvalue floor is active, the floored matrices
    # have condition numbers of about 1e4 and "sym" works with their product. The inputs are
    # exact float32 values, so the only allowed error is the float64 algebra (condition numbers
    # times float64 eps) plus rounding the result to float32.
    gray = np.full((3, 3), 0.04) + np.diag([0.0, 3e-6, 0.0])
    cov_s = np.stack([gray, _spd()]).astype(np.float32)
    cov_t = np.stack([_spd(0.02), gray + np.diag([2e-4, 0.0, 1e-6])]).astype(np.float32)
    refs = np.stack([_ref_transform(s.astype(np.float64), t.astype(np.float64), mode)
                     for s, t in zip(cov_s, cov_t)])
    cond = max(np.linalg.cond(np.maximum(c, 0) + 1e-5 * np.eye(3)) for c in [*cov_s, *cov_t])
    tol = 2 * EPS32 * np.abs(refs) + 100 * cond**2 * np.finfo(np.float64).eps * np.abs(refs).max()
    assert tol.max() < 1e-4 * np.abs(refs).max()
    fn = functools.partial(color.color_transform_matrix, mode=mode)
    for got in (fn(cov_s, cov_t), jax.jit(fn)(cov_s, cov_t), jax.vmap(fn)(cov_s, cov_t),
                np.stack([fn(s, t) for s, t in zip(cov_s, cov_t)]),
                np.stack([jax.jit(fn)(s, t) for s, t in zip(cov_s, cov_t)])):
        assert np.all(np.abs(np.asarray(got, np.float64) - refs) <= tol)


def test_match_color_batches_per_image():
    sources = np.stack([_colorful(), _grayish(24, 32)])
    targets = np.stack([_colorful(10, 10), _grayish(10, 10)])
    jitted = jax.jit(color.match_color, static_argnames=("mode",))
    for mode in color.COLOR_TRANSFORMS:
        batched = np.asarray(color.match_color(sources, targets, mode), np.float64)
        for i in range(2):
            ref, bound = _ref_match(sources[i], targets[i], mode)
            assert bound.max() < 0.01  # below the grayish images' colour noise: a real check
            for got in (batched[i], color.match_color(sources[i], targets[i], mode),
                        jitted(sources[i], targets[i], mode=mode)):
                # Each path is within the bound of the float64 result, so within 2x of each other.
                assert np.all(np.abs(np.asarray(got, np.float64) - ref) <= bound), mode
    shared = np.asarray(color.match_color(sources, targets[0]), np.float64)  # one target for all
    for i in range(2):
        ref, bound = _ref_match(sources[i], targets[0], "eig")
        assert np.all(np.abs(shared[i] - ref) <= bound)


def test_unknown_choices():
    with pytest.raises(ConfigError, match='did you mean "chol"'):
        color.match_color(_colorful(), _colorful(), "cholesky")
    with pytest.raises(ConfigError, match="valid choices: none, luminance, histogram"):
        color.prepare_color(_colorful(), _colorful(), "histogramm")
    with pytest.raises(ConfigError, match="ycbcr, yiq"):
        color.luminance(_colorful(), "yuv")


# ----------------------------------------------------------------------------------------------
# The colour modes end to end


def test_prepare_and_restore_luminance():
    content, style = _colorful(), _colorful(30, 20) * 0.6
    c_in, s_in = color.prepare_color(content, style, "luminance", space="yiq")
    for img in (c_in, s_in):
        np.testing.assert_array_equal(img[..., 0], img[..., 1])
        np.testing.assert_array_equal(img[..., 0], img[..., 2])
    np.testing.assert_allclose(c_in[..., 0], color.luminance(content, "yiq")[..., 0], atol=1e-6)
    s = np.asarray(s_in[..., 0], np.float64)
    cy = np.asarray(color.luminance(content), np.float64)
    np.testing.assert_allclose([s.mean(), s.std()], [cy.mean(), cy.std()], atol=1e-3)
    out = color.restore_color(c_in, content, "luminance", space="yiq")
    np.testing.assert_allclose(out, np.clip(content, 0, 1), atol=3e-6)


@pytest.mark.parametrize("mode", ["histogram", "histogram-from-style"])
def test_prepare_histogram_directions(mode):
    content, style = _colorful(), _colorful(16, 16) * 0.5 + 0.25
    c_in, s_in = color.prepare_color(content, style, mode, transform="chol")
    if mode == "histogram":
        np.testing.assert_array_equal(c_in, content)
        recolored, target = s_in, content
    else:
        np.testing.assert_array_equal(s_in, style)
        recolored, target = c_in, style
    assert float(recolored.min()) >= 0 and float(recolored.max()) <= 1
    np.testing.assert_allclose(_stats(recolored)[0], _stats(target)[0], atol=2e-3)
    result = RNG.random(content.shape).astype(np.float32)
    np.testing.assert_array_equal(color.restore_color(result, content, mode), result)


def test_prepare_none_is_identity():
    content, style = _colorful(), _colorful(8, 8)
    c_in, s_in = color.prepare_color(content, style, "none")
    np.testing.assert_array_equal(c_in, content)
    np.testing.assert_array_equal(s_in, style)


# ----------------------------------------------------------------------------------------------
# jit


def test_functions_jit():
    content, style = _colorful(), _colorful(16, 16)
    for fn in (color.rgb_to_yiq, color.ycbcr_to_rgb):
        np.testing.assert_allclose(jax.jit(fn)(content), fn(content), atol=1e-6)
    match = jax.jit(color.match_color, static_argnames=("mode", "clip"))
    np.testing.assert_allclose(match(style, content, mode="sym", eps=1e-5),
                               color.match_color(style, content, "sym"), atol=1e-5)
    prep = jax.jit(color.prepare_color, static_argnames=("color_mode", "transform", "space"))
    for mode in ("luminance", "histogram-from-style"):
        for a, b in zip(prep(content, style, mode), color.prepare_color(content, style, mode)):
            np.testing.assert_allclose(a, b, atol=1e-5)
    restore = jax.jit(color.restore_color, static_argnames=("color_mode", "space"))
    np.testing.assert_allclose(restore(content, content, "luminance"),
                               color.recombine(content, content), atol=1e-6)
