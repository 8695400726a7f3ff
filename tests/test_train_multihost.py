"""Decoder training over several processes: 2 processes x 1 CPU device (gloo collectives over 127.0.0.1)
train what 1 process x 2 devices and 1 process x 1 device train; a killed process and a rerun resume;
bad process flags are one-line errors.

The two-process command is built from :data:`README_TWO_MACHINES`, the README's "Training on several
machines" example: the test substitutes the coordinator address and the values of the flags in
:data:`SUBSTITUTED` (folders, batch), and adds :data:`TEST_SETTINGS` (fixture weights, tiny sizes).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst_jax import train
from nst_jax.cli import train as train_cli

ROOT = Path(__file__).resolve().parents[1]
VGG = ROOT / "tests" / "fixtures" / "train" / "vgg_normalised_narrow.pth"

# The README example, process I of 2 (run on each machine with its own --process-id).
README_TWO_MACHINES = (
    "nst-train --content-dir /data/coco/train2014 --style-dir /data/wikiart/train "
    "--workdir /shared/runs/adain --batch-size 8 "
    "--coordinator-address 10.0.0.1:1234 --num-processes 2 --process-id {I}")
SUBSTITUTED = ("--content-dir", "--style-dir", "--workdir", "--batch-size", "--coordinator-address")
STEPS = 8
TEST_SETTINGS = ["--vgg", str(VGG), "--load-size", "36", "--crop", "32", "--log-every", "1",
                 "--checkpoint-every", "2", "--keep", "10", "--num-workers", "0", "--no-progress",
                 "--timeout", "120"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def image_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for which, n in (("content", 6), ("style", 4)):
        (root / which).mkdir()
        for i in range(n):
            img = rng.integers(0, 256, (36 + 2 * i, 40, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / which / f"{which}{i}.png")
    return root / "content", root / "style"


def _argv(command: str, values: dict[str, str], steps: int) -> list[str]:
    """``command`` (without its program name) with the values of :data:`SUBSTITUTED` replaced."""
    words = shlex.split(command)[1:]
    for i, word in enumerate(words):
        if word in values:
            words[i + 1] = values[word]
    assert set(values) == set(SUBSTITUTED) and all(flag in words for flag in SUBSTITUTED)
    return words + TEST_SETTINGS + ["--steps", str(steps)]


def _process_argv(image_dirs, workdir: Path, address: str, process_id: int, steps: int) -> list[str]:
    values = {"--content-dir": str(image_dirs[0]), "--style-dir": str(image_dirs[1]), "--workdir": str(workdir),
              "--batch-size": "2", "--coordinator-address": address}
    return _argv(README_TWO_MACHINES.format(I=process_id), values, steps)


def _single_argv(image_dirs, workdir: Path, steps: int) -> list[str]:
    argv = _process_argv(image_dirs, workdir, "unused:1", 0, steps)
    i = argv.index("--coordinator-address")
    return argv[:i] + argv[i + 6:]  # without the three process flags


def _env(devices: int = 1) -> dict[str, str]:
    env = dict(os.environ)
    flags = ["--xla_backend_optimization_level=0"]  # halves compile time; these tiny networks need no speed
    if devices > 1:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    env["XLA_FLAGS"] = " ".join([env.get("XLA_FLAGS", ""), *flags]).strip()
    env["PYTHONPATH"] = str(ROOT)
    return env


def _start(argv: list[str], devices: int = 1) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nst_jax.cli.train", *argv], env=_env(devices), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"process did not exit within {timeout} s: {err[-2000:]}")
    return proc.returncode, err


def _losses(workdir: Path) -> dict[int, np.ndarray]:
    return {r["step"]: np.array([r["loss"], r["content_loss"], r["style_loss"], r["grad_norm"]])
            for r in train.read_metrics(workdir)}


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_two_processes_train_what_one_process_trains_and_resume_after_a_kill(image_dirs, tmp_path):
    """2 processes x 1 device, one killed after the first checkpoint and both rerun, log the same per-step
    losses as 1 process x 2 devices and 1 process x 1 device for the same global batch, seed and steps.

    Tolerance: the three runs sum the same float32 terms in different orders (per device, then across
    devices; or all on one device), a relative difference of a few float32 eps per reduction, which
    eight Adam steps (lr 1e-4, updates of size lr whatever the gradient's scale) carry into the
    weights at the level of lr times that relative error: far below 1e-5 relative in the losses.
    """
    multi = tmp_path / "two_processes"
    address = f"127.0.0.1:{_free_port()}"
    killed_run = [_start(_process_argv(image_dirs, multi, address, i, steps=1000)) for i in range(2)]
    two_devices = _start(_single_argv(image_dirs, tmp_path / "two_devices", STEPS), devices=2)
    one_device = _start(_single_argv(image_dirs, tmp_path / "one_device", STEPS))  # compiled as the others
    deadline = time.monotonic() + 180
    while not (multi / "checkpoints" / "2").is_dir():
        assert time.monotonic() < deadline and killed_run[0].poll() is None, "no checkpoint at step 2"
        time.sleep(0.02)
    killed_run[0].send_signal(signal.SIGKILL)  # process 0: the coordinator, so process 1 notices at once
    rc, err = _finish(killed_run[1], timeout=60)  # bounded: it notices at its next collective
    killed_run[0].communicate()
    # Usually the next collective fails first (one line, exit 1); when JAX's coordination client notices
    # the lost coordinator first it aborts the process itself (SIGABRT, C++ log), which cannot be caught.
    assert rc in (1, -signal.SIGABRT), err[-2000:]
    if rc == 1:
        assert len(_error_lines(err)) == 1 and "another process stopped or lost its connection" in err
        assert "rerun the same command on every process" in err
    saved = sorted(int(p.name) for p in (multi / "checkpoints").iterdir() if p.name.isdigit())
    assert 2 <= saved[-1] < STEPS, saved

    address = f"127.0.0.1:{_free_port()}"
    rerun = [_start(_process_argv(image_dirs, multi, address, i, steps=STEPS)) for i in range(2)]
    results = [_finish(p) for p in rerun]
    for rc, err in results:
        assert rc == 0, err[-3000:]
    assert f"resumed from step {saved[-1]}" in results[0][1] and f"resumed from step {saved[-1]}" in results[1][1]
    for proc in (two_devices, one_device):
        rc, err = _finish(proc)
        assert rc == 0, err[-3000:]

    runs = {name: _losses(tmp_path / name) for name in ("two_processes", "two_devices", "one_device")}
    for name, losses in runs.items():
        assert sorted(losses) == list(range(1, STEPS + 1)), (name, sorted(losses))  # no step twice, none lost
    for step in range(1, STEPS + 1):
        np.testing.assert_allclose(runs["two_processes"][step], runs["two_devices"][step], rtol=1e-5)
        np.testing.assert_allclose(runs["two_processes"][step], runs["one_device"][step], rtol=1e-5)
    config = json.loads((multi / "config.json").read_text())
    assert config["num_processes"] == 2 and config["num_devices"] == 2 and config["resumed_from_step"] == saved[-1]
    with np.load(multi / "decoder.npz") as a, np.load(tmp_path / "two_devices" / "decoder.npz") as b:
        for key in [k for k in a.files if a[k].dtype.kind == "f"]:
            np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6)


@pytest.mark.parametrize("flags, message", [
    (["--num-processes", "2", "--process-id", "2"], "--process-id 2 is out of range for --num-processes 2; "
                                                    "number the processes 0 to 1"),
    (["--num-processes", "2"], "--process-id missing; a multi-process run needs all of --coordinator-address"),
])
def test_process_flags_are_checked_before_connecting(image_dirs, tmp_path, capsys, flags, message):
    argv = _single_argv(image_dirs, tmp_path, 2) + ["--coordinator-address", f"127.0.0.1:{_free_port()}", *flags]
    assert train_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert _error_lines(err) == [f"error: {err.strip().removeprefix('error: ')}"] and message in err


def test_unreachable_coordinator_is_a_bounded_one_line_error(image_dirs, tmp_path, capsys):
    argv = _single_argv(image_dirs, tmp_path, 2) + ["--coordinator-address", f"127.0.0.1:{_free_port()}",
                                                    "--num-processes", "2", "--process-id", "1", "--timeout", "1"]
    start = time.monotonic()
    assert train_cli.main(argv) == 2
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: no coordinator answered at 127.0.0.1:") and "within 1 s" in err


def test_mismatched_num_processes_stops_both_processes(image_dirs, tmp_path):
    address = f"127.0.0.1:{_free_port()}"
    argvs = [_process_argv(image_dirs, tmp_path, address, i, steps=2) for i in range(2)]
    argvs[1][argvs[1].index("--num-processes") + 1] = "3"
    results = [_finish(p, timeout=120) for p in [_start(a) for a in argvs]]
    expected = ["error: process 1 has --num-processes 3 but process 0 has 2; start every process with the "
                "same --num-processes"]
    assert results[0][0] == 2 and _error_lines(results[0][1]) == expected, results[0][1][-2000:]
    # Every process has read the values before any raises (distributed.agree), so both say the same.
    assert results[1][0] == 2 and _error_lines(results[1][1]) == expected, results[1][1][-2000:]
    assert not (tmp_path / "checkpoints").exists()
