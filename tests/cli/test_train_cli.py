"""scripts/train_decoder.py: flags, errors, and a real training process killed and resumed.

The in-process runs use the same tiny configuration as tests/test_train.py, so they share its
compiled train step when the two files run in one session.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst_jax import weights

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "train"
VGG = FIXTURES / "vgg_normalised_narrow.pth"


def _load_script():
    spec = importlib.util.spec_from_file_location("train_decoder", ROOT / "scripts" / "train_decoder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_decoder = _load_script()


@pytest.fixture(scope="module")
def image_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-images")
    rng = np.random.default_rng(1)
    for which, n in (("content", 5), ("style", 3)):
        (root / which).mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (36 + 3 * i, 44, 3), dtype=np.uint8)).save(root / which / f"{i}.png")
    return root / "content", root / "style"


def _args(image_dirs, workdir, *extra) -> list[str]:
    return ["--content-dir", str(image_dirs[0]), "--style-dir", str(image_dirs[1]), "--vgg", str(VGG),
            "--workdir", str(workdir), "--batch-size", "2", "--load-size", "36", "--crop", "32",
            "--num-workers", "0", *extra]


def two_device_env(tmp_path_factory) -> dict[str, str]:
    """Environment for a subprocess on two fake CPU devices.

    Kept identical to ``_device_env`` in test_train.py (same compiled step, shared persistent
    compilation cache: only the first process compiles it). Optimization level 0 halves XLA's
    compile time; these tiny networks do not need fast code.
    """
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join([env.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=2",
                                 "--xla_backend_optimization_level=0"]).strip()
    env["PYTHONPATH"] = str(ROOT)
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "jax-cache-2dev")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return env


def _metric_steps(workdir: Path) -> list[int]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except json.JSONDecodeError:  # a line being written right now
            pass
    return steps


def _checkpoints(workdir: Path) -> list[int]:
    root = workdir / "checkpoints"
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []


def test_cli_trains_and_writes_the_workdir(image_dirs, tmp_path, capsys):
    rc = train_decoder.main(_args(image_dirs, tmp_path, "--steps", "3", "--log-every", "1",
                                  "--checkpoint-every", "2"))
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert f"trained to step 3; decoder: {tmp_path / 'decoder.npz'}" in out
    assert "3/3" in err  # the tqdm bar
    assert {p.name for p in tmp_path.iterdir()} >= {"config.json", "metrics.jsonl", "loss_curve.png",
                                                    "checkpoints", "decoder.npz"}
    assert _metric_steps(tmp_path) == [1, 2, 3] and _checkpoints(tmp_path) == [2, 3]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["vgg"] == str(VGG) and config["lr_schedule"] == "plateau" and config["adam_b2"] == 0.9
    decoder = weights.load_adain_decoder(tmp_path / "decoder.npz")
    assert decoder["dec4_1"]["kernel"].shape == (3, 3, 12, 8)


def test_help_lists_every_config_flag(capsys):
    assert train_decoder.main(["--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--content-dir", "--style-dir", "--content-tfds", "--style-tfds", "--tfds-data-dir", "--vgg",
                 "--workdir", "--steps", "--batch-size", "--load-size", "--crop", "--lr", "--lr-schedule",
                 "--style-weight", "--loss-norm", "--log-every", "--checkpoint-every", "--keep", "--seed",
                 "--num-workers", "--distributed"):
        assert flag in text
    assert "{plateau,inverse,constant}" in text and "{lua,mse,l2}" in text


@pytest.mark.parametrize("extra, message", [
    (["--content-dir", None], "error: no content images; pass --content-dir FOLDER or --content-tfds NAME"),
    (["--loss-norm", "mes"], "error: argument --loss-norm: invalid choice"),
    (["--crop", "8"], "error: --crop must be >= 16"),
    (["--batch-size", "two"], "error: argument --batch-size: invalid int value: 'two'"),
    (["--content-dir", "MISSING"], "error: image folder not found"),
    (["--vgg", "MISSING.pth"], "error:"),
    (["--content-tfds", "coco/2017"], "error: both --content-dir and --content-tfds given; pass only one"),
])
def test_user_errors_exit_2_with_one_line(image_dirs, tmp_path, capsys, extra, message):
    args = _args(image_dirs, tmp_path / "w")
    flag, value = extra
    if value is None:
        i = args.index(flag)
        del args[i:i + 2]
    elif value.startswith("MISSING"):
        args[args.index(flag) + 1] = str(tmp_path / value)
    else:
        args += [flag, value]
    rc = train_decoder.main(args)
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1


def test_checkpoints_path_that_is_a_file_exits_2_with_one_line(image_dirs, tmp_path, capsys):
    (tmp_path / "checkpoints").write_text("my notes")
    rc = train_decoder.main(_args(image_dirs, tmp_path, "--steps", "2"))
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: {tmp_path / 'checkpoints'} is not a folder, which training keeps there; move it out of the way "
        "or pass another --workdir"]
    assert (tmp_path / "checkpoints").read_text() == "my notes"


def _wait_for(predicate, proc, timeout: float, what: str, log: Path):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early ({proc.returncode}) while waiting for {what}: "
                                 f"{log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_ctrl_c_saves_a_checkpoint_and_exits_130(image_dirs, tmp_path, capsys, monkeypatch):
    show_progress = train_decoder._ProgressBar.__call__

    def progress(self, p):
        show_progress(self, p)
        if p.step == 2:
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C delivers, to the handler main() installed

    monkeypatch.setattr(train_decoder._ProgressBar, "__call__", progress)
    rc = train_decoder.main(_args(image_dirs, tmp_path, "--steps", "50", "--log-every", "10",
                                  "--checkpoint-every", "20"))
    err = capsys.readouterr().err
    assert rc == 130, err
    assert "interrupt: saving a checkpoint at the current step" in err
    assert "interrupted at step 3; checkpoint saved" in err  # the step running when Ctrl-C came
    assert _checkpoints(tmp_path) == [3] and _metric_steps(tmp_path) == [3]
    assert not (tmp_path / "decoder.npz").exists()  # only a finished run exports the decoder
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored

    monkeypatch.undo()
    rc = train_decoder.main(_args(image_dirs, tmp_path, "--steps", "5", "--log-every", "1"))
    assert rc == 0 and "resumed from step 3" in capsys.readouterr().err
    assert _metric_steps(tmp_path) == [3, 4, 5]


def test_killed_training_resumes_from_its_last_checkpoint(image_dirs, tmp_path, tmp_path_factory):
    """SIGKILL a real training process after a few checkpoints; the rerun continues from the last one.

    Runs on two fake CPU devices, sharing the compiled step with test_train.py's two-device test
    through JAX's persistent compilation cache.
    """
    every = 3
    workdir = tmp_path / "run"
    command = [sys.executable, str(ROOT / "scripts" / "train_decoder.py"),
               *_args(image_dirs, workdir, "--log-every", "1", "--checkpoint-every", str(every))]
    log = tmp_path / "first.log"
    with open(log, "w") as out:  # a file: a pipe nobody reads could fill up and block the trainer
        first = subprocess.Popen([*command, "--steps", "100000"], cwd=ROOT, env=two_device_env(tmp_path_factory),
                                 stdout=out, stderr=subprocess.STDOUT)
    _wait_for(lambda: len(_checkpoints(workdir)) >= 2, first, 300, "two checkpoints", log)
    first.kill()
    first.wait(30)
    logged_before_kill = max(_metric_steps(workdir))
    saved_before_kill = _checkpoints(workdir)[-1]
    assert logged_before_kill - saved_before_kill <= every  # checkpoints are synchronous

    total = logged_before_kill + 3
    second = subprocess.run([*command, "--steps", str(total)], cwd=ROOT, env=two_device_env(tmp_path_factory),
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"resumed from step {saved_before_kill}" in second.stderr
    assert json.loads((workdir / "config.json").read_text())["resumed_from_step"] == saved_before_kill
    assert _metric_steps(workdir) == list(range(1, total + 1))  # every step logged once, none repeated
    assert _checkpoints(workdir)[-1] == total
    assert weights.load_adain_decoder(workdir / "decoder.npz")["dec1_1"]["kernel"].shape == (3, 3, 4, 3)
