"""AdaIN decoder training: parity with PyTorch, data parallelism, checkpoints, resume, failures, plots.

The golden values come from scripts/make_train_fixtures.py (naoto0804/pytorch-AdaIN semantics on
narrow networks). All in-process runs share one configuration (batch 2, 32 px crops, the default
optimizer and loss norm), so the train step is compiled once for the whole module.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from nst_jax import plot, train, weights
from nst_jax.errors import ConfigError, DeviceCountError, NonFiniteLossError, OutputPathError

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "train"


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURES / "reference.npz") as f:
        return {k: f[k] for k in f.files}


def _tree(ref, prefix):
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, value in ref.items():
        if key.startswith(prefix + "/"):
            layer, leaf = key[len(prefix) + 1:].split("/")
            out.setdefault(layer, {})[leaf] = value
    return out


@pytest.fixture(scope="module")
def image_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:48] / 48
    for which, n in (("content", 6), ("style", 4)):
        (root / which).mkdir()
        for i in range(n):
            smooth = 127 + 100 * np.sin(2 * np.pi * (xx * (i + 1) + yy * (3 - i % 3)))[..., None]
            img = np.clip(smooth + rng.normal(0, 30, (48, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img[: 36 + 2 * i]).save(root / which / f"{which}{i}.{'png' if i % 2 else 'jpg'}")
    return root / "content", root / "style"


def _config(image_dirs, **overrides) -> train.TrainConfig:
    settings = dict(content_dir=str(image_dirs[0]), style_dir=str(image_dirs[1]), steps=4, batch_size=2,
                    load_size=36, crop=32, log_every=1, checkpoint_every=2, keep=10, num_workers=0)
    settings.update(overrides)
    return train.TrainConfig(**settings)


def _steps_on_disk(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _one_step_inputs(ref):
    """The state train() would create, with the fixture's decoder; the fixture batch; hyper-parameters."""
    config = train.TrainConfig(content_dir="unused", style_dir="unused")  # default optimizer and loss
    spec = train.OptimizerSpec.from_config(config)
    mesh = train.make_mesh()
    state, _ = train.create_state(jax.random.key(0), train.encoder_widths(_tree(ref, "enc")), spec, mesh)
    # Inputs placed as train() places them, so every test reuses one compiled step.
    state = state._replace(params=train.replicate(_tree(ref, "dec"), mesh))
    batch = train.shard_batch({"content": ref["content"], "style": ref["style"]}, mesh)
    return (spec, state, batch, train.replicate(_tree(ref, "enc"), mesh),
            train.replicate(train.Hyper.from_config(config), mesh))


def _max_abs_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ------------------------------------------------------------------------------------------------
# Parity with PyTorch


def test_train_step_matches_torch(ref):
    """Two steps of the jitted, donated train step equal two torch.optim.Adam steps of pytorch-AdaIN."""
    spec, state, batch, enc, hyper = _one_step_inputs(ref)
    step = train.compiled_train_step(spec, "lua", train.make_mesh())
    state, m = step(state, batch, enc, hyper)
    torch_grads = _tree(ref, "lua/grad")
    assert float(m["loss"]) == pytest.approx(float(ref["lua/total"]), rel=1e-5)
    assert float(m["content_loss"]) == pytest.approx(float(ref["lua/lc"]), rel=1e-5)
    assert float(m["style_loss"]) == pytest.approx(float(ref["lua/ls"]), rel=1e-5)
    torch_norm = math.sqrt(sum(float(np.sum(g**2)) for g in jax.tree.leaves(torch_grads)))
    assert float(m["grad_norm"]) == pytest.approx(torch_norm, rel=1e-4)
    assert float(m["lr"]) == pytest.approx(1e-4) and bool(m["finite"])
    assert int(state.step) == 1
    # One Adam step moves each weight by ~lr; 1e-6 would expose a wrong sign or learning rate.
    assert _max_abs_diff(state.params, _tree(ref, "adam1")) < 1e-6
    state, _ = step(state, batch, enc, hyper)  # the second step depends on beta1 and beta2
    assert _max_abs_diff(state.params, _tree(ref, "adam2")) < 1e-6


