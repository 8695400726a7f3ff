"""VGG-19 features against PyTorch golden outputs (torchvision module layout, narrow widths)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from nst_jax import vgg
from nst_jax.errors import ConfigError


def test_layer_table_matches_torchvision_indices():
    # torchvision vgg19().features: conv4_2 is module 21, conv5_1 is 28, pool5 is 36.
    assert len(vgg.LAYERS) == 37
    assert vgg.LAYERS.index("conv1_1") == 0
    assert vgg.LAYERS.index("conv4_2") == 21
    assert vgg.LAYERS.index("conv5_1") == 28
    assert vgg.LAYERS.index("pool5") == 36
    assert len(vgg.CONV_LAYERS) == 16


def test_every_layer_matches_pytorch(narrow_vgg19, gatys_reference):
    image = jnp.asarray(gatys_reference["image"])
    out = vgg.features(narrow_vgg19, image, vgg.LAYERS)
    for name in vgg.LAYERS:
        ref = gatys_reference[f"max/{name}"]
        assert out[name].shape == ref.shape, name
        np.testing.assert_allclose(out[name], ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max(), err_msg=name)


def test_average_pooling_matches_pytorch(narrow_vgg19, gatys_reference):
    image = jnp.asarray(gatys_reference["image"])
    out = vgg.features(narrow_vgg19, image, ("pool1", "relu3_1", "pool5"), pooling="avg")
    for name, value in out.items():
        ref = gatys_reference[f"avg/{name}"]
        np.testing.assert_allclose(value, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max(), err_msg=name)


def test_only_requested_layers_returned_and_remat_equal(narrow_vgg19, gatys_reference):
    image = jnp.asarray(gatys_reference["image"])
    plain = vgg.features(narrow_vgg19, image, ("relu1_1", "relu3_1"))
    remat = vgg.features(narrow_vgg19, image, ("relu1_1", "relu3_1"), remat=True)
    assert set(plain) == {"relu1_1", "relu3_1"}
    for name in plain:
        np.testing.assert_allclose(plain[name], remat[name], rtol=1e-6)
    g1 = jax.grad(lambda x: jnp.sum(vgg.features(narrow_vgg19, x, ("relu3_1",))["relu3_1"] ** 2))(image)
    g2 = jax.grad(lambda x: jnp.sum(vgg.features(narrow_vgg19, x, ("relu3_1",), remat=True)["relu3_1"] ** 2))(image)
    np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-7)


def test_bfloat16_features_close_to_float32(narrow_vgg19, gatys_reference):
    image = jnp.asarray(gatys_reference["image"])
    f32 = vgg.features(narrow_vgg19, image, ("relu2_1",))["relu2_1"]
    bf16 = vgg.features(narrow_vgg19, image, ("relu2_1",), dtype=jnp.bfloat16)["relu2_1"]
    assert bf16.dtype == jnp.float32
    rel = float(jnp.linalg.norm(bf16 - f32) / jnp.linalg.norm(f32))
    assert 0 < rel < 3e-2


def test_channel_counts_come_from_params():
    params = vgg.init_params(jax.random.key(0), {1: 3, 2: 5, 3: 6, 4: 7, 5: 9})
    out = vgg.features(params, jnp.zeros((2, 32, 40, 3)), ("relu1_1", "relu5_1"))
    assert out["relu1_1"].shape == (2, 32, 40, 3)
    assert out["relu5_1"].shape == (2, 2, 2, 9)


def test_unknown_layer_suggests_closest():
    params = vgg.init_params(jax.random.key(0), {1: 2, 2: 2, 3: 2, 4: 2, 5: 2})
    with pytest.raises(ConfigError, match='did you mean "relu4_2"'):
        vgg.features(params, jnp.zeros((1, 32, 32, 3)), ("relu4_20",))


def test_min_image_size():
    assert vgg.min_image_size(("relu1_1",)) == 2
    assert vgg.min_image_size(("relu4_2", "relu5_1")) == 32


@pytest.mark.parametrize("kernel_size,padding", [
    (3, ((1, 1), (1, 1))),  # VGG-19 'same' zero padding
    (3, ((0, 0), (0, 0))),  # after reflection padding (AdaIN)
    (1, ((0, 0), (0, 0))),  # AdaIN's 1x1 preprocess conv
    (3, ((1, 0), (2, 1))),  # asymmetric
])
def test_conv2d_gradients_equal_lax(kernel_size, padding):
    """The custom VJP gives JAX's own input and kernel gradients (independent reference: lax's rule)."""
    kx, kk, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, 7, 6, 3))
    kernel = jax.random.normal(kk, (kernel_size, kernel_size, 3, 5))

    def reference(x, k):
        return jax.lax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    y, vjp = jax.vjp(lambda x, k: vgg.conv2d(x, k, padding), x, kernel)
    y_ref, vjp_ref = jax.vjp(reference, x, kernel)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    g = jax.random.normal(kg, y.shape)
    for got, want in zip(vjp(g), vjp_ref(g)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    jax.config.update("jax_enable_x64", True)
    try:
        check_grads(lambda x, k: vgg.conv2d(x, k, padding), (np.asarray(x, np.float64), np.asarray(kernel, np.float64)),
                    order=2, modes=("rev",), eps=1e-4, atol=1e-4, rtol=1e-4)
    finally:
        jax.config.update("jax_enable_x64", False)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="inspects XLA:CPU's lowering")
def test_backward_convolutions_in_a_loop_keep_the_library_layout(narrow_vgg19):
    """Inside a fori_loop body, JAX's default conv transpose rule leaves a kernel reversal that
    XLA:CPU lowers to a slow generic convolution with kernel dims ``01oi`` (about 2.5x slower at
    256 px, measured by scripts/benchmark.py). vgg.conv2d keeps every backward conv in HWIO."""

    def loss(x):
        feats = vgg.features(narrow_vgg19, x, ("relu1_1", "relu2_1", "relu3_1"))
        return sum(jnp.sum(f * f) for f in feats.values())

    def steps(x):
        return jax.lax.fori_loop(0, 2, lambda i, x: x - 1e-3 * jax.grad(loss)(x), x)

    hlo = jax.jit(steps).lower(jnp.zeros((1, 16, 16, 3))).compile().as_text()
    assert hlo.count(" convolution(") >= 10  # 5 forward and 5 backward convolutions
    assert "_01oi->" not in hlo


@pytest.mark.parametrize("shape,ceil", [((2, 8, 6, 3), False), ((1, 7, 9, 4), False), ((1, 7, 9, 4), True),
                                        ((1, 6, 5, 2), True)])
def test_max_pool_gradient_equals_select_and_scatter(shape, ceil):
    """Independent reference: lax.reduce_window's own gradient, ties included (first maximum wins)."""
    x = jax.random.normal(jax.random.key(1), shape)
    x = x.at[0, :4, :4].set(0.5)  # a flat patch: every window there is a 4-way tie
    x = x.at[0, 4:, :2].set(jnp.round(x[0, 4:, :2]))  # more ties, at 0 and +-1

    def reference(x):
        h, w = x.shape[1:3]
        pad = ((0, 0), (0, h % 2 if ceil else 0), (0, w % 2 if ceil else 0), (0, 0))
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), pad)

    y, vjp = jax.vjp(lambda x: vgg.max_pool(x, ceil), x)
    y_ref, vjp_ref = jax.vjp(reference, x)
    np.testing.assert_array_equal(y, y_ref)
    g = jax.random.normal(jax.random.key(2), y.shape)
    np.testing.assert_array_equal(vjp(g)[0], vjp_ref(g)[0])
