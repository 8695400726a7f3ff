"""Losses: closed forms, gradients (check_grads) and invariances."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

from nst_jax import losses

jax.config.update("jax_enable_x64", False)


def _feats(key, shape=(1, 5, 7, 4)):
    return jax.random.normal(jax.random.key(key), shape)


def test_gram_closed_form():
    f = _feats(0)
    explicit = np.einsum("hwi,hwj->ij", np.asarray(f[0], np.float64), np.asarray(f[0], np.float64))
    np.testing.assert_allclose(losses.gram(f)[0], explicit, rtol=1e-5)
    np.testing.assert_allclose(losses.gram(f, normalize=True)[0], explicit / 35, rtol=1e-5)


def test_gram_invariant_to_pixel_permutation():
    f = _feats(1, (1, 6, 6, 5))
    perm = np.random.default_rng(0).permutation(36)
    shuffled = f.reshape(1, 36, 5)[:, perm].reshape(1, 6, 6, 5)
    np.testing.assert_allclose(losses.gram(shuffled), losses.gram(f), rtol=1e-5)


def test_style_loss_of_image_against_itself_is_zero_and_positive_otherwise():
    f = _feats(2)
    assert float(losses.style_layer_loss(losses.gram(f, normalize=True), f)) == 0.0
    assert float(losses.style_layer_loss(losses.gram(_feats(3), normalize=True), f)) > 0.0


def test_style_loss_equals_paper_formula_for_equal_sizes():
    a, x = _feats(4), _feats(5)
    n, m = 4, 35
    A = np.asarray(losses.gram(a))[0].astype(np.float64)
    G = np.asarray(losses.gram(x))[0].astype(np.float64)
    paper = ((A - G) ** 2).sum() / (4 * n**2 * m**2)  # report eq. 3
    np.testing.assert_allclose(losses.style_layer_loss(losses.gram(a, normalize=True), x), paper, rtol=1e-5)


def test_content_loss_closed_form():
    p, x = _feats(6), _feats(7)
    np.testing.assert_allclose(losses.content_loss(p, x), 0.5 * np.sum((np.asarray(p) - np.asarray(x)) ** 2),
                               rtol=1e-5)


def test_gradients_check_grads():
    p, x = _feats(8, (1, 3, 4, 3)), _feats(9, (1, 3, 4, 3))
    target = losses.gram(_feats(10, (1, 5, 2, 3)), normalize=True)
    check_grads(lambda x: losses.content_loss(p, x), (x,), order=2, modes=("rev",), eps=1e-2, atol=1e-2, rtol=1e-2)
    check_grads(lambda x: losses.style_layer_loss(target, x), (x,), order=2, modes=("rev",), eps=1e-2,
                atol=1e-2, rtol=1e-2)
    check_grads(losses.tv_loss, (x,), order=1, modes=("rev",), eps=1e-2, atol=1e-2, rtol=1e-2)
    mask = jax.random.uniform(jax.random.key(11), (3, 4))
    check_grads(lambda x: jnp.sum(losses.masked_gram(x, mask) ** 2), (x,), order=1, modes=("rev",),
                eps=1e-2, atol=1e-2, rtol=1e-2)


def test_tv_loss_closed_form():
    img = jnp.arange(12.0).reshape(1, 2, 2, 3)
    # vertical neighbours differ by 6 (3 channels x 2 columns), horizontal by 3 (3 channels x 2 rows)
    assert float(losses.tv_loss(img)) == 6 * 36 + 6 * 9


def test_masked_gram_full_mask_is_normalized_gram_and_empty_is_zero():
    f = _feats(12)
    np.testing.assert_allclose(losses.masked_gram(f, jnp.ones((5, 7))), losses.gram(f, normalize=True), rtol=1e-5)
    assert float(jnp.abs(losses.masked_gram(f, jnp.zeros((5, 7)))).max()) == 0.0


def test_mean_std_and_adain_closed_form():
    x, y = _feats(13, (2, 6, 5, 3)) * 2 + 1, _feats(14, (2, 4, 4, 3)) * 0.5 - 2
    mean, std = losses.mean_std(x)
    xn = np.asarray(x, np.float64).reshape(2, 30, 3)
    np.testing.assert_allclose(mean.reshape(2, 3), xn.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std.reshape(2, 3), np.sqrt(xn.var(1, ddof=1) + 1e-5), rtol=1e-5)
    out = losses.adain(x, y)
    m_out, s_out = losses.mean_std(out)
    m_y, s_y = losses.mean_std(y)
    np.testing.assert_allclose(m_out, m_y, atol=1e-5)
    np.testing.assert_allclose(s_out, s_y, rtol=1e-3)
