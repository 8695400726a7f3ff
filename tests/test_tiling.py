"""Tiled Gatys: value, gradient, targets and whole runs against the untiled computation.

References are independent of the tiling code: ``gatys.objective`` differentiated by ``jax.grad``
on the whole image, ``gatys.compute_targets`` on the whole image, ``gatys.run``, and, for the halo
width, the rows of whole-image VGG features that actually change when the image is cut.
Images have odd sizes so the floor pooling at the bottom/right edge is exercised.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax import gatys, tiling, vgg
from nst_jax.errors import ConfigError

WIDTHS = {1: 4, 2: 6, 3: 8, 4: 8, 5: 8}
# Three pools deep at most: alignment 4, exact halo 12 px; cheap to compile on CPU.
SHALLOW = gatys.GatysConfig(content_layers=("relu2_2",), style_layers=("relu1_1", "relu2_1", "relu3_1"),
                            iterations=4)
TILE = 16


def close(actual, expected, rel):
    """Max-abs error within ``rel`` of the reference's largest magnitude."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rel * np.abs(expected).max())


@pytest.fixture(scope="module")
def params():
    # He-initialized like vgg.init_params, drawn with NumPy: compiling JAX's threefry draws for
    # sixteen layer shapes takes longer on CPU than this whole file's tiling work.
    shapes = jax.eval_shape(lambda: vgg.init_params(jax.random.key(0), WIDTHS))
    rng = np.random.default_rng(0)
    return {name: {"kernel": jnp.asarray(rng.standard_normal(leaf["kernel"].shape, np.float32)
                                         * np.sqrt(2.0 / (9 * leaf["kernel"].shape[2]))),
                   "bias": jnp.full(leaf["bias"].shape, 0.01, jnp.float32)}
            for name, leaf in shapes.items()}


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(1)
    content = rng.uniform(size=(1, 62, 78, 3)).astype(np.float32)
    style = rng.uniform(size=(1, 41, 57, 3)).astype(np.float32)
    style2 = rng.uniform(size=(1, 41, 57, 3)).astype(np.float32)
    x = np.clip(content + 0.2 * rng.standard_normal(content.shape), 0.0, 1.0).astype(np.float32)
    return tuple(jnp.asarray(a) for a in (content, style, style2, x))


@pytest.fixture(scope="module")
def problem(params, images):
    content, style, _, x = images
    targets = jax.jit(gatys.compute_targets, static_argnums=3)(params, content, style, SHALLOW)
    weights = gatys.loss_weights(SHALLOW, content=0.5, style=2.0, style_layers=[0.2, 0.3, 0.5], tv=1e-2)
    value, grad = jax.jit(jax.value_and_grad(gatys.objective), static_argnums=4)(
        x, params, targets, weights, SHALLOW)
    return targets, weights, value, grad


@functools.partial(jax.jit, static_argnums=1)
def _features(params, layers, image):
    return vgg.features(params, image, layers)