def test_loss_terms_match_torch_for_every_norm(ref):
    """Lc, Ls, L and dL/d(output features) of the "lua", "mse" and "l2" reductions.

    The reductions differ only in :func:`train.adain_loss_terms`; the chain rule through decoder and
    encoder is the network checked end to end (default reduction) by test_train_step_matches_torch.
    """
    layers = train.STYLE_LAYERS
    out = {layer: ref[f"heads/out/{layer}"] for layer in layers}
    style = {layer: ref[f"heads/style/{layer}"] for layer in layers}

    @jax.jit
    def all_norms(out, t, style):
        results = {}
        for norm in train.LOSS_NORMS:
            def total(o, norm=norm):
                lc, ls = train.adain_loss_terms(o, t, style, norm)
                return lc + ref[f"heads/{norm}/style_weight"] * ls, (lc, ls)
            results[norm] = jax.value_and_grad(total, has_aux=True)(out)
        return results

    for norm, ((total, (lc, ls)), grads) in all_norms(out, ref["heads/t"], style).items():
        assert float(lc) == pytest.approx(float(ref[f"heads/{norm}/lc"]), rel=1e-5), norm
        assert float(ls) == pytest.approx(float(ref[f"heads/{norm}/ls"]), rel=1e-5), norm
        assert float(total) == pytest.approx(float(ref[f"heads/{norm}/total"]), rel=1e-5), norm
        for layer in layers:
            expected = ref[f"heads/{norm}/grad/{layer}"]
            np.testing.assert_allclose(np.asarray(grads[layer]), expected, rtol=1e-4,
                                       atol=1e-5 * np.abs(expected).max(), err_msg=f"{norm} {layer}")


def test_euclidean_norm_has_a_zero_gradient_at_a_perfect_match():
    # ‖x‖ has no derivative at 0; optax.safe_norm makes the "l2" loss give 0 there, not NaN.
    a = jnp.asarray(np.random.default_rng(1).normal(size=(3, 1, 1, 7)), jnp.float32)
    g = jax.jit(jax.grad(lambda x: train.statistic_term(x, a, "l2") + train.content_term(x, a, "l2")))(a)
    assert np.all(np.asarray(g) == 0)


# ------------------------------------------------------------------------------------------------
# Schedules and configuration


def test_learning_rate_schedules():
    base = train.TrainConfig(content_dir="c", style_dir="s")
    inverse = train.OptimizerSpec.from_config(dataclasses.replace(base, lr_schedule="inverse"))
    for t in (0, 1, 1000, 160_000):  # the official lr / (1 + 5e-5 t)
        assert float(train.schedule_factor(inverse, jnp.asarray(t))) == pytest.approx(1 / (1 + 5e-5 * t), rel=1e-6)
    constant = train.OptimizerSpec.from_config(dataclasses.replace(base, lr_schedule="constant"))
    assert float(train.schedule_factor(constant, jnp.asarray(10**6))) == 1.0

    plateau = train.OptimizerSpec(b1=0.9, b2=0.9, schedule="plateau", decay=0.0, plateau_factor=0.5,
                                  plateau_patience=1, plateau_window=2)
    hyper = train.Hyper(jnp.asarray(1e-3), jnp.asarray(0.1))
    params = {"w": jnp.ones(3)}
    tx = train.make_optimizer(plateau)

    @jax.jit
    def update(state, k, loss):
        _, state = tx.update({"w": jnp.ones(3)}, state, params, value=loss)
        return state, train.current_lr(plateau, hyper, k, state)

    def lrs(losses):
        state, out = tx.init(params), []
        for k, loss in enumerate(losses):
            state, lr = update(state, jnp.asarray(k), jnp.asarray(loss))
            out.append(float(lr))
        return out

    assert lrs([5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.2, 0.1]) == pytest.approx([1e-3] * 8)  # improving: no change
    flat = lrs([1.0] * 8)  # no improvement: halved after each window without progress (patience 1)
    assert flat[:3] == pytest.approx([1e-3] * 3) and flat[-1] < 2e-4
    halvings = np.log2(1e-3 / np.asarray(flat))
    assert np.allclose(halvings, np.round(halvings), atol=1e-5) and (np.diff(halvings) >= 0).all()


