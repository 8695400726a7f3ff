"""Memory estimates against what XLA plans for the compiled programs (``memory_analysis()``).

For small sizes the estimate must be at least XLA's argument + output + temporary bytes (minus the
donated, aliased ones) of the very program that runs, and not more than a stated factor above it.
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax import gatys, memory, solvers, tiling, weights

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def _planned_bytes(compiled) -> int:
    stats = compiled.memory_analysis()
    return (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
            - stats.alias_size_in_bytes)


@pytest.mark.parametrize("optimizer", solvers.OPTIMIZERS)
@pytest.mark.parametrize("history", [3, 12])
def test_solver_vectors_cover_the_planned_update(optimizer, history):
    """The solver's own footprint: one donated update on a cheap objective, in image vectors."""
    side = 64
    image = side * side * 3 * 4

    def fun(x):
        return jnp.sum(jnp.sin(x) * x)

    solver = solvers.make_solver(fun, optimizer=optimizer, history_size=history, iterations=5)
    x = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
    state = jax.eval_shape(solver.init, x)
    compiled = jax.jit(solver.update, donate_argnums=(0, 1)).lower(x, state).compile()
    measured = _planned_bytes(compiled) / image
    estimate = memory.solver_vectors(optimizer, history)
    assert measured <= estimate <= 1.5 * measured + 2, (optimizer, history, measured, estimate)


@pytest.mark.parametrize("optimizer", solvers.OPTIMIZERS)
def test_gatys_estimate_bounds_the_planned_chunk(narrow_vgg19, optimizer):
    """The whole compiled chunk of gatys.run (VGG forward and backward inside the solver)."""
    h, w = 32, 40
    config = gatys.GatysConfig(optimizer=optimizer, history_size=5)
    prog = gatys._build_program(config, 2)
    content = jnp.zeros((1, h, w, 3), jnp.float32)
    targets = gatys.compute_targets(narrow_vgg19, content, content, config)
    args = (narrow_vgg19, targets, gatys.loss_weights(config))
    # The driver's calling convention: flat leaves of (aux, args) and of the solver state.
    leaves, args_tree = jax.tree.flatten((None, args))
    leaves = tuple(leaves)
    init, _ = prog.compiled("init", args_tree, content, leaves)
    state = init.call(content, leaves)[0]
    run_chunk, _ = prog.compiled("run_chunk", args_tree, content, state, np.int32(0), np.int32(2), leaves)
    measured = _planned_bytes(run_chunk.call)  # the program store is off in tests: a compiled executable
    estimate = memory.gatys_bytes(h, w, narrow_vgg19, config)
    # Activations are counted as if all were alive at once, three times over: safe, not tight.
    assert measured <= estimate <= 6 * measured, (optimizer, measured, estimate)


def test_gatys_estimate_scales_with_pixels_and_options(narrow_vgg19):
    config = gatys.GatysConfig()
    small = memory.gatys_bytes(256, 256, narrow_vgg19, config)
    big = memory.gatys_bytes(512, 512, narrow_vgg19, config)
    assert 3.5 < big / small < 4.5
    assert memory.gatys_bytes(512, 512, narrow_vgg19, dataclasses.replace(config, remat=True)) < big
    assert memory.gatys_bytes(512, 512, narrow_vgg19, config, backward=False) < big / 2
    # jaxopt keeps (and copies) more history than optax.
    jaxopt = memory.gatys_bytes(512, 512, narrow_vgg19, dataclasses.replace(config, optimizer="lbfgs"))
    assert jaxopt - big == (memory.solver_vectors("lbfgs", 10) - memory.solver_vectors("optax-lbfgs", 10)) \
        * 512 * 512 * 12
    # Tiled: activations of one window; the solver's whole-image vectors remain.
    tiled = memory.gatys_bytes(2048, 2048, narrow_vgg19, config, tile_size=256)
    window = 256 + 2 * tiling.receptive_halo(config.layers)
    one_window = memory.gatys_bytes(window, window, narrow_vgg19, config)
    solver_part = memory.solver_vectors("optax-lbfgs", 10) * 12
    assert tiled - solver_part * 2048**2 == one_window - solver_part * window**2
    assert tiled < memory.gatys_bytes(2048, 2048, narrow_vgg19, config)


def test_adain_estimate_bounds_what_xla_allocates():
    """The estimate is at least the compiled program's own buffer need, and not wildly more."""
    from nst_jax import adain

    nets = (weights.load_adain_vgg(FIXTURES / "adain" / "vgg_normalised_narrow.pth"),
            weights.load_adain_decoder(FIXTURES / "adain" / "decoder_narrow.pth"))
    image = jax.ShapeDtypeStruct((1, 64, 80, 3), jnp.float32)
    compiled = adain.stylize_jit.lower(*nets, image, [image], 1.0).compile()
    stats = compiled.memory_analysis()
    needed = stats.temp_size_in_bytes + stats.output_size_in_bytes
    estimate = memory.adain_bytes((64, 80), [(64, 80)], *nets)
    assert needed <= estimate <= 4 * needed, (needed, estimate)
    # Linear in pixels: twice the sides, four times the memory (up to ceil-mode rounding).
    assert 3.9 < memory.adain_bytes((128, 160), [(128, 160)], *nets) / estimate < 4.1
    assert memory.adain_bytes((64, 80), [(64, 80)], *nets, batch=3) == 3 * estimate


def test_available_bytes_is_positive():
    assert memory.available_bytes() > 2**20
