"""Research API: a vmapped sweep is one compiled program and equals the runs done one by one.

The reference for each batched run is the same :func:`nst_jax.gatys.stylize` run alone (unbatched,
its own compiled program). L-BFGS line searches become batched while loops under ``jax.vmap``; both
L-BFGS implementations are checked. Tiny images and a shallow layer set keep compiles short.
"""

from __future__ import annotations

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from nst_jax import gatys
from nst_jax.errors import ConfigError

SHALLOW = dict(content_layers=("relu1_1",), style_layers=("relu1_1", "relu2_1"), iterations=3)
NARROW = pathlib.Path(__file__).parent / "fixtures" / "gatys" / "vgg19_narrow.pth"


def _images():
    content = jax.random.uniform(jax.random.key(1), (1, 16, 16, 3))
    style = jax.random.uniform(jax.random.key(2), (1, 16, 16, 3)) ** 2
    return content, style


@pytest.mark.parametrize("optimizer", ["optax-lbfgs", "lbfgs"])
def test_vmapped_sweep_equals_runs_one_by_one(narrow_vgg19, optimizer):
    config = gatys.GatysConfig(**SHALLOW, optimizer=optimizer)
    content, style = _images()
    alphas = [1e-3, 1e-1, 10.0]
    weights = [gatys.loss_weights(config, content=a, style=1e2) for a in alphas]
    batched_keys = None
    keys = [jax.random.key(0)] * 3
    if optimizer == "optax-lbfgs":  # also a batch of seeds: a different init noise per run
        keys = list(jax.random.split(jax.random.key(7), 3))
        batched_keys = jnp.stack(keys)
    swept = gatys.sweep(narrow_vgg19, content, style, config, gatys.stack_weights(weights), batched_keys)
    assert swept.image.shape == (3, 1, 16, 16, 3) and swept.losses.shape == (3, 4)
    one = jax.jit(gatys.stylize, static_argnames="config")
    for i in range(3):
        alone = one(narrow_vgg19, content, style, config, weights[i], keys[i])
        np.testing.assert_allclose(np.asarray(swept.losses[i]), np.asarray(alone.losses), rtol=1e-4)
        np.testing.assert_allclose(np.asarray(swept.image[i]), np.asarray(alone.image), rtol=1e-4, atol=1e-5)
    # The runs differ from each other, so a sweep that ignored its batch would fail above.
    assert np.abs(np.asarray(swept.image[0] - swept.image[2])).max() > 1e-3
    assert all(float(c[-1]) < float(c[0]) for c in swept.losses)


def test_loss_weights_can_be_built_under_vmap():
    config = gatys.GatysConfig(**SHALLOW)
    w = jax.vmap(lambda a: gatys.loss_weights(config, content=a, tv=2 * a))(jnp.array([1.0, 3.0]))
    np.testing.assert_array_equal(np.asarray(w.content), [1.0, 3.0])
    np.testing.assert_array_equal(np.asarray(w.tv), [2.0, 6.0])
    np.testing.assert_array_equal(np.asarray(w.style_layers), [[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(ConfigError, match="--content-weight"):
        gatys.loss_weights(config, content=-1.0)


def test_sweep_rejects_unbatched_or_mismatched_inputs(narrow_vgg19):
    config = gatys.GatysConfig(**SHALLOW)
    content, style = _images()
    with pytest.raises(ConfigError, match="batch of loss weights or of keys"):
        gatys.sweep(narrow_vgg19, content, style, config)
    two = gatys.stack_weights([gatys.loss_weights(config)] * 2)
    with pytest.raises(ConfigError, match="different sizes"):
        gatys.sweep(narrow_vgg19, content, style, config, two, jax.random.split(jax.random.key(0), 3))
    with pytest.raises(ConfigError, match="leading batch axis"):
        gatys.sweep(narrow_vgg19, content, style, config, gatys.loss_weights(config))


def test_figures_script_renders_every_grid(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "figures", pathlib.Path(__file__).parent.parent / "scripts" / "figures.py")
    figures = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = figures  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(figures)
    rng = np.random.default_rng(0)
    for name in ("c", "s"):
        Image.fromarray((rng.random((16, 20, 3)) * 255).astype(np.uint8)).save(tmp_path / f"{name}.png")
    out = tmp_path / "figs"
    # A shallow layer set keeps the compiles short; the default is the report's five style layers.
    code = figures.main(["--weights", str(NARROW), "--content", str(tmp_path / "c.png"), "--style",
                         str(tmp_path / "s.png"), "--size", "16", "--iterations", "2", "--optimizer", "adam",
                         "--content-layers", "relu1_1", "--style-layers", "relu1_1,relu2_1",
                         "--adam-learning-rates", "0.05", "--output-dir", str(out)])
    assert code == 0
    sizes = {}
    for p in out.glob("*.png"):
        with Image.open(p) as im:
            sizes[p.name] = im.size
    assert set(sizes) == {"color_controls.png", "optimizers.png", "style_layers.png", "loss_curves.png"}
    # Six tiles (content, style, four colour modes) of 20x16 side by side; two in the layers figure.
    assert sizes["color_controls.png"][0] >= 6 * 20 and sizes["style_layers.png"][0] >= 2 * 20
    assert figures.main(["--figures", "colour", "--output-dir", str(out)]) == 2