@pytest.mark.parametrize("overrides, message", [
    ({"content_dir": None}, "no content images; pass --content-dir FOLDER or --content-tfds NAME"),
    ({"style_tfds": "wikiart"}, "both --style-dir and --style-tfds given"),
    ({"crop": 8}, "--crop must be >= 16"),
    ({"load_size": 20}, "--load-size must be 0 or >= --crop"),
    ({"loss_norm": "mes"}, 'unknown loss norm "mes" for --loss-norm (did you mean "mse"?)'),
    ({"lr_schedule": "cosine"}, "valid choices: plateau, inverse, constant"),
    ({"lr": 0.0}, "--lr must be > 0"),
    ({"adam_b2": 1.0}, "--adam-b2 must be in [0, 1)"),
    ({"style_weight": float("nan")}, "--style-weight must be a finite number"),
    ({"batch_size": 0}, "--batch-size must be an integer >= 1"),
])
def test_config_errors_name_the_flag(overrides, message):
    settings = dict(content_dir="c", style_dir="s")
    settings.update(overrides)
    with pytest.raises(ConfigError) as err:
        train.check_config(train.TrainConfig(**settings))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_default_style_weight_follows_the_norm():
    assert train.TrainConfig().effective_style_weight == 0.1  # report: λ = 0.1 with the official reduction
    assert train.TrainConfig(loss_norm="mse").effective_style_weight == 10.0  # pytorch-AdaIN default
    assert train.TrainConfig(loss_norm="mse", style_weight=2.5).effective_style_weight == 2.5


def test_batch_must_split_over_devices():
    assert train.check_batch_split(8, 2) == 4
    assert train.check_batch_split(8, 1) == 8
    with pytest.raises(DeviceCountError, match=r"--batch-size 3 does not split evenly over 2 devices; use a "
                                               r"multiple of 2 \(e.g. 2 or 4\)"):
        train.check_batch_split(3, 2)
    with pytest.raises(DeviceCountError, match="over 4 processes"):
        train.check_batch_split(6, 2, 4)


# ------------------------------------------------------------------------------------------------
# Data parallelism on two (fake CPU) devices

_TWO_DEVICE_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    sys.path.insert(0, {root!r})
    from nst_jax import train
    from nst_jax.errors import DeviceCountError

    assert jax.device_count() == 2, jax.devices()
    with np.load({fixture!r}) as f:
        ref = {{k: f[k] for k in f.files}}
    def tree(prefix):
        out = {{}}
        for key, value in ref.items():
            if key.startswith(prefix + "/"):
                layer, leaf = key[len(prefix) + 1:].split("/")
                out.setdefault(layer, {{}})[leaf] = value
        return out
    config = train.TrainConfig(content_dir="unused", style_dir="unused")
    spec = train.OptimizerSpec.from_config(config)
    mesh = train.make_mesh()
    state, _ = train.create_state(jax.random.key(0), train.encoder_widths(tree("enc")), spec, mesh)
    state = state._replace(params=train.replicate(tree("dec"), mesh))
    step = train.compiled_train_step(spec, "lua", mesh)
    batch = train.shard_batch({{"content": ref["content"], "style": ref["style"]}}, mesh)
    assert len(batch["content"].sharding.device_set) == 2
    state, metrics = step(state, batch, train.replicate(tree("enc"), mesh),
                          train.replicate(train.Hyper.from_config(config), mesh))
    leaf = jax.tree.leaves(state.params)[0]
    assert len(leaf.sharding.device_set) == 2 and leaf.sharding.is_fully_replicated
    flat = {{f"{{l}}/{{k}}": np.asarray(v) for l, d in state.params.items() for k, v in d.items()}}
    np.savez({out!r}, loss=np.asarray(metrics["loss"]), grad_norm=np.asarray(metrics["grad_norm"]), **flat)

    bad = train.TrainConfig(content_dir="unused", style_dir="unused", batch_size=3)
    try:
        train.train(bad, {workdir!r}, encoder_params=tree("enc"))
    except DeviceCountError as err:
        print("LIBRARY:", err)
    sys.path.insert(0, {scripts!r})
    import train_decoder
    rc = train_decoder.main(["--content-dir", "unused", "--style-dir", "unused", "--workdir", {workdir!r},
                             "--batch-size", "3"])
    print("CLI RC:", rc)
