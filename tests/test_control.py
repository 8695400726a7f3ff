"""Perceptual control of Gatys style transfer: colour (histogram, luminance) and space (masks).

References are closed forms computed here with NumPy (means, covariances, YCbCr chroma, masked Gram
matrices over explicit positions), never the code under test. Optimizations use a small layer set
(relu1_1/relu2_1) and Adam, whose compile is quick, since the optimizer does not matter here.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from nst_jax import gatys, guides, vgg
from nst_jax import image as imageio
from nst_jax.errors import ConfigError
from nst_jax.cli import gatys as gatys_cli

FAST = gatys.GatysConfig(content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"),
                         iterations=4, optimizer="adam", learning_rate=0.05)
LAYER_FLAGS = ["--content-layers", "relu2_1", "--style-layers", "relu1_1,relu2_1", "--optimizer", "adam",
               "--learning-rate", "0.05"]

# BT.601 full-range YCbCr, written out independently of nst_jax.color.
YCBCR = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def _chroma(rgb):
    return (np.asarray(rgb, np.float64) @ YCBCR.T)[..., 1:]


def _stats(img):
    px = np.asarray(img, np.float64).reshape(-1, 3)
    return px.mean(0), np.cov(px, rowvar=False, bias=True)


def _colored(key, shape, mean, mix):
    """Correlated RGB noise with a given mean: small enough that a linear recolouring stays in [0, 1]."""
    z = jax.random.normal(jax.random.key(key), shape)
    return np.asarray(jnp.asarray(mean) + z @ jnp.asarray(mix).T, np.float32)


CONTENT = _colored(1, (1, 20, 24, 3), [0.55, 0.45, 0.40], [[0.08, 0.02, 0.0], [0.03, 0.06, 0.01], [0.0, 0.02, 0.05]])
STYLE = _colored(2, (1, 16, 16, 3), [0.35, 0.50, 0.60], [[0.05, 0.0, 0.03], [0.02, 0.07, 0.0], [0.04, 0.01, 0.06]])


# ---------------------------------------------------------------------------------------------
# Colour


@pytest.mark.parametrize("transform", ["eig", "chol", "sym"])
@pytest.mark.parametrize("mode", ["histogram", "histogram-from-style"])
def test_histogram_matching_gives_target_mean_and_covariance(mode, transform):
    assert 0.05 < CONTENT.min() and CONTENT.max() < 0.95 and 0.05 < STYLE.min() and STYLE.max() < 0.95
    config = gatys.GatysConfig(color=mode, color_transform=transform)
    content, style, _ = gatys.prepare_inputs(jnp.asarray(CONTENT), jnp.asarray(STYLE), config)
    if mode == "histogram":
        changed, target, untouched, original = style, CONTENT, content, CONTENT
    else:
        changed, target, untouched, original = content, STYLE, style, STYLE
    np.testing.assert_array_equal(np.asarray(untouched), original)
    assert 0.0 < float(changed.min()) and float(changed.max()) < 1.0  # no clipping moved the statistics
    (mu, cov), (mu_t, cov_t) = _stats(changed), _stats(target)
    np.testing.assert_allclose(mu, mu_t, atol=1e-5)
    np.testing.assert_allclose(cov, cov_t, atol=2e-6, rtol=1e-3)
    # ... and the change is an affine map of the pixels: least squares fits it exactly.
    src = np.concatenate([(STYLE if mode == "histogram" else CONTENT).reshape(-1, 3), np.ones((changed.size // 3, 1))], 1)
    coef, *_ = np.linalg.lstsq(src, np.asarray(changed, np.float64).reshape(-1, 3), rcond=None)
    np.testing.assert_allclose(src @ coef, np.asarray(changed).reshape(-1, 3), atol=1e-5)


def test_histogram_recolours_every_style_of_a_list():
    config = gatys.GatysConfig(color="histogram")
    _, styles, _ = gatys.prepare_inputs(jnp.asarray(CONTENT), [jnp.asarray(STYLE), jnp.asarray(STYLE[:, :8])], config)
    assert isinstance(styles, list) and len(styles) == 2
    for s in styles:
        np.testing.assert_allclose(_stats(s)[0], _stats(CONTENT)[0], atol=1e-5)


@pytest.mark.parametrize("space", ["ycbcr", "yiq"])
def test_luminance_mode_prepares_gray_images_with_matched_luminance(space):
    config = gatys.GatysConfig(color="luminance", color_space=space)
    content, style, init = gatys.prepare_inputs(jnp.asarray(CONTENT), jnp.asarray(STYLE), config,
                                                init=jnp.asarray(STYLE[:, :, :12]))
    y = lambda img: np.asarray(img, np.float64) @ YCBCR[0]  # noqa: E731 - Y is the same row in both spaces
    for img in (content, style, init):
        img = np.asarray(img)
        np.testing.assert_allclose(img[..., 0], img[..., 1], atol=0)
        np.testing.assert_allclose(img[..., 0], img[..., 2], atol=0)
    np.testing.assert_allclose(np.asarray(content)[..., 0], y(CONTENT), atol=1e-5)
    np.testing.assert_allclose(np.asarray(init)[..., 0], y(STYLE[:, :, :12]), atol=1e-5)
    s = np.asarray(style)[..., 0]
    np.testing.assert_allclose([s.mean(), s.std()], [y(CONTENT).mean(), y(CONTENT).std()], atol=1e-5)


@pytest.mark.parametrize("space", ["ycbcr", "yiq"])
def test_finish_output_keeps_the_content_chroma(space):
    config = gatys.GatysConfig(color="luminance", color_space=space)
    gray = np.asarray(jax.random.uniform(jax.random.key(5), (1, 20, 24, 1), minval=0.35, maxval=0.65))
    out = np.asarray(gatys.finish_output(jnp.asarray(np.repeat(gray, 3, -1)), jnp.asarray(CONTENT), config))
    assert 0.0 < out.min() and out.max() < 1.0
    np.testing.assert_allclose(_chroma(out), _chroma(CONTENT), atol=1e-5)
    np.testing.assert_allclose(out @ YCBCR[0], gray[..., 0], atol=1e-5)


def test_stylize_in_luminance_mode_changes_luminance_but_keeps_chroma(narrow_vgg19):
    config = dataclasses.replace(FAST, color="luminance", iterations=6)
    weights = gatys.loss_weights(config, content=1e-3, style=1e3)
    out = jax.jit(gatys.stylize, static_argnames="config")(narrow_vgg19, jnp.asarray(CONTENT),
                                                            jnp.asarray(STYLE), config, weights)
    image = np.asarray(out.image)
    inside = np.all((image > 1e-4) & (image < 1 - 1e-4), axis=-1)
    assert inside.mean() > 0.8
    np.testing.assert_allclose(_chroma(image)[inside], _chroma(CONTENT)[inside], atol=1e-4)
    # The optimization did move the luminance (the test would pass trivially otherwise).
    assert np.abs(image @ YCBCR[0] - CONTENT @ YCBCR[0]).max() > 0.05
    assert float(out.losses[-1]) < float(out.losses[0])


# ---------------------------------------------------------------------------------------------
# Spatial control


def test_regions_from_labels_gray_levels_and_colours():
    label = np.zeros((4, 6, 3), np.float32)
    label[:, :2] = 1.0  # white -> style 1
    label[:, 2:4] = 0.45  # gray -> nearest of (1, 0.5, 0) is 0.5 -> style 2
    masks = np.asarray(guides.regions_from_labels(label, 3))
    np.testing.assert_array_equal(masks[0], np.repeat([[1, 1, 0, 0, 0, 0]], 4, 0))
    np.testing.assert_array_equal(masks[1], np.repeat([[0, 0, 1, 1, 0, 0]], 4, 0))
    np.testing.assert_array_equal(masks[2], np.repeat([[0, 0, 0, 0, 1, 1]], 4, 0))
    two = np.asarray(guides.regions_from_labels(label, 2))  # threshold at mid-gray
    np.testing.assert_array_equal(two[0], np.repeat([[1, 1, 0, 0, 0, 0]], 4, 0))
    np.testing.assert_array_equal(two[0] + two[1], np.ones((4, 6)))
    colours = np.zeros((4, 6, 3), np.float32)
    colours[:, :3] = [0.9, 0.1, 0.1]
    colours[:, 3:] = [0.1, 0.1, 0.8]
    by_colour = np.asarray(guides.regions_from_labels(colours, 2, colors=[(0, 0, 1), (1, 0, 0)]))
    np.testing.assert_array_equal(by_colour[1], np.repeat([[1, 1, 1, 0, 0, 0]], 4, 0))
    with pytest.raises(ConfigError, match="--mask-colors"):
        guides.regions_from_labels(colours, 3, colors=[(0, 0, 1), (1, 0, 0)])


def _box(mask, levels):
    for _ in range(levels):
        h, w = mask.shape[-2] // 2 * 2, mask.shape[-1] // 2 * 2
        m = mask[..., :h, :w]
        mask = m.reshape(m.shape[:-2] + (h // 2, 2, w // 2, 2)).mean(axis=(-3, -1))
    return mask


def test_layer_masks_box_downsample_to_each_feature_map():
    masks = np.asarray(jax.random.uniform(jax.random.key(3), (2, 23, 18)))
    out = guides.layer_masks(masks, ("relu1_1", "relu2_1", "relu3_1", "pool3"))
    params = vgg.init_params(jax.random.key(0), {1: 2, 2: 2, 3: 2, 4: 2, 5: 2})
    feats = jax.eval_shape(lambda x: vgg.features(params, x, ("relu1_1", "relu2_1", "relu3_1", "pool3")),
                           jnp.zeros((1, 23, 18, 3)))
    for name, levels in (("relu1_1", 0), ("relu2_1", 1), ("relu3_1", 2), ("pool3", 3)):
        assert out[name].shape[1:] == feats[name].shape[1:3]
        np.testing.assert_allclose(out[name], _box(masks, levels), atol=1e-6)


def _numpy_guided_style_loss(feats, style_feats, masks, config, layer_weights):
    """Σ_l w_l Σ_r c_r ||G_r - A_r||² / (4 C²) with G_r over explicit masked positions."""
    total = 0.0
    for k, name in enumerate(config.style_layers):
        f = np.asarray(feats[name], np.float64)[0]
        m = _box(masks, vgg.num_pools_before(name))
        c = f.shape[-1]
        layer = 0.0
        for r in range(len(masks)):
            w = m[r]
            if np.sum(w * w) > 0:
                g = np.einsum("hwi,hwj->ij", f * w[..., None], f * w[..., None]) / np.sum(w * w)
            else:
                g = np.zeros((c, c))
            s = np.asarray(style_feats[r][name], np.float64)[0].reshape(-1, c)
            a = s.T @ s / s.shape[0]
            layer += np.sum(w * w) / w.size * np.sum((g - a) ** 2) / (4 * c * c)
        total += layer_weights[k] * layer
    return total


def test_guided_style_loss_matches_closed_form(narrow_vgg19):
    x = jnp.asarray(CONTENT)
    styles = [jnp.asarray(STYLE), jnp.asarray(CONTENT[:, ::-1, :18])]
    masks = np.zeros((2, 20, 24), np.float32)
    masks[0, :, :10] = 1.0
    masks[1, :, 10:] = 1.0
    masks[:, 5:8] = 0.5  # soft band: both styles share it
    targets = gatys.compute_targets(narrow_vgg19, x, styles, FAST, content_masks=masks)
    weights = gatys.loss_weights(FAST, style_layers=[0.3, 0.7])
    image = x[:, ::-1]
    terms = gatys.loss_terms(image, narrow_vgg19, targets, weights, FAST)
    feats = vgg.features(narrow_vgg19, image, FAST.style_layers)
    style_feats = [vgg.features(narrow_vgg19, s, FAST.style_layers) for s in styles]
    expected = _numpy_guided_style_loss(feats, style_feats, masks, FAST, [0.3, 0.7])
    np.testing.assert_allclose(float(terms["style"]), expected, rtol=1e-4)


def test_one_full_mask_is_the_unguided_loss(narrow_vgg19):
    x, s = jnp.asarray(CONTENT), jnp.asarray(STYLE)
    plain = gatys.compute_targets(narrow_vgg19, x, s, FAST)
    guided = gatys.compute_targets(narrow_vgg19, x, [s], FAST, content_masks=np.ones((1, 20, 24)))
    image = x[:, ::-1]
    a = gatys.loss_terms(image, narrow_vgg19, plain, gatys.loss_weights(FAST), FAST)
    b = gatys.loss_terms(image, narrow_vgg19, guided, gatys.loss_weights(FAST), FAST)
    np.testing.assert_allclose(float(b["style"]), float(a["style"]), rtol=1e-5)


def test_style_mask_restricts_the_style_gram_to_its_region(narrow_vgg19):
    config = gatys.GatysConfig(content_layers=("relu1_1",), style_layers=("relu1_1",))
    style = jnp.asarray(STYLE)
    mask = np.zeros((16, 16), np.float32)
    mask[3:11, 2:9] = 1.0
    targets = gatys.compute_targets(narrow_vgg19, jnp.asarray(CONTENT), [style], config, style_masks=[mask])
    f = np.asarray(vgg.features(narrow_vgg19, style, ("relu1_1",))["relu1_1"], np.float64)[0, 3:11, 2:9]
    f = f.reshape(-1, f.shape[-1])
    np.testing.assert_allclose(np.asarray(targets.style_grams["relu1_1"])[0], f.T @ f / len(f), rtol=1e-5)


def test_a_style_with_an_empty_mask_changes_nothing(narrow_vgg19):
    content, a, b = jnp.asarray(CONTENT), jnp.asarray(STYLE), jnp.asarray(STYLE[:, ::-1] * 0.5)
    run = jax.jit(gatys.stylize, static_argnames="config")
    alone = run(narrow_vgg19, content, a, FAST)
    masks = jnp.stack([jnp.ones((20, 24)), jnp.zeros((20, 24))])
    both = run(narrow_vgg19, content, [a, b], FAST, content_masks=masks)
    np.testing.assert_allclose(np.asarray(both.losses), np.asarray(alone.losses), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(both.image), np.asarray(alone.image), atol=1e-5)
    # With the masks swapped style B acts alone instead: a different result, so the test can fail.
    swapped = run(narrow_vgg19, content, [a, b], FAST, content_masks=masks[::-1])
    assert np.abs(np.asarray(swapped.image) - np.asarray(alone.image)).max() > 1e-2


def test_each_region_takes_its_own_style(narrow_vgg19):
    """Left half styled by a red image, right half by a blue one, from a gray start."""
    config = gatys.GatysConfig(content_layers=("relu1_1",), style_layers=("relu1_1",), iterations=60,
                               optimizer="adam", learning_rate=0.03, init="noise", init_noise=0.05)
    red = np.broadcast_to(np.float32([0.85, 0.15, 0.15]), (1, 16, 16, 3))
    blue = np.broadcast_to(np.float32([0.15, 0.15, 0.85]), (1, 16, 16, 3))
    masks = np.zeros((2, 16, 16), np.float32)
    masks[0, :, :8] = 1.0
    masks[1, :, 8:] = 1.0
    weights = gatys.loss_weights(config, content=0.0, style=1.0)
    out = gatys.stylize(narrow_vgg19, jnp.full((1, 16, 16, 3), 0.5), [jnp.asarray(red), jnp.asarray(blue)],
                        config, weights, content_masks=masks)
    image = np.asarray(out.image)[0]
    left, right = image[:, 1:7].mean((0, 1)), image[:, 9:15].mean((0, 1))
    # Red minus blue is much larger on the left than on the right (the narrow test network's four
    # relu1_1 channels do not pin the colour exactly, so only the contrast is asserted).
    assert (left[0] - left[2]) - (right[0] - right[2]) > 0.3, (left, right)
    assert right[2] > right[0] + 0.1, right


def test_mask_errors_are_config_errors(narrow_vgg19):
    x, s = jnp.asarray(CONTENT), jnp.asarray(STYLE)
    with pytest.raises(ConfigError, match="one content mask per style"):
        gatys.compute_targets(narrow_vgg19, x, [s, s], FAST, content_masks=np.ones((1, 20, 24)))
    with pytest.raises(ConfigError, match="--style-blend-weights cannot be combined"):
        gatys.compute_targets(narrow_vgg19, x, [s, s], FAST, [1.0, 1.0], content_masks=np.ones((2, 20, 24)))
    with pytest.raises(ConfigError, match="--style-mask has 1 masks for 2"):
        gatys.compute_targets(narrow_vgg19, x, [s, s], FAST, style_masks=[np.ones((16, 16))])
    with pytest.raises(ConfigError, match="--color"):
        gatys.GatysConfig(color="lumi")


# ---------------------------------------------------------------------------------------------
# More control: several styles, style scale, TV, per-layer weights


def test_blend_weights_mix_the_style_grams(narrow_vgg19):
    x, a, b = jnp.asarray(CONTENT), jnp.asarray(STYLE), jnp.asarray(STYLE[:, ::-1, ::-1] ** 2)
    mixed = gatys.compute_targets(narrow_vgg19, x, [a, b], FAST, blend_weights=[1.0, 3.0])
    for name in FAST.style_layers:
        ga = _gram(vgg.features(narrow_vgg19, a, [name])[name])
        gb = _gram(vgg.features(narrow_vgg19, b, [name])[name])
        np.testing.assert_allclose(np.asarray(mixed.style_grams[name])[0], 0.25 * ga + 0.75 * gb, rtol=1e-5)


@pytest.mark.parametrize("blend, needle", [((1e308, 1e308), "sum to infinity"), ((0.0, 0.0), "not all zero"),
                                          ((1.0, float("nan")), "finite"), ((-1.0, 2.0), ">= 0")])
def test_blend_weights_that_cannot_be_normalised_are_refused(blend, needle):
    # Refused where the weights are normalised, whole-image and tiled, before any network runs
    # (params=None would fail otherwise). 1e308 + 1e308 overflows: dividing by the sum gave 0, 0.
    from nst_jax import tiling

    x = jnp.asarray(CONTENT)
    with pytest.raises(ConfigError, match=f"--style-blend-weights.*{needle}"):
        gatys.compute_targets(None, x, [x, x], FAST, blend_weights=list(blend))
    with pytest.raises(ConfigError, match=f"--style-blend-weights.*{needle}"):
        tiling.tiled_targets(None, x, [x, x], FAST, blend_weights=list(blend), tile_size=32)


def test_normalized_weights_keep_ratios_of_huge_and_tiny_weights():
    from nst_jax.errors import normalized_weights

    assert normalized_weights([1e307, 3e307], "--w") == (0.25, 0.75)
    assert normalized_weights([5e-324, 0.0], "--w") == (1.0, 0.0)
    assert normalized_weights([2], "--w") == (1.0,)


def _gram(f):
    f = np.asarray(f, np.float64)[0]
    f = f.reshape(-1, f.shape[-1])
    return f.T @ f / len(f)


def test_tv_and_per_layer_weights_enter_the_objective(narrow_vgg19):
    x, s = jnp.asarray(CONTENT), jnp.asarray(STYLE)
    targets = gatys.compute_targets(narrow_vgg19, x, s, FAST)
    image = x[:, ::-1]
    w = gatys.loss_weights(FAST, content=0.2, style=3.0, style_layers=[1.0, 0.0], tv=0.5)
    terms = gatys.loss_terms(image, narrow_vgg19, targets, w, FAST)
    only_first = gatys.loss_terms(image, narrow_vgg19, targets,
                                  gatys.loss_weights(FAST, style_layers=[1.0, 0.0]), FAST)
    f = np.asarray(vgg.features(narrow_vgg19, image, ["relu1_1"])["relu1_1"])
    a = _gram(vgg.features(narrow_vgg19, s, ["relu1_1"])["relu1_1"])
    c = f.shape[-1]
    style = np.sum((_gram(f) - a) ** 2) / (4 * c * c)
    img = np.asarray(image, np.float64)
    tv = np.sum(np.diff(img, axis=1) ** 2) + np.sum(np.diff(img, axis=2) ** 2)
    np.testing.assert_allclose(float(only_first["style"]), style, rtol=1e-4)
    np.testing.assert_allclose(float(terms["tv"]), tv, rtol=1e-5)
    np.testing.assert_allclose(float(terms["total"]), 0.2 * float(terms["content"]) + 3.0 * style + 0.5 * tv,
                               rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Command line, in process


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("control")
    rng = np.random.default_rng(0)
    paths = {}
    for name, shape, scale in (("content", (32, 40, 3), 1.0), ("style", (24, 24, 3), 1.0), ("style2", (28, 24, 3), 0.4)):
        paths[name] = d / f"{name}.png"
        Image.fromarray((rng.random(shape) * 255 * scale).astype(np.uint8)).save(paths[name])
    mask = np.zeros((64, 80), np.uint8)
    mask[:, :40] = 255
    paths["mask"] = d / "mask.png"
    Image.fromarray(mask).save(paths["mask"])
    paths["dir"] = d
    return paths


def _cli(files, *extra, weights):
    out = files["dir"] / "out.png"
    metrics = files["dir"] / "metrics.json"
    argv = ["--content", str(files["content"]), "--weights", str(weights), "--size", "16", "--iterations", "2",
            "--chunk", "1", "--no-progress", "-o", str(out), "--metrics-json", str(metrics), *LAYER_FLAGS, *extra]
    code = gatys_cli.main(argv)
    return code, out, metrics


NARROW = pathlib.Path(__file__).parent / "fixtures" / "gatys" / "vgg19_narrow.pth"


@pytest.mark.parametrize("mode", ["none", "luminance", "histogram", "histogram-from-style"])
def test_cli_color_modes(files, mode):
    code, out, metrics = _cli(files, "--style", str(files["style"]), "--color", mode, "--color-transform", "chol",
                              weights=NARROW)
    assert code == 0
    image = imageio.load_image(out)
    assert image.shape == (16, 20, 3)
    data = json.loads(metrics.read_text())
    assert data["config"]["color"] == mode and data["config"]["color_transform"] == "chol"
    assert [lv["size"] for lv in data["levels"]] == [16]
    if mode == "luminance":
        content = imageio.resize(imageio.load_image(files["content"]), height=16)
        inside = np.all((image > 2 / 255) & (image < 1 - 2 / 255), axis=-1)
        # 8-bit output: chroma agrees up to rounding of the three channels.
        np.testing.assert_allclose(_chroma(image)[inside], _chroma(content)[inside], atol=4 / 255)


def test_cli_masks_and_several_styles(files, capsys):
    code, out, metrics = _cli(files, "--style", str(files["style"]), str(files["style2"]),
                              "--content-mask", str(files["mask"]), weights=NARROW)
    assert code == 0
    assert imageio.load_image(out).shape == (16, 20, 3)
    assert json.loads(metrics.read_text())["config"]["content_mask"] == [str(files["mask"])]
    code, _, _ = _cli(files, "--style", str(files["style"]), str(files["style2"]), "--style-blend-weights", "1,3",
                      weights=NARROW)
    assert code == 0
    code, _, _ = _cli(files, "--style", str(files["style"]), str(files["style2"]), "--content-mask", str(files["mask"]),
                      "--style-blend-weights", "1,3", weights=NARROW)
    assert code == 2
    code, _, _ = _cli(files, "--style", str(files["style"]), "--content-mask", str(files["mask"]), str(files["mask"]),
                      weights=NARROW)
    assert code == 2
    err = capsys.readouterr().err
    assert "error: --style-blend-weights cannot be combined" in err
    assert "error: --content-mask has 2 images for 1 styles" in err
    assert "Traceback" not in err


def test_cli_rejects_a_mask_of_another_aspect_ratio(files, tmp_path, capsys):
    bad = tmp_path / "square.png"
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(bad)
    code, _, _ = _cli(files, "--style", str(files["style"]), str(files["style2"]), "--content-mask", str(bad),
                      weights=NARROW)
    assert code == 2
    assert "aspect ratio" in capsys.readouterr().err
