"""AdaIN model: parity with PyTorch golden fixtures, closed-form properties, NNX decoder, jit caching.

The fixtures (tests/fixtures/adain/, written by scripts/make_adain_fixtures.py) hold narrow
versions of the real ``vgg_normalised.pth`` / ``decoder.pth`` state dicts and the outputs of the
pytorch-AdaIN reference functions on odd-sized images (ceil-mode pooling).
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from nst_jax import adain, losses, weights
from nst_jax.errors import ConfigError, InputImageError, WeightsError

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "adain"
NARROW_WIDTHS = (16, 8, 6, 4)  # relu4_1, blocks 3, 2, 1 of the narrow fixture networks


def close(actual, expected, rel=1e-5):
    """Max-abs error within ``rel`` of the reference's largest magnitude (float32 conv reorderings)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rel * np.abs(expected).max())


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURES / "reference.npz") as data:
        return dict(data)


@pytest.fixture(scope="module")
def nets():
    vgg_params = weights.load_adain_vgg(FIXTURES / "vgg_normalised_narrow.pth")
    decoder_params = weights.load_adain_decoder(FIXTURES / "decoder_narrow.pth")
    return vgg_params, decoder_params


# Jitted once per shape: op-by-op execution would compile every primitive separately.
encode_jit = jax.jit(adain.encode, static_argnums=2)
decode_jit = jax.jit(adain.decode)
features_jit = jax.jit(adain.stylized_features, static_argnames=("preserve_color", "color_mode"))


