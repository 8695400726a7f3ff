"""The one host loop (nst_jax.driver) through gatys.run: snapshots, timings, terms, guards, interrupt."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax import driver, gatys
from nst_jax.errors import NonFiniteLossError

# Two shallow layers of the narrow fixture VGG on 16x16 images: cheap to compile.
CONFIG = gatys.GatysConfig(content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"), optimizer="adam",
                           learning_rate=0.05)


@pytest.fixture(scope="module")
def tiny(narrow_vgg19, gatys_reference):
    content = jnp.asarray(gatys_reference["content"])[:, :16, :16]
    style = jnp.asarray(gatys_reference["style"])[:, :16, :20]
    return narrow_vgg19, content, style


@pytest.mark.parametrize("iterations, chunk, every", [(20, 10, 5), (6, 10, 2), (7, 3, 2), (5, 2, 0)])
def test_callback_lands_on_every_snapshot_multiple_whatever_the_chunk(iterations, chunk, every):
    # The chunk plan alone (test_run_calls_back_at_every_multiple runs it).
    done, ends = 0, []
    while done < iterations:
        n = driver.chunk_length(done, iterations, chunk, every)
        assert 1 <= n <= chunk
        done += n
        ends.append(done)
    multiples = set(range(every, iterations + 1, every)) if every else set()
    assert multiples <= set(ends)
    assert ends[-1] == iterations
    if not every:  # without snapshots, plain chunks of `chunk`
        assert ends == sorted(set(range(chunk, iterations, chunk)) | {iterations})


@pytest.mark.parametrize("iterations, chunk, every", [(10, 4, 3), (6, 10, 2)])
def test_run_calls_back_at_every_multiple(tiny, iterations, chunk, every):
    params, content, style = tiny
    seen = []
    config = dataclasses.replace(CONFIG, iterations=iterations)
    result = gatys.run(params, content, style, config, chunk=chunk, snapshot_every=every,
                       callback=lambda p, get: seen.append((p.iteration, get().shape)))
    iters = [i for i, _ in seen]
    assert set(range(every, iterations + 1, every)) <= set(iters)
    assert all(b - a <= chunk for a, b in zip([0] + iters, iters)) and iters[-1] == iterations
    assert all(shape == (16, 16, 3) for _, shape in seen)
    assert sum(n for n, _ in result.chunk_seconds) == iterations == result.iterations
    assert len(result.losses) == iterations + 1


def test_short_run_reports_seconds_per_iteration_and_exact_evaluations(tiny):
    params, content, style = tiny
    config = dataclasses.replace(CONFIG, iterations=3)
    driver.clear_programs()
    result = gatys.run(params, content, style, config, chunk=10)
    assert result.seconds_per_iteration is not None and result.seconds_per_iteration > 0
    assert result.compile_seconds > 0
    assert result.evaluations == 3 + 1  # Adam: one evaluation per iteration plus the init's
    again = gatys.run(params, content, style, config, chunk=10)
    assert again.compile_seconds == 0.0  # one cached program, compiled once


def test_weighted_terms_add_up_to_the_total(tiny):
    params, content, style = tiny
    config = dataclasses.replace(CONFIG, iterations=2)
    weights = gatys.loss_weights(config, content=0.3, style=2.0, tv=0.5)
    t = gatys.run(params, content, style, config, weights, chunk=2).terms
    np.testing.assert_allclose(t["content_weighted"], 0.3 * t["content"], rtol=1e-6)
    np.testing.assert_allclose(t["style_weighted"], 2.0 * t["style"], rtol=1e-6)
    np.testing.assert_allclose(t["tv_weighted"], 0.5 * t["tv"], rtol=1e-6)
    np.testing.assert_allclose(t["content_weighted"] + t["style_weighted"] + t["tv_weighted"], t["total"],
                               rtol=1e-6)
    assert min(t["content_weighted"], t["style_weighted"], t["tv_weighted"]) > 0


def test_non_finite_guard_keeps_the_last_good_image(tiny):
    params, content, style = tiny
    config = dataclasses.replace(CONFIG, iterations=6, learning_rate=1e38)
    seen = []
    with pytest.raises(NonFiniteLossError, match=r"between iteration (\d+) and \d+") as info:
        gatys.run(params, content, style, config, chunk=1, callback=lambda p, get: seen.append(get()))
    err = info.value
    assert np.all(np.isfinite(err.image)) and err.image.shape == (16, 16, 3)
    assert err.iteration == len(seen)
    if seen:  # the image handed out is the last one a callback saw
        np.testing.assert_array_equal(err.image, seen[-1])


def test_interrupt_from_the_callback_returns_the_image_so_far(tiny):
    params, content, style = tiny
    config = dataclasses.replace(CONFIG, iterations=9)
    images = []

    def callback(progress, get_image):
        images.append(get_image())
        if progress.iteration >= 4:
            raise KeyboardInterrupt

    result = gatys.run(params, content, style, config, chunk=2, callback=callback)
    assert result.interrupted and result.iterations == 4 and len(result.losses) == 5
    np.testing.assert_array_equal(result.image, images[-1])
    assert result.evaluations == 4 + 1


def test_program_key_ignores_iterations_and_colour():
    a = driver.program_key(gatys.GatysConfig(iterations=5, color="luminance", color_space="yiq"), "x", 3)
    b = driver.program_key(gatys.GatysConfig(iterations=9), "x", 3)
    assert a == b
    assert a != driver.program_key(gatys.GatysConfig(optimizer="adam"), "x", 3)


def test_finisher_clips_or_restores_the_content_chroma():
    rng = np.random.default_rng(0)
    content = jnp.asarray(rng.uniform(size=(1, 8, 8, 3)), jnp.float32)
    image = rng.uniform(-0.2, 1.2, size=(8, 8, 3)).astype(np.float32)
    np.testing.assert_array_equal(driver.finisher(content, color="none", color_space="ycbcr")(image),
                                  np.clip(image, 0, 1))
    lum = driver.finisher(content, color="luminance", color_space="ycbcr")(np.clip(image, 0, 1))
    expected = gatys.finish_output(jnp.asarray(np.clip(image, 0, 1))[None], content,
                                   gatys.GatysConfig(color="luminance"))
    np.testing.assert_allclose(lum, np.asarray(jax.device_get(expected))[0], atol=1e-6)