def test_receptive_halo_matches_the_rows_a_cut_changes(params):
    # Cut a tall image at row `cut`: the window's zero padding there changes the features of the
    # last rows before the cut. That band, in input pixels and rounded up to the alignment, is the
    # halo a tile needs.
    layers = gatys.GatysConfig().layers
    image = jnp.asarray(np.random.default_rng(5).uniform(size=(1, 256, 32, 3)), jnp.float32)
    cut = 160
    whole = _features(params, layers, image)
    part = _features(params, layers, image[:, :cut])
    align = tiling.alignment(layers)
    for name in layers:
        level = vgg.num_pools_before(name)
        rows = cut >> level
        diff = np.abs(np.asarray(part[name][0]) - np.asarray(whole[name][0, :rows])).max(axis=(1, 2))
        band = rows - int(np.argmax(diff > 1e-6 * np.abs(whole[name]).max()))
        expected = -(-band * 2**level // align) * align
        assert tiling.receptive_halo((name,)) <= tiling.receptive_halo(layers) == 80
        assert -(-tiling.receptive_halo((name,)) // align) * align == expected, name


def test_tiled_targets_match_whole_image(params, images):
    content, style, style2, _ = images
    ref = jax.jit(lambda c, s: gatys.compute_targets(params, c, s, SHALLOW, blend_weights=[1.0, 3.0]))(
        content, [style, style2])
    got = tiling.tiled_targets(params, content, [style, style2], SHALLOW, tile_size=TILE,
                               blend_weights=[1.0, 3.0])
    for name in SHALLOW.content_layers:
        close(got.content[name], ref.content[name], 1e-6)
    for name in SHALLOW.style_layers:
        close(got.style_grams[name], ref.style_grams[name], 1e-6)


@pytest.mark.parametrize("offset", [(0, 0), (4, 12), (8, 0)])
def test_value_and_grad_equal_untiled_with_full_halo(params, images, problem, offset):
    _, _, _, x = images
    targets, weights, value, grad = problem
    v, g = tiling.tiled_value_and_grad(x, params, targets, weights, SHALLOW, TILE, None, jnp.array(offset),
                                       shift=True)
    np.testing.assert_allclose(float(v), float(value), rtol=1e-6)
    close(g, grad, 1e-5)


def test_custom_vjp_objective_gives_the_same_gradient(params, images, problem):
    # The objective handed to the solvers differentiates to the same two-pass gradient.
    _, _, _, x = images
    targets, weights, value, grad = problem
    grid = tiling.tile_grid(x.shape, SHALLOW.layers, 32)
    fun = tiling.tiled_objective(SHALLOW, grid)
    v, g = jax.jit(jax.value_and_grad(fun))(x, params, targets, weights, jnp.zeros(2, jnp.int32))
    np.testing.assert_allclose(float(v), float(value), rtol=1e-6)
    close(g, grad, 1e-5)


def test_short_halo_error_is_small_but_real(params, images, problem):
    _, _, _, x = images
    targets, weights, value, grad = problem
    short = tiling.receptive_halo(SHALLOW.layers) - tiling.alignment(SHALLOW.layers)
    v, g = tiling.tiled_value_and_grad(x, params, targets, weights, SHALLOW, TILE, short, jnp.array((4, 4)))
    rel_v = abs(float(v) - float(value)) / abs(float(value))
    rel_g = float(jnp.abs(g - grad).max() / jnp.abs(grad).max())
    cos = float(jnp.vdot(g, grad) / (jnp.linalg.norm(g) * jnp.linalg.norm(grad)))
    # Inexact, far above the float error of the full halo ...
    assert rel_g > 1e-6
    # ... but close: only one position of the deepest layer next to each seam is wrong.
    assert rel_v < 1e-3 and rel_g < 1e-2 and cos > 1 - 1e-4


def test_grid_geometry_and_offsets():
    layers = gatys.GatysConfig().layers
    grid = tiling.tile_grid((1, 100, 40, 3), layers, 32, halo=16)  # short halo: shifts by default
    assert grid.shifts and grid.align == 16
    assert grid.rows.count * 32 - grid.rows.max_offset >= 100  # covers the image at any offset
    assert grid.cols.count == 2
    offsets = np.stack([np.asarray(tiling.grid_offset(grid, jax.random.key(3), k)) for k in range(32)])
    assert np.all(offsets % 16 == 0) and np.all(offsets >= 0) and np.all(offsets <= 16)
    assert len({tuple(o) for o in offsets}) > 1
    # A full halo does not shift; an axis that fits in one tile has neither halo nor shift.
    full = tiling.tile_grid((1, 100, 40, 3), layers, 64)
    assert not full.shifts and full.rows.halo == 80
    assert full.cols == tiling.Axis(size=40, tile=48, halo=0, max_offset=0, count=1)


@pytest.mark.parametrize("tile_size, halo, fix", [(50, None, "--tile-size 64"), (0, None, "--tile-size 16"),
                                                  (64, 20, "--tile-halo 32")])
def test_bad_geometry_names_the_fix(tile_size, halo, fix):
    with pytest.raises(ConfigError, match=fix):
        tiling.tile_grid((1, 100, 100, 3), gatys.GatysConfig().layers, tile_size, halo)


def test_spatial_control_is_refused(params, images, problem):
    _, _, _, x = images
    targets, weights, _, _ = problem
    guided = targets._replace(region_masks={n: jnp.ones((1, 8, 8)) for n in SHALLOW.style_layers})
    with pytest.raises(ConfigError, match="spatial control"):
        tiling.tiled_value_and_grad(x, params, guided, weights, SHALLOW, TILE)


# One pool (alignment 2, exact halo 4 px): cheap to compile inside a whole L-BFGS program.
# Luminance-only transfer, so the colour handling around the optimizer is compared too.
TINY = gatys.GatysConfig(content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"), iterations=4,
                         color="luminance")


@pytest.mark.slow
def test_run_tiled_matches_run(params, images):
    content, style, _, _ = images
    config = TINY
    weights = gatys.loss_weights(config, content=0.5, style=2.0)
    ref = gatys.run(params, content, style, config, weights, chunk=2)
    seen = []
    # shift=True with the full halo: the grid moves every iteration and nothing may change.
    got = tiling.run_tiled(params, content, style, config, weights, tile_size=TILE, shift=True, chunk=2,
                           callback=lambda p, get: seen.append((p.iteration, get().shape)))
    assert got.iterations == ref.iterations == 4 and not got.interrupted
    assert seen == [(2, (62, 78, 3)), (4, (62, 78, 3))]
    np.testing.assert_allclose(got.losses, ref.losses, rtol=1e-4)
    close(got.image, ref.image, 1e-3)
    for k in ("total", "content", "style", "tv"):
        np.testing.assert_allclose(got.terms[k], ref.terms[k], rtol=1e-4, atol=1e-7)