def torch_stylized(ref, key):
    """The reference decoder output cropped to the content size and clipped, as stylize returns it."""
    h, w = ref["content"].shape[1:3]
    return np.clip(ref[key][:, :h, :w], 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Parity with pytorch-AdaIN


def test_loaders_read_the_real_key_formats(nets):
    vgg_params, decoder_params = nets
    assert set(decoder_params) == set(adain.DECODER_LAYERS)
    assert adain.check_decoder_params(decoder_params) == NARROW_WIDTHS
    # The file holds all 53 modules of vgg_normalised; only those up to relu4_1 are loaded.
    assert "conv4_1" in vgg_params and "conv4_2" not in vgg_params and "conv5_1" not in vgg_params
    assert vgg_params["conv4_1"]["kernel"].shape == (3, 3, 8, 16)


def test_encoder_matches_torch(nets, ref):
    layers = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
    feats = encode_jit(nets[0], ref["content"], layers)
    for name in layers:
        close(feats[name], ref[f"enc_{name}"])
    assert feats["relu4_1"].shape == (1, 5, 4, 16)  # 35x29 -> 18x15 -> 9x8 -> 5x4 with ceil pooling


def test_mean_std_matches_calc_mean_std(ref):
    mean, std = losses.mean_std(ref["enc_relu4_1"])
    close(mean, ref["content_mean"])
    close(std, ref["content_std"])


def test_adain_matches_torch(nets, ref):
    style_feat = encode_jit(nets[0], ref["style0"], ("relu4_1",))["relu4_1"]
    close(losses.adain(ref["enc_relu4_1"], style_feat), ref["adain"])


def test_decoder_matches_torch(nets, ref):
    out = decode_jit(nets[1], ref["adain"])
    assert out.shape == (1, 40, 32, 3)  # 8x the 5x4 feature map, not clipped
    close(out, ref["decoded_adain"])


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_stylize_matches_torch(nets, ref, alpha):
    out = np.asarray(adain.stylize_jit(*nets, ref["content"], ref["style0"], alpha))
    # Cropped to the content size (the decoder gives 40x32) and clipped to [0, 1].
    assert out.shape == ref["content"].shape
    assert out.min() == 0.0 and out.max() == 1.0  # the narrow decoder overshoots on both sides
    close(out, torch_stylized(ref, f"stylized_alpha{alpha:g}"), rel=2e-5)


def test_interpolation_matches_torch(nets, ref):
    styles = [ref["style0"], ref["style1"]]  # different sizes: encoded one at a time
    out = adain.stylize_jit(*nets, ref["content"], styles, interpolation_weights=ref["interp_weights"])
    close(out, torch_stylized(ref, "stylized_interp"), rel=2e-5)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_mask_matches_torch(nets, ref, alpha):
    styles = [ref["style0"], ref["style1"]]
    out = adain.stylize_jit(*nets, ref["content"], styles, alpha, content_mask=ref["mask"])
    close(out, torch_stylized(ref, f"stylized_mask_alpha{alpha:g}"), rel=2e-5)


# ---------------------------------------------------------------------------------------------
# Closed-form properties


def _stats(x, axes=(1, 2)):
    x = np.asarray(x, np.float64)
    n = np.prod([x.shape[a] for a in axes])
    mean = x.mean(axis=axes)
    return mean, np.sqrt(((x - x.mean(axis=axes, keepdims=True)) ** 2).sum(axis=axes) / (n - 1))


def test_adain_features_have_the_style_statistics(nets, ref):
    vgg_params = nets[0]
    t = features_jit(vgg_params, ref["content"], ref["style0"])
    t_mean, t_std = _stats(t)
    s_mean, s_std = _stats(encode_jit(vgg_params, ref["style0"], ("relu4_1",))["relu4_1"])
    c_std = _stats(ref["enc_relu4_1"])[1]
    np.testing.assert_allclose(t_mean, s_mean, rtol=1e-5, atol=1e-6)
    # std(AdaIN) = sigma_s * std_c / sqrt(std_c^2 + eps) with sigma_s = sqrt(std_s^2 + eps) (eq. 8).
    expected = np.sqrt(s_std**2 + 1e-5) * c_std / np.sqrt(c_std**2 + 1e-5)
    np.testing.assert_allclose(t_std, expected, rtol=1e-4)


def test_mask_regions_take_their_own_style_statistics(nets, ref):
    vgg_params = nets[0]
    styles = [ref["style0"], ref["style1"]]
    mask = np.zeros((35, 29), np.float32)
    mask[:, :15] = 1.0  # relu4_1 is 5x4; nearest sampling takes columns 0, 7, 14, 21: 0-2 foreground
    t = np.asarray(features_jit(vgg_params, ref["content"], styles, content_mask=mask))
    for region, style in ((t[:, :, :3], styles[0]), (t[:, :, 3:], styles[1])):
        s_mean, s_std = _stats(encode_jit(vgg_params, style, ("relu4_1",))["relu4_1"])
        r_mean, r_std = _stats(region)
        np.testing.assert_allclose(r_mean, s_mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r_std, s_std, rtol=2e-3)  # eps in the sigmas only


def test_interpolated_statistics_are_the_weighted_sums(nets, ref):
    vgg_params = nets[0]
    styles = [ref["style0"], ref["style1"]]
    w = np.array([0.25, 0.75], np.float32)
    t = features_jit(vgg_params, ref["content"], styles, interpolation_weights=w)
    stats = [_stats(encode_jit(vgg_params, s, ("relu4_1",))["relu4_1"]) for s in styles]
    t_mean, t_std = _stats(t)
    np.testing.assert_allclose(t_mean, w[0] * stats[0][0] + w[1] * stats[1][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t_std, w[0] * stats[0][1] + w[1] * stats[1][1], rtol=2e-3)


def test_alpha_zero_decodes_the_content_features(nets, ref):
    vgg_params, decoder_params = nets
    out = adain.stylize_jit(vgg_params, decoder_params, ref["content"], ref["style0"], 0.0)
    expected = decode_jit(decoder_params, ref["enc_relu4_1"])
    close(out, np.clip(np.asarray(expected)[:, :35, :29], 0, 1))


def test_interpolation_with_one_nonzero_weight_equals_that_style(nets, ref):
    styles = [ref["style0"], ref["style1"]]
    out = adain.stylize_jit(*nets, ref["content"], styles, interpolation_weights=jnp.array([0.0, 1.0]))
    close(out, adain.stylize_jit(*nets, ref["content"], ref["style1"]), rel=1e-5)


@pytest.mark.parametrize("fill, which", [(1.0, 0), (0.0, 1)])
def test_full_and_empty_masks_equal_one_style(nets, ref, fill, which):
    styles = [ref["style0"], ref["style1"]]
    mask = np.full((35, 29), fill, np.float32)
    out = adain.stylize_jit(*nets, ref["content"], styles, 0.7, content_mask=mask)
    close(out, adain.stylize_jit(*nets, ref["content"], styles[which], 0.7), rel=1e-5)


def test_batches_are_independent_pairs(nets, ref):
    content = np.concatenate([ref["content"], ref["content"][:, ::-1]])
    style = np.concatenate([ref["style0"], ref["style0"][:, :, ::-1]])
    both = adain.stylize_jit(*nets, content, style)
    for i in range(2):
        close(both[i:i + 1], adain.stylize_jit(*nets, content[i:i + 1], style[i:i + 1]), rel=1e-5)


def test_preserve_color_recolors_the_style_before_encoding(nets, ref):
    # Mid-range images, so the colour match needs no clipping and its mean is exact.
    content = 0.3 + 0.4 * ref["content"] * np.array([1.0, 0.5, 0.2], np.float32)
    style = 0.3 + 0.4 * ref["style0"]
    recolored = adain.preserve_color(content, style)
    np.testing.assert_allclose(recolored.mean(axis=(1, 2)), content.mean(axis=(1, 2)), atol=1e-4)
    expected = adain.stylize_jit(*nets, content, recolored)
    close(adain.stylize_jit(*nets, content, style, preserve_color=True), expected, rel=1e-5)
    with pytest.raises(ConfigError, match="colour transform"):
        adain.stylize(*nets, content, style, preserve_color=True, color_mode="nope")


# ---------------------------------------------------------------------------------------------
# Compilation


def test_stylize_jit_traces_once_for_repeated_shapes(nets):
    # Shapes no other test uses, so the first call here compiles.
    rng = np.random.default_rng(0)
    content, style = rng.random((1, 17, 19, 3), np.float32), rng.random((1, 18, 16, 3), np.float32)
    before = adain.stylize_jit._cache_size()
    outs = [adain.stylize_jit(*nets, content, style, alpha) for alpha in (1.0, 0.25)]  # alpha is traced
    assert adain.stylize_jit._cache_size() == before + 1
    assert not np.allclose(outs[0], outs[1])
    for threshold in (0.3, 0.6):  # the mask is traced too
        adain.stylize_jit(*nets, content, [style, style], content_mask=content[0, :, :, 0] > threshold)
    assert adain.stylize_jit._cache_size() == before + 2


# ---------------------------------------------------------------------------------------------
# Decoder params and the NNX module


def test_init_decoder_shapes_and_he_scale():
    shapes = jax.eval_shape(adain.init_decoder, jax.random.PRNGKey(0))
    assert adain.check_decoder_params(shapes) == adain.DECODER_WIDTHS
    assert jax.eval_shape(adain.decode, shapes, jnp.ones((1, 2, 3, 512))).shape == (1, 16, 24, 3)
    params = jax.jit(adain.init_decoder, static_argnums=1)(jax.random.PRNGKey(0), (64, 64, 32, 16))
    kernel = np.asarray(params["dec3_3"]["kernel"])
    assert kernel.shape == (3, 3, 64, 64)
    np.testing.assert_allclose(kernel.std(), np.sqrt(2.0 / (9 * 64)), rtol=0.05)  # He: var = 2 / fan_in
    assert not np.any(params["dec3_3"]["bias"])
    assert not np.allclose(params["dec3_3"]["kernel"], params["dec3_4"]["kernel"])  # independent draws


def test_nnx_decoder_round_trips_and_equals_decode(nets, ref):
    decoder_params = nets[1]
    module = adain.Decoder.from_params(decoder_params)
    back = module.to_params()
    for name in adain.DECODER_LAYERS:
        for leaf in ("kernel", "bias"):
            np.testing.assert_array_equal(back[name][leaf], decoder_params[name][leaf])
    out = nnx.jit(lambda m, x: m(x))(module, ref["adain"])
    close(out, decode_jit(decoder_params, ref["adain"]), rel=1e-6)
    close(out, ref["decoded_adain"])


def test_nnx_decoder_init_has_the_functional_layout():
    module = nnx.eval_shape(lambda: adain.Decoder(NARROW_WIDTHS, rngs=nnx.Rngs(0)))
    assert adain.check_decoder_params(nnx.to_pure_dict(nnx.state(module))) == NARROW_WIDTHS


def test_decoder_graphdef_is_that_of_a_fresh_module_and_decode_runs_it():
    fresh = adain.Decoder(NARROW_WIDTHS, rngs=nnx.Rngs(params=1))
    graphdef, state = nnx.split(fresh)
    assert adain.Decoder.graphdef(NARROW_WIDTHS) == graphdef
    # The weights loader reads the same layer table (pytorch-AdaIN's Sequential indices per name).
    assert adain.Decoder.LAYERS == adain.DECODER_LAYERS == tuple(weights.ADAIN_DECODER_INDEX)
    params = nnx.to_pure_dict(state)
    t = jax.random.normal(jax.random.key(2), (1, 2, 3, NARROW_WIDTHS[0]))
    # decode() is the module applied to the params pytree, not a second implementation.
    np.testing.assert_array_equal(np.asarray(adain.decode(params, t)), np.asarray(fresh(t)))
    assert isinstance(adain.Decoder.merge(params), adain.Decoder)


def test_check_decoder_params_names_missing_and_unexpected_layers(nets):
    params = dict(nets[1])
    params["extra"] = params.pop("dec3_1")
    with pytest.raises(WeightsError, match=r"-dec3_1, \+extra"):
        adain.check_decoder_params(params)
    params = dict(nets[1])
    params["dec2_2"] = {"kernel": np.zeros((3, 3, 6, 5)), "bias": np.zeros(5)}
    with pytest.raises(WeightsError, match="dec2_2"):
        adain.Decoder.from_params(params)


# ---------------------------------------------------------------------------------------------
# Errors


def test_stylize_rejects_bad_inputs(nets, ref):
    c, s = ref["content"], ref["style0"]
    with pytest.raises(ConfigError, match="alpha"):
        adain.stylize(*nets, c, s, 1.5)
    with pytest.raises(ConfigError, match="exactly two styles"):
        adain.stylize(*nets, c, [s, s, s], content_mask=ref["mask"])
    with pytest.raises(ConfigError, match="one weight per style"):
        adain.stylize(*nets, c, [s, s], interpolation_weights=[1.0])
    with pytest.raises(ConfigError, match="cannot be combined"):
        adain.stylize(*nets, c, [s, s], interpolation_weights=[0.5, 0.5], content_mask=ref["mask"])
    with pytest.raises(InputImageError, match="at least 16 px"):
        adain.stylize(*nets, c[:, :12], s)
    with pytest.raises(InputImageError, match="NHWC"):
        adain.stylize(*nets, c[0], s)
    wide = dict(nets[1], dec4_1={"kernel": np.zeros((3, 3, 32, 8), np.float32),
                                 "bias": np.zeros(8, np.float32)})
    with pytest.raises(WeightsError, match="takes 32 channels.*gives 16"):
        adain.stylize(nets[0], wide, c, s)


# ---------------------------------------------------------------------------------------------
# The decoder's up-sampling conv, computed on the small map


def _upsample_reflect_conv_numpy(x, kernel, bias):
    """Reference in float64 numpy: nearest x2, reflection pad 1, 3x3 correlation, bias (PyTorch's order)."""
    up = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)
    padded = np.pad(up, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    h, w = up.shape[1:3]
    out = sum(np.einsum("nhwc,co->nhwo", padded[:, a: a + h, b: b + w], kernel[a, b])
              for a in range(3) for b in range(3))
    return out + bias


@pytest.mark.parametrize("hw", [(1, 1), (1, 3), (2, 5), (7, 4)])
def test_upsample_conv_equals_upsampling_then_reflect_conv(hw):
    rng = np.random.default_rng(sum(hw))
    x = rng.standard_normal((2, *hw, 5))
    kernel, bias = rng.standard_normal((3, 3, 5, 4)), rng.standard_normal(4)
    expected = _upsample_reflect_conv_numpy(x, kernel, bias)
    got = jax.jit(adain.upsample_conv)(jnp.asarray(x, jnp.float32),
                                       {"kernel": jnp.asarray(kernel, jnp.float32), "bias": jnp.asarray(bias, jnp.float32)})
    assert got.shape == (2, 2 * hw[0], 2 * hw[1], 4)
    # float32 sums of 45 products (combined kernel taps): a few float32 epsilons of the terms' magnitude.
    terms = sum(np.einsum("nhwc,co->nhwo", np.abs(np.repeat(np.repeat(x, 2, 1), 2, 2)), np.abs(kernel[a, b]))
                for a in range(3) for b in range(3)).max()
    np.testing.assert_allclose(np.asarray(got), expected, rtol=0, atol=64 * np.finfo(np.float32).eps * terms)


def test_upsample_conv_gradients():
    rng = np.random.default_rng(3)
    jax.config.update("jax_enable_x64", True)
    try:
        x = jnp.asarray(rng.standard_normal((1, 3, 2, 2)))
        kernel, bias = jnp.asarray(rng.standard_normal((3, 3, 2, 3))), jnp.asarray(rng.standard_normal(3))
        check_grads(lambda x, k: adain.upsample_conv(x, {"kernel": k, "bias": bias}), (x, kernel),
                                  order=1, modes=("rev",), eps=1e-6, atol=1e-6, rtol=1e-6)
    finally:
        jax.config.update("jax_enable_x64", False)


def test_upsample_conv_refuses_other_kernel_sizes():
    with pytest.raises(ValueError, match="3x3"):
        adain.upsample_conv(jnp.zeros((1, 2, 2, 1)), {"kernel": jnp.zeros((5, 5, 1, 1)), "bias": jnp.zeros(1)})
