"""Gatys et al. (2016): losses against PyTorch, optimizers, the host driver and the CLI."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from nst_jax import driver, gatys, vgg
from nst_jax.errors import ConfigError, NonFiniteLossError
from nst_jax.cli import gatys as gatys_cli

CONFIG = gatys.GatysConfig()


def _targets(params, ref, config=CONFIG):
    return gatys.compute_targets(params, jnp.asarray(ref["content"]), jnp.asarray(ref["style"]), config)


def test_losses_match_pytorch(narrow_vgg19, gatys_reference):
    ref = gatys_reference
    terms = gatys.loss_terms(jnp.asarray(ref["image"]), narrow_vgg19, _targets(narrow_vgg19, ref),
                             gatys.loss_weights(CONFIG), CONFIG)
    np.testing.assert_allclose(terms["content"], ref["content_loss"], rtol=2e-5)
    np.testing.assert_allclose(terms["style"], ref["style_loss"], rtol=2e-5)
    np.testing.assert_allclose(terms["total"], ref["total"], rtol=2e-5)


def test_gradient_matches_pytorch(narrow_vgg19, gatys_reference):
    ref = gatys_reference
    grad = jax.grad(gatys.objective)(jnp.asarray(ref["image"]), narrow_vgg19, _targets(narrow_vgg19, ref),
                                     gatys.loss_weights(CONFIG), CONFIG)
    np.testing.assert_allclose(grad, ref["grad"], rtol=1e-4, atol=1e-5 * np.abs(ref["grad"]).max())


def test_objective_check_grads(narrow_vgg19, gatys_reference):
    config = gatys.GatysConfig(content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"))
    content = jnp.asarray(gatys_reference["content"])[:, :8, :8]
    style = jnp.asarray(gatys_reference["style"])[:, :10, :12]
    targets = gatys.compute_targets(narrow_vgg19, content, style, config)
    weights = gatys.loss_weights(config, tv=1e-3)
    x = jnp.asarray(gatys_reference["image"])[:, :8, :8]
    jax.config.update("jax_enable_x64", True)
    try:
        params64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), narrow_vgg19)
        check_grads(lambda y: gatys.objective(y, params64, targets, weights, config),
                    (x.astype(jnp.float64),), order=1, modes=("rev",), eps=1e-4, atol=1e-3, rtol=1e-3)
    finally:
        jax.config.update("jax_enable_x64", False)


def test_style_loss_of_style_image_against_itself_is_zero(narrow_vgg19, gatys_reference):
    style = jnp.asarray(gatys_reference["style"])
    targets = gatys.compute_targets(narrow_vgg19, style, style, CONFIG)
    terms = gatys.loss_terms(style, narrow_vgg19, targets, gatys.loss_weights(CONFIG), CONFIG)
    assert float(terms["style"]) < 1e-10 and float(terms["content"]) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["lbfgs", "optax-lbfgs"])
def test_lbfgs_no_worse_than_pytorch_and_decreasing(narrow_vgg19, gatys_reference, optimizer):
    """A held-out pair, same weights and init: our L-BFGS after 20 iterations vs torch.optim.LBFGS."""
    ref = gatys_reference
    content, style = jnp.asarray(ref["lbfgs_content"]), jnp.asarray(ref["lbfgs_style"])
    config = gatys.GatysConfig(iterations=20, optimizer=optimizer, init="image")
    result = gatys.run(narrow_vgg19, content, style, config, init=content + jnp.asarray(ref["lbfgs_noise"]),
                       chunk=20)
    torch_curve = ref["lbfgs_torch_default"]
    np.testing.assert_allclose(result.losses[0], torch_curve[0], rtol=1e-5)  # same start
    assert len(result.losses) == 21
    assert np.all(np.diff(result.losses) <= 1e-6 * result.losses[0]), "L-BFGS with line search must not increase"
    assert result.losses[-1] <= torch_curve[-1] * (1 + 1e-4), (result.losses[-1], torch_curve[-1])


@pytest.fixture(scope="module")
def tiny(narrow_vgg19, gatys_reference):
    content = jnp.asarray(gatys_reference["content"])[:, :32, :32]
    style = jnp.asarray(gatys_reference["style"])[:, :32, :40]
    return narrow_vgg19, content, style


def test_stylize_equals_chunked_run(tiny):
    params, content, style = tiny
    config = gatys.GatysConfig(iterations=7, optimizer="adam", learning_rate=0.05)
    pure = jax.jit(gatys.stylize, static_argnames="config")(params, content, style, config=config)
    driven = gatys.run(params, content, style, config, chunk=3)  # chunks 3, 3, 1
    np.testing.assert_allclose(np.asarray(pure.image[0]), driven.image, atol=1e-5)
    np.testing.assert_allclose(np.asarray(pure.losses), driven.losses, rtol=1e-5)
    assert [n for n, _ in driven.chunk_seconds] == [3, 3, 1]


@pytest.mark.parametrize("optimizer", ["adam", "optax-lbfgs"])
def test_iterations_do_not_recompile(tiny, monkeypatch, optimizer):
    params, content, style = tiny
    traces = []
    original = gatys.loss_terms

    def counting(*args, **kwargs):
        traces.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(gatys, "loss_terms", counting)
    driver.clear_programs()
    after_chunk = []
    config = gatys.GatysConfig(iterations=5, optimizer=optimizer)
    gatys.run(params, content, style, config, chunk=2, callback=lambda p, _: after_chunk.append(len(traces)))
    assert after_chunk[0] > 0
    assert after_chunk == [after_chunk[0]] * 3, "later chunks (the last one shorter) must not retrace"
    first = len(traces)  # chunks, plus the final loss terms
    gatys.run(params, content, style, gatys.GatysConfig(iterations=9, optimizer=optimizer), chunk=2,
              key=jax.random.key(3))
    assert len(traces) == first, "a second run with more iterations must reuse the compiled program"


def test_interrupt_returns_current_image(tiny):
    params, content, style = tiny
    seen = []

    def callback(progress, get_image):
        seen.append(progress.iteration)
        if progress.iteration >= 2:
            raise KeyboardInterrupt

    config = gatys.GatysConfig(iterations=10, optimizer="adam")
    result = gatys.run(params, content, style, config, chunk=2, callback=callback)
    assert result.interrupted and result.iterations == 2 and seen == [2]
    assert result.image.shape == (32, 32, 3) and len(result.losses) == 3


def test_non_finite_loss_names_the_window(tiny):
    params, content, style = tiny
    config = gatys.GatysConfig(iterations=6, optimizer="adam", learning_rate=1e38)
    with pytest.raises(NonFiniteLossError, match=r"between iteration \d+ and \d+") as info:
        gatys.run(params, content, style, config, chunk=2)
    assert np.all(np.isfinite(info.value.image))


def test_init_modes(tiny):
    params, content, style = tiny
    key = jax.random.key(0)
    noisy = gatys.initial_image(content, gatys.GatysConfig(init_noise=0.1), key)
    assert 0.08 < float(jnp.std(noisy - content)) < 0.12
    noise = gatys.initial_image(content, gatys.GatysConfig(init="noise"), key)
    assert float(jnp.abs(noise - content).mean()) > 0.1
    given = gatys.initial_image(content, gatys.GatysConfig(init="image"), key, image=style[:, :32, :32])
    np.testing.assert_array_equal(given, style[:, :32, :32])
    same = gatys.initial_image(content, gatys.GatysConfig(), jax.random.key(0))
    np.testing.assert_array_equal(noisy, same)  # seeded


def test_config_validation_messages():
    with pytest.raises(ConfigError, match='did you mean "lbfgs"'):
        gatys.GatysConfig(optimizer="lbgfs")
    with pytest.raises(ConfigError, match="relu4_2"):
        gatys.GatysConfig(content_layers=("relu4_20",))
    with pytest.raises(ConfigError, match="one per layer"):
        gatys.loss_weights(CONFIG, style_layers=[1.0, 2.0])
    with pytest.raises(ConfigError, match="--content-weight"):
        gatys.loss_weights(CONFIG, content=float("nan"))


# ------------------------------------------------------------------------------------------
# CLI, in process, on tiny images with the narrow weights.

WEIGHTS = str(__import__("pathlib").Path(__file__).parent / "fixtures" / "gatys" / "vgg19_narrow.pth")


def test_cli_runs_and_writes_metrics(tmp_path, capsys):
    out, metrics = tmp_path / "out.png", tmp_path / "m.json"
    code = gatys_cli.main(["--weights", WEIGHTS, "--size", "40", "--iterations", "4", "--optimizer", "adam",
                       "--output", str(out), "--metrics-json", str(metrics), "--save-every", "2", "--chunk", "2",
                       "--no-progress", "--seed", "1"])
    assert code == 0
    from PIL import Image

    with Image.open(out) as im:
        assert im.size[1] == 40
    assert (tmp_path / "out_iter00002.png").exists()
    m = json.loads(metrics.read_text())
    assert m["iterations"] == 4 and len(m["losses"]) == 5
    assert m["final_loss"] == pytest.approx(
        m["config"]["content_weight"] * m["content_loss"] + m["style_loss"], rel=1e-4)
    assert m["seconds_per_iteration"] > 0
    assert m["config"]["optimizer"] == "adam" and m["config"]["seed"] == 1


def test_cli_seed_reproducible(tmp_path):
    outs = []
    for name in ("a.png", "b.png"):
        assert gatys_cli.main(["--weights", WEIGHTS, "--size", "32", "--iterations", "2", "--optimizer", "adam",
                           "--chunk", "2", "--output", str(tmp_path / name), "--no-progress"]) == 0
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1]


def test_cli_interrupt_saves_image(tmp_path, monkeypatch):
    real_run = gatys.run

    def interrupted_run(*args, callback=None, **kwargs):
        def stop(progress, get_image):
            callback(progress, get_image)
            raise KeyboardInterrupt

        return real_run(*args, callback=stop, **kwargs)

    monkeypatch.setattr(gatys, "run", interrupted_run)
    out = tmp_path / "out.png"
    code = gatys_cli.main(["--weights", WEIGHTS, "--size", "32", "--iterations", "6", "--optimizer", "adam",
                       "--chunk", "2", "--output", str(out), "--no-progress"])
    assert code == 130 and out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--optimizer", "sgd"], "invalid choice"),
    (["--content-layers", "relu4_20"], 'did you mean "relu4_2"'),
    (["--content", "does-not-exist.jpg"], "not found"),
    (["--size", "-3"], "--size must be > 0"),
    (["--size", "8"], "at least 32 px"),
    (["--style-layer-weights", "1,2"], "one per layer"),
    (["--init", "image"], "--init-image"),
    (["--max-memory", "0.000001"], "GiB"),
])
def test_cli_bad_input_exit_2(tmp_path, capsys, argv, message):
    code = gatys_cli.main(["--weights", WEIGHTS, "--iterations", "1", "--size", "40", "--no-progress",
                       "--output", str(tmp_path / "o.png"), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert err.strip().count("\n") == 0 or err.startswith("usage")
    assert not (tmp_path / "o.png").exists()


def test_cli_save_every_below_chunk_writes_every_snapshot(tmp_path):
    """--save-every 2 with the default --chunk 10: a snapshot at every second iteration (issue 16.1)."""
    out = tmp_path / "se.png"
    assert gatys_cli.main(["--weights", WEIGHTS, "--size", "32", "--iterations", "7", "--optimizer", "adam",
                       "--save-every", "2", "--output", str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "se.png", "se_iter00002.png", "se_iter00004.png", "se_iter00006.png"]