""")


def _device_env(tmp_path_factory) -> dict[str, str]:
    """Environment for a subprocess on two fake CPU devices.

    Kept identical to ``two_device_env`` in test_train_cli.py, whose CLI runs compile the same
    two-device step: with a shared persistent compilation cache only the first process compiles it.
    Optimization level 0 halves XLA's compile time; these tiny networks do not need fast code.
    """
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join([env.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=2",
                                 "--xla_backend_optimization_level=0"]).strip()
    env["PYTHONPATH"] = str(ROOT)
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "jax-cache-2dev")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return env


def test_two_devices_compute_the_same_step_as_one(ref, tmp_path, tmp_path_factory):
    out = tmp_path / "two.npz"
    script = _TWO_DEVICE_SCRIPT.format(root=str(ROOT), fixture=str(FIXTURES / "reference.npz"), out=str(out),
                                       workdir=str(tmp_path / "w"), scripts=str(ROOT / "scripts"))
    proc = subprocess.run([sys.executable, "-c", script], env=_device_env(tmp_path_factory), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    spec, state, batch, enc, hyper = _one_step_inputs(ref)
    state, metrics = train.compiled_train_step(spec, "lua", train.make_mesh())(state, batch, enc, hyper)
    with np.load(out) as two:
        assert float(two["loss"]) == pytest.approx(float(metrics["loss"]), rel=1e-5)
        assert float(two["grad_norm"]) == pytest.approx(float(metrics["grad_norm"]), rel=1e-5)
        for layer, leaves in state.params.items():
            for leaf, value in leaves.items():
                np.testing.assert_allclose(two[f"{layer}/{leaf}"], np.asarray(value), atol=1e-5, rtol=0)
    assert "LIBRARY: --batch-size 3 does not split evenly over 2 devices" in proc.stdout
    assert "CLI RC: 2" in proc.stdout
    assert "error: --batch-size 3 does not split evenly over 2 devices; use a multiple of 2" in proc.stderr


# ------------------------------------------------------------------------------------------------
# train(): workdir, checkpoints, resume, failures


def test_resumed_run_takes_exactly_the_uninterrupted_steps(image_dirs, ref, tmp_path):
    """Save at step 2, restore, run step 3: bit-identical to running steps 1-3 in one go."""
    enc = _tree(ref, "enc")
    straight = train.train(_config(image_dirs, steps=3), tmp_path / "a", encoder_params=enc)
    train.train(_config(image_dirs, steps=2), tmp_path / "b", encoder_params=enc)
    resumed = train.train(_config(image_dirs, steps=3), tmp_path / "b", encoder_params=enc)
    assert (resumed.start_step, resumed.step) == (2, 3)
    for a, b in zip(jax.tree.leaves(straight.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [r["loss"] for r in resumed.records] == [r["loss"] for r in straight.records if r["step"] == 3]


def test_resume_continues_the_step_count(image_dirs, ref, tmp_path):
    enc = _tree(ref, "enc")
    first = train.train(_config(image_dirs, steps=4), tmp_path, encoder_params=enc)
    assert [r["step"] for r in first.records] == [1, 2, 3, 4]
    assert _steps_on_disk(tmp_path) == [2, 4]
    second = train.train(_config(image_dirs, steps=6), tmp_path, encoder_params=enc)
    assert (second.start_step, second.step) == (4, 6)
    assert [r["step"] for r in second.records] == [5, 6]
    assert [r["step"] for r in train.read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]
    assert set(train.read_metrics(tmp_path)[0]) >= {"step", "loss", "content_loss", "style_loss", "lr",
                                                     "images_per_sec"}
    assert _steps_on_disk(tmp_path) == [2, 4, 6]

    config = json.loads((tmp_path / "config.json").read_text())
    assert config["steps"] == 6 and config["batch_size"] == 2 and config["loss_norm"] == "lua"
    assert config["num_devices"] == jax.device_count() and config["jax_version"] == jax.__version__
    assert config["resumed_from_step"] == 4 and config["style_weight_used"] == 0.1

    with Image.open(tmp_path / "loss_curve.png") as png:
        assert png.format == "PNG" and png.size == (800, 480)

    decoder = weights.load_adain_decoder(tmp_path / "decoder.npz")
    assert _max_abs_diff(decoder, second.state.params) == 0
    exported = train.export_decoder(tmp_path, tmp_path / "exported.npz", step=4)
    assert _max_abs_diff(weights.load_adain_decoder(exported), decoder) > 0  # step 4 differs from step 6

    # A run that logged steps 5-6 but died before checkpointing them resumes at 4 without duplicates.
    shutil.rmtree(tmp_path / "checkpoints" / "6")
    third = train.train(_config(image_dirs, steps=6), tmp_path, encoder_params=enc)
    assert third.start_step == 4
    assert [r["step"] for r in train.read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]
    # Asking for fewer steps than done trains nothing.
    done = train.train(_config(image_dirs, steps=5), tmp_path, encoder_params=enc)
    assert (done.start_step, done.step, done.records) == (6, 6, [])


def test_corrupt_latest_checkpoint_is_skipped_with_a_warning(image_dirs, ref, tmp_path, caplog):
    enc = _tree(ref, "enc")
    train.train(_config(image_dirs, steps=4), tmp_path, encoder_params=enc)
    for f in (tmp_path / "checkpoints" / "4").rglob("*"):
        if f.is_file():
            f.write_bytes(b"\x00garbage")
    with caplog.at_level(logging.WARNING, logger="nst_jax.train"):
        result = train.train(_config(image_dirs, steps=5), tmp_path, encoder_params=enc)
    assert result.start_step == 2 and result.step == 5
    assert len(result.warnings) == 1 and "checkpoint at step 4 is unreadable" in result.warnings[0]
    assert "resumed from step 2" in caplog.text
    assert (tmp_path / "corrupt_checkpoints" / "4").is_dir()
    assert _steps_on_disk(tmp_path) == [2, 4, 5]
    assert [r["step"] for r in train.read_metrics(tmp_path)] == [1, 2, 3, 4, 5]

    for step in _steps_on_disk(tmp_path):  # nothing restorable: refuse rather than start over
        shutil.rmtree(tmp_path / "checkpoints" / str(step) / "default")
    with pytest.raises(ConfigError, match="no checkpoint in .* can be restored .*use a new --workdir"):
        train.train(_config(image_dirs, steps=6), tmp_path, encoder_params=enc)


def test_relative_workdir_and_image_folders_checkpoint_and_resume(image_dirs, ref, tmp_path, monkeypatch):
    """The README's ``--workdir runs/adain``: orbax takes only absolute paths, so train() resolves them."""
    enc = _tree(ref, "enc")
    monkeypatch.chdir(tmp_path)
    content = os.path.relpath(image_dirs[0], tmp_path)
    config = _config(image_dirs, content_dir=content, steps=2, checkpoint_every=1)
    first = train.train(config, Path("runs") / "adain", encoder_params=enc)
    assert first.step == 2 and _steps_on_disk(tmp_path / "runs" / "adain") == [1, 2]
    recorded = json.loads((tmp_path / "runs" / "adain" / "config.json").read_text())
    assert recorded["content_dir"] == str(image_dirs[0])  # made absolute
    second = train.train(dataclasses.replace(config, steps=3), "runs/adain", encoder_params=enc)
    assert (second.start_step, second.step) == (2, 3)
    exported = train.export_decoder("runs/adain", "decoder-3.npz")
    assert _max_abs_diff(weights.load_adain_decoder(exported), second.state.params) == 0


def _empty_files(step_dir: Path, only_data: bool = False) -> None:
    for f in step_dir.rglob("*"):
        # Only the array data files the OCDBT manifest points to: orbax then wraps tensorstore's
        # error in a bare Exception, and its abandoned reads report "Event loop is closed".
        if f.is_file() and (not only_data or f.parent.parent.name.startswith("ocdbt.process")):
            f.write_bytes(b"")


@pytest.mark.parametrize("damage", ["empty files", "empty data files", "empty folder"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(image_dirs, ref, tmp_path, caplog, monkeypatch,
                                                                  damage):
    enc = _tree(ref, "enc")
    train.train(_config(image_dirs, steps=4), tmp_path, encoder_params=enc)
    latest = tmp_path / "checkpoints" / "4"
    if damage == "empty folder":
        shutil.rmtree(latest)
        latest.mkdir()
    else:  # all files truncated to 0 bytes, or only the array data (orbax wraps that error in Exception)
        _empty_files(latest, only_data=damage == "empty data files")
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with caplog.at_level(logging.WARNING, logger="nst_jax.train"):
        result = train.train(_config(image_dirs, steps=5), tmp_path, encoder_params=enc)
    monkeypatch.undo()
    assert (result.start_step, result.step) == (2, 5)
    assert len(result.warnings) == 1 and "checkpoint at step 4 is unreadable" in result.warnings[0]
    assert "resumed from step 2" in caplog.text
    assert (tmp_path / "corrupt_checkpoints" / "4").is_dir() and _steps_on_disk(tmp_path) == [2, 4, 5]
    assert [r["step"] for r in train.read_metrics(tmp_path)] == [1, 2, 3, 4, 5]
    # A handled damage prints no tracebacks (the reports of orbax's abandoned reads are dropped).
    assert not unraisable


def test_damaged_metrics_log_is_kept_aside_and_training_resumes(image_dirs, ref, tmp_path):
    """A metrics.jsonl with non-UTF-8 and non-record lines: the run resumes (the checkpoint holds the
    state; the log is the trainer's own), and the damaged file is kept unchanged beside it."""
    enc = _tree(ref, "enc")
    train.train(_config(image_dirs, steps=2), tmp_path, encoder_params=enc)
    path = tmp_path / "metrics.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    damaged = lines[0] + b"\xff\xfe not utf-8\n" + b'[1, 2]\n{"step": "3", "content_loss": 1}\n' + lines[1]
    path.write_bytes(damaged)
    result = train.train(_config(image_dirs, steps=3), tmp_path, encoder_params=enc)
    assert (result.start_step, result.step) == (2, 3)
    assert len(result.warnings) == 1
    assert re.search(r"had 3 damaged line\(s\) .*kept it as .*metrics\.jsonl\.damaged", result.warnings[0])
    assert (tmp_path / "metrics.jsonl.damaged").read_bytes() == damaged
    assert [r["step"] for r in train.read_metrics(tmp_path)] == [1, 2, 3]
    # A torn last line (a run killed mid-write) is not damage: dropped without a copy.
    with open(path, "ab") as f:
        f.write(b'{"step": 4, "los')
    assert train._trim_metrics(tmp_path, 3) == (train.read_metrics(tmp_path), None)
    assert not (tmp_path / "metrics.jsonl.damaged.1").exists()


@pytest.mark.parametrize("entry, make", [("checkpoints", "file"), ("corrupt_checkpoints", "file"),
                                         ("metrics.jsonl", "dir")])
def test_workdir_entry_of_the_wrong_kind_is_refused(image_dirs, ref, tmp_path, entry, make):
    (tmp_path / entry).mkdir() if make == "dir" else (tmp_path / entry).write_text("mine")
    kind = "folder" if make == "file" else "regular file"
    with pytest.raises(OutputPathError, match=f"{re.escape(str(tmp_path / entry))} is not a {kind}, .*move it"):
        train.train(_config(image_dirs), tmp_path, encoder_params=_tree(ref, "enc"))
    assert make == "dir" or (tmp_path / entry).read_text() == "mine"


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(image_dirs, ref, tmp_path):
    enc = _tree(ref, "enc")
    train.train(_config(image_dirs, steps=4), tmp_path, encoder_params=enc)
    # An absurd learning rate (resuming may change it: it is not part of the compiled step) makes the
    # parameters explode, and a later forward pass overflows.
    with pytest.raises(NonFiniteLossError) as err:
        train.train(_config(image_dirs, steps=40, lr=1e30, checkpoint_every=1, log_every=3), tmp_path,
                    encoder_params=enc)
    message = str(err.value)
    match = re.fullmatch(r"loss became (nan|inf) between step (\d+) and (\d+) \(first at step (\d+)\); "
                         r"last good checkpoint: step (\d+); lower --lr or --style-weight .*", message)
    assert match, message
    lo, hi, first_bad, good = map(int, match.groups()[1:])
    assert lo < first_bad <= hi and good < first_bad
    assert _steps_on_disk(tmp_path)[-1] == good  # nothing after the failure was saved
    params = weights.load_adain_decoder(train.export_decoder(tmp_path, tmp_path / "good.npz"))
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


# ------------------------------------------------------------------------------------------------
# Loss curve


def test_loss_curve_png_draws_each_series():
    steps = list(range(0, 500, 10))
    img = plot.line_plot({"content": (steps, [2.0 * math.exp(-s / 200) for s in steps]),
                          "style": (steps, [0.5 + 0 * s for s in steps])}, title="t", log_y=True)
    pixels = np.asarray(img).reshape(-1, 3)
    colours = {tuple(c) for c in pixels}
    assert plot.PALETTE[0] in colours and plot.PALETTE[1] in colours
    # The constant series is a horizontal line: all its pixels (outside the legend) share one row band.
    arr = np.asarray(img)
    rows = np.where((arr[:, :600] == plot.PALETTE[1]).all(axis=-1).any(axis=1))[0]
    assert rows.max() - rows.min() <= 3
    # Non-positive and non-finite values are left out on a log axis, never crash the plot.
    plot.line_plot({"a": ([0, 1, 2], [0.0, float("nan"), 1.0])}, log_y=True)
    empty = plot.line_plot({"a": ([], [])})
    assert len({tuple(c) for c in np.asarray(empty).reshape(-1, 3)}) > 1


def test_save_line_plot_is_atomic(tmp_path):
    path = plot.save_line_plot(tmp_path / "curve.png", {"a": ([1, 2, 3], [3.0, 2.0, 1.0])})
    assert [p.name for p in tmp_path.iterdir()] == ["curve.png"]
    with Image.open(path) as png:
        assert png.format == "PNG"


@pytest.mark.parametrize("lo, hi", [(0, 990), (0.013, 0.0171), (-3.2, 7.9), (5, 5)])
def test_nice_ticks(lo, hi):
    ticks = plot.nice_ticks(lo, hi)
    assert ticks and all(lo - 1e-9 <= t <= hi + 1e-9 for t in ticks)
    if hi > lo:
        steps = np.diff(ticks)
        assert np.allclose(steps, steps[0])
        mantissa = steps[0] / 10 ** math.floor(math.log10(steps[0]))
        assert any(math.isclose(mantissa, m) for m in (1, 2, 5, 10))
    assert plot.log_ticks(-3, 2) == pytest.approx([1e-3, 1e-2, 0.1, 1, 10, 100])
