"""Bad input at every entry point: one-line errors, exit code 2, nothing lost, nothing executed.

The four entry points are ``nst_jax.cli.gatys.main``, ``nst_jax.cli.adain.main``, ``scripts/train_decoder.py``
and ``scripts/port_weights.py``. For every case of the table below the entry point must

* return 2 and print exactly one line, ``error: ...``, that names the problem and the fix (the
  case lists the words that must appear: the flag, the valid choices, "did you mean", the minimum
  size, ...), and no traceback;
* fail before any network is traced or compiled: the expensive functions are replaced by sentinels
  that fail the test if they are reached (a "control" test shows that the base command lines do
  reach them);
* leave a pre-existing output file byte for byte unchanged and no temporary file behind.

A few cases also run as real subprocesses. The malicious pickles of tests/fixtures/weights (whose
payloads create ``nst_jax_pwned_marker`` in the working directory) are given to every weights
flag. Images in every mode Pillow hands out are stylized by the AdaIN command line and compared
with the library run on independently converted pixels. Property tests (hypothesis) load random
images of every mode and orientation, and mutilated image files. A training run is interrupted
with Ctrl-C, then killed, then resumed (marked slow: it compiles a training step in a subprocess).
"""

from __future__ import annotations

import dataclasses
import errno
import importlib.util
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, features

from nst_jax import adain, data, gatys, multiscale, train, vgg, weights
from nst_jax import files as files_io
from nst_jax import image as image_io
from nst_jax.errors import ConfigError, InputImageError, NonFiniteLossError
from nst_jax.cli import gatys as gatys_cli
from nst_jax.cli import adain as adain_cli

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
GATYS_VGG = FIXTURES / "gatys" / "vgg19_narrow.pth"
ADAIN_VGG = FIXTURES / "adain" / "vgg_normalised_narrow.pth"
ADAIN_DECODER = FIXTURES / "adain" / "decoder_narrow.pth"
BAD_CHAIN_DECODER = FIXTURES / "weights" / "adain_decoder_badchain.pth"
EVIL_PICKLE = FIXTURES / "weights" / "evil_os_system.pkl"  # plain pickle: os.system
EVIL_ZIP = FIXTURES / "weights" / "evil_exec_zip.pth"  # torch.save zip whose data.pkl calls exec
MARKER = "nst_jax_pwned_marker"  # what the payloads create in the working directory
PREVIOUS = b"an output from an earlier run"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"robustness_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


port_weights = _script("port_weights")
train_decoder = _script("train_decoder")

ENTRY = {"gatys": gatys_cli.main, "adain": adain_cli.main, "train": train_decoder.main, "port": port_weights.main}


# ------------------------------------------------------------------------------------------------
# Input files


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random uint8 RGB image (upsampled noise), so that stylized outputs are not flat."""
    small = (np.random.default_rng(seed).random((4, 4, 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png16_rgb(samples: np.ndarray, extra: bytes = b"") -> bytes:
    """A 48-bit RGB PNG (filter 0 on every row), written byte by byte: Pillow cannot write one."""
    h, w, _ = samples.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in samples)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)) + extra
            + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Every input file the cases refer to, by name (created once for the module)."""
    d = tmp_path_factory.mktemp("inputs")
    f = {"dir": d}
    for name, (h, w, seed) in {"content": (48, 40, 0), "style": (44, 48, 1), "small": (12, 12, 2)}.items():
        f[name] = d / f"{name}.png"
        Image.fromarray(_rgb(h, w, seed)).save(f[name])
    f["empty"] = d / "empty.png"
    f["empty"].write_bytes(b"")
    f["text"] = d / "notes.png"
    f["text"].write_text("shopping list: milk, eggs\n")
    buf = io.BytesIO()
    Image.fromarray(_rgb(64, 64, 3)).save(buf, format="JPEG")
    f["truncated"] = d / "cut.jpg"
    f["truncated"].write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    f["a_file"] = d / "plain_file"
    f["a_file"].write_text("not a folder")
    f["no_images"] = d / "no_images"
    f["no_images"].mkdir()
    (f["no_images"] / "readme.txt").write_text("nothing to see")
    for which in ("contents", "styles"):
        f[which] = d / which
        f[which].mkdir()
        for i in range(2):
            Image.fromarray(_rgb(40, 40, 10 + i)).save(f[which] / f"{i}.png")

    # Weights with missing (-) and unexpected (+) layers, in the project's npz format.
    vgg19 = weights.load_vgg19(GATYS_VGG)
    del vgg19["conv5_4"]
    vgg19["extra"] = {"kernel": np.zeros((3, 3, 4, 4), np.float32), "bias": np.zeros(4, np.float32)}
    f["vgg19_bad_keys"] = weights.save_params(vgg19, d / "vgg19_bad_keys.npz")
    decoder = weights.load_adain_decoder(ADAIN_DECODER)
    del decoder["dec2_1"]
    decoder["dec0_1"] = {"kernel": np.zeros((3, 3, 4, 4), np.float32), "bias": np.zeros(4, np.float32)}
    f["decoder_bad_keys"] = weights.save_params(decoder, d / "decoder_bad_keys.npz")
    return f


# ------------------------------------------------------------------------------------------------
# Sentinels: the work that every bad input must be refused before


class WorkStarted(AssertionError):
    """Raised by a sentinel: the entry point began expensive work before refusing its input."""


def _sentinel(what: str) -> Callable:
    def fail(*args, **kwargs):
        raise WorkStarted(f"{what} was reached: the input should have been refused before")

    return fail


@pytest.fixture
def sentinels(monkeypatch):
    """Replaces every traced/compiled computation of the four entry points by a sentinel."""
    monkeypatch.setattr(vgg, "features", _sentinel("vgg.features"))
    monkeypatch.setattr(gatys, "run", _sentinel("gatys.run"))
    monkeypatch.setattr(multiscale, "run_multiscale", _sentinel("multiscale.run_multiscale"))
    monkeypatch.setattr(adain, "stylize_jit", _sentinel("adain.stylize_jit"))
    monkeypatch.setattr(train, "compiled_train_step", _sentinel("train.compiled_train_step"))
    monkeypatch.setattr(train, "create_state", _sentinel("train.create_state"))


# ------------------------------------------------------------------------------------------------
# The table


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad invocation: extra arguments (appended to the entry point's base command line, where
    a repeated option overrides) and the words its message must contain."""

    id: str
    entry: str
    args: tuple[str, ...]
    needles: tuple[str, ...]
    drop: tuple[str, ...] = ()  # base options removed (with their value)
    setup: str | None = None  # name of a function in SETUPS
    bug: str | None = None  # an open bug in a module this suite does not own: strict xfail

    def __str__(self) -> str:
        return self.id


def _base(entry: str, f: dict[str, Path], out: Path) -> list[str]:
    """A command line that passes validation (see test_base_command_lines_reach_the_work)."""
    if entry == "gatys":
        return ["--weights", GATYS_VGG, "--content", f["content"], "--style", f["style"], "--size", "40",
                "--iterations", "2", "--optimizer", "adam", "--no-progress", "--output", out / "result.png"]
    if entry == "adain":
        return ["--vgg", ADAIN_VGG, "--decoder", ADAIN_DECODER, "--content", f["content"],
                "--style", f["style"], "--size", "32", "--output", out / "result.png"]
    if entry == "train":
        return ["--workdir", out, "--content-dir", f["contents"], "--style-dir", f["styles"], "--vgg", ADAIN_VGG,
                "--steps", "2", "--batch-size", "1", "--load-size", "32", "--crop", "32", "--num-workers", "0"]
    return ["--kind", "vgg19", "--output", out / "weights.npz", "--force"]  # + SRC.pth from the case


# What each entry point may have in its output folder (pre-existing, byte for byte unchanged).
EXISTING = {"gatys": "result.png", "adain": "result.png", "train": "decoder.npz", "port": "weights.npz"}

CASES = [
    # --- nst_jax.gatys
    Case("gatys-missing-content", "gatys", ("--content", "{dir}/nope.png"),
         ("content image not found", "nope.png", "check the path")),
    Case("gatys-empty-content", "gatys", ("--content", "{empty}"), ("content image is an empty file", "re-export")),
    Case("gatys-text-as-style", "gatys", ("--style", "{text}"),
         ("style image is not an image", "notes.png", "use PNG, JPEG")),
    Case("gatys-truncated-content", "gatys", ("--content", "{truncated}"),
         ("content image is truncated or corrupt", "cut.jpg", "re-export")),
    Case("gatys-folder-as-content", "gatys", ("--content", "{contents}"),
         ("content image is a folder", "pass one image file")),
    Case("gatys-style-too-small", "gatys", ("--style-scale", "0.5"),
         ("style image is", "relu5_1", "at least 32 px", "--style-scale")),
    Case("gatys-negative-iterations", "gatys", ("--iterations", "-1"), ("--iterations must be >= 0", "-1")),
    Case("gatys-infinite-weight", "gatys", ("--style-weight", "inf"), ("--style-weight", "finite")),
    Case("gatys-infinite-style-scale", "gatys", ("--style-scale", "inf"), ("--style-scale", "finite")),
    Case("gatys-unknown-optimizer", "gatys", ("--optimizer", "lbgfs"),
         ("--optimizer", 'did you mean "lbfgs"', "valid choices: lbfgs, optax-lbfgs, adam")),
    Case("gatys-unknown-color-mode", "gatys", ("--color", "luminence"),
         ("--color", 'did you mean "luminance"', "valid choices: none, luminance")),
    Case("gatys-unknown-style-layer", "gatys", ("--style-layers", "relu1_1,relu9_1"),
         ('"relu9_1"', "--style-layers", 'did you mean "relu5_1"', "valid choices: conv1_1")),
    Case("gatys-misspelt-flag", "gatys", ("--sizee", "64"), ("unrecognized arguments", 'did you mean "--size"')),
    Case("gatys-missing-weights", "gatys", ("--weights", "{dir}/vgg19.pth"),
         ("--weights: weights file not found", "vgg19.pth")),
    Case("gatys-decoder-as-weights", "gatys", ("--weights", str(ADAIN_DECODER)),
         ("--weights: ", "does not match torchvision VGG-19", "missing", "unexpected", "AdaIN decoder weights")),
    Case("gatys-weights-wrong-keys", "gatys", ("--weights", "{vgg19_bad_keys}"),
         ("2 missing: -conv5_4/kernel", "-conv5_4/bias", "2 unexpected: +extra/kernel 3x3x4x4", "+extra/bias")),
    Case("gatys-weights-checksum", "gatys", (), ("checksum mismatch", "discarded", "(--weights PATH)"),
         drop=("--weights",), setup="bad_download"),
    Case("gatys-output-folder-missing", "gatys", ("--output", "{out}/missing/result.png"),
         ("output folder does not exist", "create it or choose another --output")),
    Case("gatys-output-not-writable", "gatys", (), ("output folder is not writable", "Permission denied",
                                                     "choose another --output"), setup="unwritable"),
    Case("gatys-output-under-a-file", "gatys", ("--output", "{a_file}/result.png"),
         ("output folder is not a folder", "choose another --output")),
    Case("gatys-output-format", "gatys", ("--output", "{out}/result.gif"), ('".gif"', "use one of .png")),
    Case("gatys-too-big-for-memory", "gatys", ("--size", "60000"),
         ("GiB", "are available", "lower --size", "--max-memory")),
    Case("gatys-metrics-folder-missing", "gatys", ("--metrics-json", "{out}/missing/metrics.json"),
         ("--metrics-json", "missing")),
    Case("gatys-style-too-big-for-memory", "gatys", ("--style-scale", "1000"), ("GiB", "--style-scale")),
    Case("gatys-style-scale-beyond-any-image", "gatys", ("--style-scale", "1e9"),
         ("--style-scale 1e+09", "megapixels", "lower --style-scale")),
    Case("gatys-blend-weights-sum-to-inf", "gatys", ("--style", "{style}", "{content}", "--style-blend-weights",
                                                     "1e308,1e308"), ("--style-blend-weights", "infinity")),
    Case("gatys-blend-weights-all-zero", "gatys", ("--style", "{style}", "{content}", "--style-blend-weights",
                                                   "0,0"), ("--style-blend-weights", "not all zero")),
    Case("gatys-output-is-the-content", "gatys", ("--output", "{content}"),
         ("--output", "is the content image", "choose another --output")),
    Case("gatys-output-is-the-init-image", "gatys", ("--init", "image", "--init-image", "{style}", "--output",
                                                     "{style}"), ("is the style image",)),
    Case("gatys-metrics-is-the-output", "gatys", ("--metrics-json", "{out}/result.png"),
         ("--metrics-json", "is the output image")),
    # --- nst_jax.adain
    Case("adain-missing-style", "adain", ("--style", "{dir}/nope.png"), ("style image not found", "check the path")),
    Case("adain-text-as-content", "adain", ("--content", "{text}"), ("content image is not an image", "use PNG")),
    Case("adain-truncated-style", "adain", ("--style", "{truncated}"), ("style image is truncated or corrupt",)),
    Case("adain-folder-without-images", "adain", ("--content", "{no_images}"),
         ("no images in the content image folder", "add .jpg")),
    Case("adain-content-too-small", "adain", ("--content", "{small}", "--size", "0"),
         ("content image is 12x12 px", "relu4_1", "at least 16 px", "--size")),
    Case("adain-negative-weights", "adain", ("--style", "{style}", "{content}", "--style-interpolation-weights",
                                             "-1", "2"), ("--style-interpolation-weights must be >= 0",)),
    Case("adain-weights-sum-to-inf", "adain", ("--style", "{style}", "{content}", "--style-interpolation-weights",
                                               "1e308", "1e308"), ("--style-interpolation-weights", "infinity")),
    Case("adain-output-is-the-style", "adain", ("--output", "{style}"), ("--output", "is the style image")),
    Case("adain-unknown-color-transform", "adain", ("--color-transform", "chool"),
         ('did you mean "chol"', "valid choices: eig, chol, sym")),
    Case("adain-torchvision-as-encoder", "adain", ("--vgg", str(GATYS_VGG)),
         ("--vgg: ", "does not match AdaIN vgg_normalised encoder", 'kind "vgg19" (load_vgg19)')),
    Case("adain-decoder-wrong-keys", "adain", ("--decoder", "{decoder_bad_keys}"),
         ("-dec2_1/kernel", "-dec2_1/bias", "+dec0_1/kernel", "+dec0_1/bias", "AdaIN decoder")),
    Case("adain-missing-decoder", "adain", ("--decoder", "{dir}/decoder.pth"),
         ("--decoder: weights file not found",)),
    Case("adain-decoder-checksum", "adain", (), ("checksum mismatch", "(--decoder PATH)"),
         drop=("--decoder",), setup="bad_download"),
    Case("adain-mask-not-an-image", "adain", ("--style", "{style}", "{content}", "--mask", "{text}"),
         ("mask image is not an image",)),
    Case("adain-output-under-a-file", "adain", ("--output", "{a_file}/result.png"),
         ("output folder is not a folder", "--output")),
    Case("adain-output-not-writable", "adain", (), ("not writable", "--output"), setup="unwritable"),
    Case("adain-too-big-for-memory", "adain", ("--size", "60000"),
         ("x60000 px", "GiB", "lower --size", "--max-memory")),
    Case("adain-over-memory-budget", "adain", ("--max-memory", "0.0001"), ("GiB", "--max-memory")),
    # --- scripts/train_decoder.py
    Case("train-unknown-loss-norm", "train", ("--loss-norm", "mes"),
         ("--loss-norm", 'did you mean "mse"', "valid choices: lua, mse, l2")),
    Case("train-misspelt-flag", "train", ("--batchsize", "4"), ('did you mean "--batch-size"',)),
    Case("train-zero-steps", "train", ("--steps", "0"), ("--steps must be an integer >= 1",)),
    Case("train-negative-style-weight", "train", ("--style-weight", "-1"), ("--style-weight", ">= 0")),
    Case("train-missing-encoder", "train", ("--vgg", "{dir}/vgg.pth"), ("--vgg: weights file not found",)),
    Case("train-decoder-as-encoder", "train", ("--vgg", str(ADAIN_DECODER)),
         ("--vgg: ", "does not match AdaIN vgg_normalised encoder", 'kind "adain_decoder"')),
    Case("train-encoder-checksum", "train", (), ("checksum mismatch", "(--vgg PATH)"),
         drop=("--vgg",), setup="bad_download"),
    Case("train-missing-content-folder", "train", ("--content-dir", "{dir}/nope"),
         ("image folder not found", "nope")),
    Case("train-style-folder-without-images", "train", ("--style-dir", "{no_images}"),
         ("no readable images",)),
    Case("train-workdir-is-a-file", "train", ("--workdir", "{a_file}"),
         ("--workdir", "plain_file", "is a file; pass a folder")),
    Case("train-workdir-under-a-file", "train", ("--workdir", "{a_file}/run"),
         ("cannot create --workdir", "plain_file", "choose another folder")),
    # --- scripts/port_weights.py
    Case("port-unknown-kind", "port", (str(GATYS_VGG), "--kind", "vgg91"),
         ('did you mean "vgg19"', "valid choices: vgg19, adain_vgg, adain_decoder")),
    Case("port-no-source", "port", (), ("required", "SRC.pth")),
    Case("port-folder-as-source", "port", ("{contents}",), ("is a directory", "expected a .pth")),
    Case("port-empty-source", "port", ("{empty}",), ("is empty", "torch.save")),
    Case("port-text-as-source", "port", ("{text}",), ("not a PyTorch checkpoint", "torch.save")),
    Case("port-decoder-as-vgg19", "port", (str(ADAIN_DECODER),), ("does not match torchvision VGG-19",
                                                               "pass --kind adain_decoder")),
    Case("port-bad-channel-chain", "port", (str(BAD_CHAIN_DECODER), "--kind", "adain_decoder"),
         ("does not match AdaIN decoder", "input channels")),
    Case("port-output-folder-missing", "port", (str(GATYS_VGG), "--output", "{out}/missing/w.npz"),
         ("does not exist", "create it")),
    Case("port-output-under-a-file", "port", (str(GATYS_VGG), "--output", "{a_file}/w.npz"),
         ("is a file, not a folder",)),
    Case("port-output-is-a-folder", "port", (str(GATYS_VGG), "--output", "{contents}"),
         ("is a folder", "give a file name")),
    Case("port-output-not-writable", "port", (str(GATYS_VGG),), ("Permission denied", "writable folder"),
         setup="unwritable"),
]


def _unwritable(monkeypatch, tmp_path) -> None:
    """Folders refuse new files (chmod does not stop root, so the refusal is simulated)."""
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(files_io, "_create_temp", refuse)


def _bad_download(monkeypatch, tmp_path) -> None:
    """Every registry download serves bytes that fail their SHA-256 (offline: a file:// URL)."""
    served = tmp_path / "server" / "weights.pth"
    served.parent.mkdir()
    served.write_bytes(GATYS_VGG.read_bytes())
    cache = tmp_path / "cache"
    monkeypatch.setenv("NST_JAX_CACHE", str(cache))
    for name, spec in list(weights.WEIGHTS.items()):
        monkeypatch.setitem(weights.WEIGHTS, name, dataclasses.replace(
            spec, url=served.as_uri(), sha256="0" * 64, sha256_prefix=None))


SETUPS = {"unwritable": _unwritable, "bad_download": _bad_download}


def _argv(case: Case, f: dict[str, Path], out: Path) -> list[str]:
    base = [str(a) for a in _base(case.entry, f, out)]
    for flag in case.drop:
        i = base.index(flag)
        del base[i:i + 2]
    names = {k: str(v) for k, v in f.items()} | {"out": str(out)}
    return base + [a.format(**names) for a in case.args]


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def _assert_nothing_lost(case_entry: str, out: Path) -> None:
    existing = out / EXISTING[case_entry]
    assert existing.read_bytes() == PREVIOUS, "a failed run changed an existing output"
    assert sorted(p.name for p in out.iterdir()) == [existing.name], "a failed run left files behind"


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """An output folder holding an earlier result; the working directory is tmp_path (for MARKER)."""
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path, out


def _params(cases):
    return [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.bug)] if c.bug else [])
            for c in cases]


@pytest.mark.parametrize("case", _params(CASES))
def test_bad_input_is_refused_early_in_one_line(case, files, workspace, sentinels, monkeypatch, capsys):
    tmp_path, out = workspace
    (out / EXISTING[case.entry]).write_bytes(PREVIOUS)
    if case.setup:
        SETUPS[case.setup](monkeypatch, tmp_path)
    code = ENTRY[case.entry](_argv(case, files, out))
    err = capsys.readouterr().err
    line = _one_error_line(err)
    assert code == 2, err
    for needle in case.needles:
        assert needle in line, f"{needle!r} missing from: {line}"
    _assert_nothing_lost(case.entry, out)
    if case.setup == "bad_download":  # verified before it could replace anything in the cache
        assert [p.name for p in (tmp_path / "cache").iterdir()] == []
    assert not (tmp_path / MARKER).exists()


def test_the_table_spans_every_entry_point():
    counts = {e: sum(c.entry == e for c in CASES if not c.bug) for e in ENTRY}
    assert sum(counts.values()) >= 25 and min(counts.values()) >= 5, counts
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("entry", ["gatys", "adain", "train"])
def test_base_command_lines_reach_the_work(entry, files, workspace, sentinels, capsys):
    """The table's base command lines are valid: each case fails for its own reason only."""
    tmp_path, out = workspace
    with pytest.raises(WorkStarted):
        ENTRY[entry]([str(a) for a in _base(entry, files, out)])
    assert "error" not in capsys.readouterr().err


def test_train_tfds_builder_needing_tensorflow_is_refused_in_one_line(monkeypatch):
    """A TFDS dataset not prepared as array_record makes tfds import TensorFlow (the builder code);
    the message names the dataset and how to prepare it, not a missing TensorFlow (issue 16 defect 8)."""
    tfds = pytest.importorskip("tensorflow_datasets", reason="TFDS sources need the tfds extra")

    def data_source(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")

    monkeypatch.setattr(tfds, "data_source", data_source)
    with pytest.raises(ConfigError) as info:
        data.TfdsImageSource("coco/2017:train", 36, 32)
    message = str(info.value)
    assert "\n" not in message
    for needle in ("'coco/2017' is not prepared (as array_record)",
                   "tfds build coco/2017 --data_dir DIR --file_format=array_record", "download=True",
                   "--tfds-data-dir DIR"):
        assert needle in message, f"{needle!r} missing from: {message}"
    assert "tensorflow" not in message.lower()


def test_base_port_command_line_converts(files, workspace, capsys):
    tmp_path, out = workspace
    (out / "weights.npz").write_bytes(PREVIOUS)
    assert port_weights.main([str(GATYS_VGG)] + [str(a) for a in _base("port", files, out)]) == 0
    assert weights.load_vgg19(out / "weights.npz").keys() == weights.load_vgg19(GATYS_VGG).keys()


def test_adain_memory_budget_is_overridable(files, workspace, sentinels, capsys):
    tmp_path, out = workspace
    base = [str(a) for a in _base("adain", files, out)]
    assert adain_cli.main(base + ["--max-memory", "0.0001"]) == 2
    assert "raise --max-memory" in _one_error_line(capsys.readouterr().err)
    with pytest.raises(WorkStarted):  # the same job with a larger budget goes ahead
        adain_cli.main(base + ["--max-memory", "0.01"])


@pytest.mark.parametrize("entry, args, foreign", [
    ("gatys", ("--weights", ADAIN_DECODER), ("--decoder", "--vgg")),
    ("adain", ("--vgg", GATYS_VGG), ("--weights",)),
    ("adain", ("--decoder", ADAIN_VGG), ("--weights",)),
    ("train", ("--vgg", ADAIN_DECODER), ("--weights", "--decoder")),
    ("port", (ADAIN_DECODER,), ("--decoder", "--weights", "--vgg")),
], ids=["gatys", "adain-vgg", "adain-decoder", "train", "port"])
def test_weights_hints_name_only_the_commands_own_flags(entry, args, foreign, files, workspace, sentinels,
                                                        capsys):
    """A file of the wrong network: the hint fits the command (issue 16 defect 8), never another's flag."""
    tmp_path, out = workspace
    assert ENTRY[entry]([str(a) for a in _base(entry, files, out)] + [str(a) for a in args]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "does not match" in line
    assert not any(flag in line for flag in foreign), line


# ------------------------------------------------------------------------------------------------
# Malicious pickles at every weights flag


WEIGHTS_FLAGS = [("gatys", "--weights"), ("adain", "--vgg"), ("adain", "--decoder"), ("train", "--vgg"),
                 ("port", None)]


@pytest.mark.parametrize("evil", [EVIL_PICKLE, EVIL_ZIP], ids=["plain-pickle", "torch-zip"])
@pytest.mark.parametrize("entry, flag", WEIGHTS_FLAGS, ids=[f"{e}{f or ''}" for e, f in WEIGHTS_FLAGS])
def test_malicious_pickle_is_refused_and_never_runs(entry, flag, evil, files, workspace, sentinels, capsys):
    tmp_path, out = workspace
    (out / EXISTING[entry]).write_bytes(PREVIOUS)
    extra = [flag, str(evil)] if flag else [str(evil)]
    code = ENTRY[entry]([str(a) for a in _base(entry, files, out)] + extra)
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2
    assert "refused to load" in line and evil.name in line and "nothing was executed" in line
    assert "state dicts of tensors" in line  # the fix: what kind of file can be read
    _assert_nothing_lost(entry, out)
    assert not (tmp_path / MARKER).exists()


# ------------------------------------------------------------------------------------------------
# Real subprocesses: exit status and stderr as a shell sees them


SUBPROCESS_CASES = {
    "gatys-missing-content": (["-m", "nst_jax.gatys", "--weights", str(GATYS_VGG), "--content", "nope.png",
                               "--output", "out.png"], ("content image not found", "nope.png")),
    "adain-evil-encoder": (["-m", "nst_jax.adain", "--vgg", str(EVIL_PICKLE), "--decoder", str(ADAIN_DECODER),
                            "--output", "out.png"], ("refused to load", "nothing was executed")),
    "train-unknown-loss-norm": ([str(ROOT / "scripts" / "train_decoder.py"), "--workdir", "w", "--content-dir", ".",
                                 "--style-dir", ".", "--loss-norm", "mes"], ('did you mean "mse"',)),
    "port-evil-zip": ([str(ROOT / "scripts" / "port_weights.py"), "--kind", "vgg19", str(EVIL_ZIP), "--output",
                       "w.npz"], ("refused to load", "nothing was executed")),
    "port-missing-kind": ([str(ROOT / "scripts" / "port_weights.py"), str(GATYS_VGG)], ("required", "--kind")),
}


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return env


@pytest.fixture(scope="module")
def subprocess_results(tmp_path_factory):
    """Starts every subprocess case at once (most of their time is importing jax) and collects them."""
    procs = {}
    for name, (args, _) in SUBPROCESS_CASES.items():
        cwd = tmp_path_factory.mktemp(name)
        (cwd / "out.png").write_bytes(PREVIOUS)
        procs[name] = (cwd, subprocess.Popen([sys.executable, *args], cwd=cwd, env=_subprocess_env(),
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = {}
    try:
        for name, (cwd, proc) in procs.items():
            out, err = proc.communicate(timeout=240)
            results[name] = (cwd, proc.returncode, out, err)
    finally:
        for _, proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    return results


@pytest.mark.parametrize("name", sorted(SUBPROCESS_CASES))
def test_subprocess_exit_code_and_stderr(name, subprocess_results):
    cwd, code, out, err = subprocess_results[name]
    line = _one_error_line(err)
    assert code == 2, err
    assert out == ""
    for needle in SUBPROCESS_CASES[name][1]:
        assert needle in line, line
    assert (cwd / "out.png").read_bytes() == PREVIOUS
    assert sorted(p.name for p in cwd.iterdir()) == ["out.png"]  # no marker, no temp file


# ------------------------------------------------------------------------------------------------
# Failures after work has started: nothing partial, the last good image kept


@pytest.mark.parametrize("link", ["same", "dotdot", "symlink", "hardlink"])
@pytest.mark.parametrize("entry", ["gatys", "adain"])
def test_output_never_replaces_an_input(entry, link, files, workspace, sentinels, capsys):
    """--output naming an input file (by another name too) is refused; the input stays as it was."""
    tmp_path, out = workspace
    inputs = tmp_path / "in"
    inputs.mkdir()
    content = inputs / "content.png"
    content.write_bytes(files["content"].read_bytes())
    target = {"same": content, "dotdot": inputs / ".." / "in" / "content.png", "symlink": out / "link.png",
              "hardlink": out / "hard.png"}[link]
    if link == "symlink":
        target.symlink_to(content)
    elif link == "hardlink":
        os.link(content, target)
    argv = [str(a) for a in _base(entry, files, out)]
    argv[argv.index("--content") + 1] = str(content)
    code = ENTRY[entry](argv + ["--output", str(target)])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and "is the content image" in line and "choose another --output" in line, line
    assert content.read_bytes() == files["content"].read_bytes()
    assert target.read_bytes() == files["content"].read_bytes()
    assert sorted(p.name for p in inputs.iterdir()) == ["content.png"]


def test_adain_output_folder_never_replaces_an_input(files, workspace, sentinels, capsys):
    """A folder of contents used as the output folder: a planned result that would land on one of the
    contents is refused before anything is written."""
    tmp_path, out = workspace
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "a_stylized_style.png"):  # the second is where a's result would go
        (folder / name).write_bytes(files["content"].read_bytes())
    argv = [str(a) for a in _base("adain", files, out)]
    argv[argv.index("--content") + 1] = str(folder)
    argv[argv.index("--output") + 1] = str(folder)
    code = adain_cli.main(argv)
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and "a_stylized_style.png is the content image" in line, line
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "a_stylized_style.png"]
    assert all((folder / n).read_bytes() == files["content"].read_bytes() for n in ("a.png", "a_stylized_style.png"))


def test_gatys_non_finite_loss_keeps_the_last_good_image(files, workspace, monkeypatch, capsys):
    """A diverged run leaves an existing --output as it was and saves its last good image beside it."""
    tmp_path, out = workspace
    last_good = np.random.default_rng(0).random((40, 33, 3)).astype(np.float32)

    def diverging(*args, **kwargs):
        err = NonFiniteLossError("loss became non-finite between iteration 10 and 12; the image of "
                                 "iteration 10 was kept; lower --learning-rate")
        err.image = last_good
        raise err

    monkeypatch.setattr(gatys, "run", diverging)
    (out / "result.png").write_bytes(PREVIOUS)
    code = gatys_cli.main([str(a) for a in _base("gatys", files, out)])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and "between iteration 10 and 12" in line and "--learning-rate" in line
    saved = out / "result.last-good.png"
    assert f"saved as {saved}" in line and "result.png was not written" in line, line
    assert (out / "result.png").read_bytes() == PREVIOUS
    np.testing.assert_allclose(image_io.load_image(saved), last_good, atol=0.5 / 255 + 1e-6)
    assert sorted(p.name for p in out.iterdir()) == ["result.last-good.png", "result.png"]


def _fake_multiscale(image: np.ndarray):
    """A finished one-level run (so the CLI's saving is tested without compiling anything)."""
    def run_multiscale(*args, **kwargs):
        result = gatys.RunResult(image, [3.0, 2.0], {"total": 2.0, "content": 1.0, "style": 1.0, "tv": 0.0,
                                                     "content_weighted": 1.0, "style_weighted": 1.0,
                                                     "tv_weighted": 0.0}, 1, [(1, 0.1)])
        return multiscale.MultiscaleResult(result, [multiscale.Level(40, 1, 2.0, 0.1, [3.0, 2.0])])

    return run_multiscale


def test_gatys_metrics_on_a_full_disk_changes_nothing(files, workspace, monkeypatch, capsys):
    """ENOSPC while writing --metrics-json: one error line, the earlier image and metrics unchanged,
    no temporary file left."""
    tmp_path, out = workspace
    monkeypatch.setattr(multiscale, "run_multiscale", _fake_multiscale(np.full((40, 33, 3), 0.5, np.float32)))
    (out / "result.png").write_bytes(PREVIOUS)
    (out / "metrics.json").write_bytes(b'{"earlier": true}')

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", full)
    argv = [str(a) for a in _base("gatys", files, out)] + ["--metrics-json", str(out / "metrics.json")]
    code = gatys_cli.main(argv)
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and "No space left on device" in line and "metrics.json" in line, line
    assert (out / "result.png").read_bytes() == PREVIOUS
    assert (out / "metrics.json").read_bytes() == b'{"earlier": true}'
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "result.png"]

    monkeypatch.setattr(os, "fsync", real_fsync)  # the same run with a disk that has room writes both
    assert gatys_cli.main(argv) == 0
    assert json.loads((out / "metrics.json").read_text())["final_loss"] == 2.0
    assert (out / "result.png").read_bytes() != PREVIOUS
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "result.png"]


def test_adain_failure_midway_keeps_finished_and_existing_outputs(files, workspace, monkeypatch, capsys):
    """The second content of a folder is corrupt: the first result stays, nothing else is touched.

    A truncated JPEG has a readable header, so only decoding it fails (a truncated PNG is caught
    before any work: finding its EXIF orientation reads the whole file).
    """
    tmp_path, out = workspace
    contents = tmp_path / "contents"
    contents.mkdir()
    Image.fromarray(_rgb(40, 40, 0)).save(contents / "a.png")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (contents / "b.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) * 3 // 4])
    assert image_io.image_size(contents / "b.jpg") == (64, 64)
    (out / "b_stylized_style.png").write_bytes(PREVIOUS)
    monkeypatch.setattr(adain, "stylize_jit", lambda vgg_params, dec, content, styles, *a, **k: content)
    code = adain_cli.main(["--vgg", str(ADAIN_VGG), "--decoder", str(ADAIN_DECODER), "--content", str(contents),
                       "--style", str(files["style"]), "--size", "32", "--output", str(out)])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and "b.jpg" in line and "truncated or corrupt" in line
    assert (out / "b_stylized_style.png").read_bytes() == PREVIOUS
    assert sorted(p.name for p in out.iterdir()) == ["a_stylized_style.png", "b_stylized_style.png"]


# ------------------------------------------------------------------------------------------------
# Every image mode works at the AdaIN command line


def _good_modes(d: Path) -> dict[str, tuple[Path, np.ndarray | None]]:
    """Content files in awkward modes, all 24x32 upright, with their expected sRGB pixels.

    Expected values are computed here with NumPy (compositing over white, palette lookup, 16-bit
    scaling, rotation); None where the format is lossy and only success is checked.
    """
    rng = np.random.default_rng(7)
    rgb = _rgb(24, 32, 5)
    gray = rgb[..., 1]
    alpha = rng.integers(0, 256, (24, 32), dtype=np.uint8)
    a = alpha[..., None] / 255.0
    out: dict[str, tuple[Path, np.ndarray | None]] = {}

    def save(name, im, expected, **kw):
        path = d / name
        im.save(path, **kw)
        out[name] = (path, None if expected is None else np.asarray(expected, np.float64))

    save("gray.png", Image.fromarray(gray), np.repeat(gray[..., None] / 255.0, 3, -1))
    save("gray_alpha.png", Image.fromarray(np.stack([gray, alpha], -1), "LA"),
         np.repeat(gray[..., None] / 255.0 * a + (1 - a), 3, -1))
    save("rgba.png", Image.fromarray(np.concatenate([rgb, alpha[..., None]], -1), "RGBA"),
         rgb / 255.0 * a + (1 - a))
    pal = Image.fromarray(rgb).quantize(16)
    palette = np.asarray(pal.getpalette(), np.float64).reshape(-1, 3) / 255.0
    save("palette.png", pal, palette[np.asarray(pal)])
    deep = rng.integers(0, 65536, (24, 32), dtype=np.uint16)
    save("gray16.png", Image.fromarray(deep), np.repeat(deep[..., None] / 65535.0, 3, -1))
    deep_rgb = (rgb.astype(np.uint16) * 257) ^ rng.integers(0, 256, (24, 32, 3), dtype=np.uint16)
    (d / "rgb16.png").write_bytes(_png16_rgb(deep_rgb))
    out["rgb16.png"] = (d / "rgb16.png", deep_rgb / 65535.0)
    exif = Image.Exif()
    exif[0x0112] = 6  # the viewer turns the stored picture 90 degrees clockwise
    save("exif_rotated.png", Image.fromarray(np.ascontiguousarray(np.rot90(rgb, 1))), rgb / 255.0, exif=exif)
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), None, quality=95)
    save("cmyk.tif", Image.fromarray(rgb).convert("CMYK"), None)
    return out


@pytest.fixture(scope="module")
def mode_files(tmp_path_factory):
    return _good_modes(tmp_path_factory.mktemp("modes"))


@pytest.mark.parametrize("name", ["gray.png", "gray_alpha.png", "rgba.png", "palette.png", "gray16.png",
                                  "rgb16.png", "exif_rotated.png", "cmyk.jpg", "cmyk.tif"])
def test_every_image_mode_is_stylized_by_the_adain_cli(name, mode_files, files, tmp_path, capsys):
    path, expected = mode_files[name]
    out = tmp_path / "result.png"
    code = adain_cli.main(["--vgg", str(ADAIN_VGG), "--decoder", str(ADAIN_DECODER), "--content", str(path),
                       "--style", str(files["style"]), "--size", "16", "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    result = image_io.load_image(out)
    assert result.shape == (16, 21, 3)  # upright 24x32 at short side 16
    if expected is None:
        return
    # The same stylization from the pixels the conversion should have produced.
    content = image_io.resize(expected.astype(np.float32), short_side=16)
    style = image_io.resize(image_io.load_image(files["style"]), height=16, width=21)
    nets = weights.load_adain_vgg(ADAIN_VGG), weights.load_adain_decoder(ADAIN_DECODER)
    reference = np.asarray(adain.stylize_jit(*nets, content[None], [style[None]], 1.0,
                                             interpolation_weights=None, content_mask=None,
                                             preserve_color=False, color_mode="eig"))[0]
    np.testing.assert_allclose(result, reference, atol=1 / 255 + 1e-5)


# ------------------------------------------------------------------------------------------------
# Property tests: image loading


# EXIF orientation -> how a viewer makes the stored (H, W, C) picture upright (EXIF 2.3, tag 0x0112).
UPRIGHT = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, -1)[::-1],
           8: lambda a: np.rot90(a, 1)}


def _stored(mode: str, h: int, w: int, rng) -> tuple[Image.Image, np.ndarray]:
    """A Pillow image of ``mode`` and the sRGB float values it stands for (over white)."""
    if mode == "1":
        bits = rng.integers(0, 2, (h, w)).astype(bool)
        return Image.fromarray(bits), np.repeat(bits[..., None] * 1.0, 3, -1)
    if mode == "I;16":
        deep = rng.integers(0, 65536, (h, w), dtype=np.uint16)
        return Image.fromarray(deep), np.repeat(deep[..., None] / 65535.0, 3, -1)
    if mode in ("P", "P+transparency"):
        index = rng.integers(0, 8, (h, w), dtype=np.uint8)
        palette = rng.integers(0, 256, (8, 3), dtype=np.uint8)
        im = Image.fromarray(index, "P")
        im.putpalette(palette.tobytes())
        colors = palette[index] / 255.0
        if mode == "P":
            return im, colors
        im.info["transparency"] = 3  # palette entry 3 is see-through: white shows
        return im, np.where((index == 3)[..., None], 1.0, colors)
    channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
    raw = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    values = raw / 255.0
    color, alpha = (values[..., :-1], values[..., -1:]) if channels in (2, 4) else (values, 1.0)
    expected = np.broadcast_to(color * alpha + (1 - alpha), (h, w, color.shape[-1]))
    return Image.fromarray(raw[..., 0] if channels == 1 else raw, mode), np.repeat(expected, 3 // color.shape[-1], -1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=st.integers(1, 20), w=st.integers(1, 20), orientation=st.integers(1, 8), seed=st.integers(0, 2**16),
       mode=st.sampled_from(["1", "L", "LA", "P", "P+transparency", "RGB", "RGBA", "I;16"]))
def test_property_any_mode_and_orientation_loads_upright(tmp_path, h, w, mode, orientation, seed):
    im, values = _stored(mode, h, w, np.random.default_rng(seed))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "p.png"
    im.save(path, exif=exif)
    expected = UPRIGHT[orientation](values)
    out = image_io.load_image(path)
    assert out.dtype == np.float32 and out.shape == expected.shape
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert image_io.image_size(path) == expected.shape[:2]


def _encoded_samples() -> dict[str, bytes]:
    rgb = _rgb(9, 11, 3)
    samples = {}
    formats = [("PNG", "RGB"), ("PNG", "LA"), ("JPEG", "RGB"), ("JPEG", "CMYK"), ("GIF", "P"), ("TIFF", "RGB"),
               ("BMP", "RGB")] + ([("WEBP", "RGBA")] if features.check("webp") else [])
    for fmt, mode in formats:
        buf = io.BytesIO()
        Image.fromarray(rgb).convert(mode).save(buf, format=fmt)
        samples[f"{fmt}-{mode}"] = buf.getvalue()
    exif = Image.Exif()
    exif[0x0112] = 6
    for fmt in ("PNG", "JPEG", "TIFF"):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format=fmt, exif=exif)
        samples[f"{fmt}-RGB-exif"] = buf.getvalue()
    samples["PNG-RGB16"] = _png16_rgb(rgb.astype(np.uint16) * 257)
    samples["PNG-RGB16-exif"] = _png16_rgb(rgb.astype(np.uint16) * 257, _png_chunk(b"eXIf", exif.tobytes()))
    return samples


SAMPLES = _encoded_samples()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(sorted(SAMPLES)), data=st.data())
def test_property_damaged_files_load_or_raise_input_image_error(tmp_path, kind, data):
    """Truncated, bit-flipped or padded files: a valid image or a one-line InputImageError, never
    another exception."""
    blob = bytearray(SAMPLES[kind])
    damage = data.draw(st.sampled_from(["truncate", "flip", "insert"]))
    if damage == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    elif damage == "flip":
        for pos in data.draw(st.lists(st.integers(0, len(blob) - 1), min_size=1, max_size=4)):
            blob[pos] ^= data.draw(st.integers(1, 255))
    else:
        pos = data.draw(st.integers(0, len(blob)))
        blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
    path = tmp_path / f"damaged{'.jpg' if 'JPEG' in kind else '.img'}"
    path.write_bytes(bytes(blob))
    for read in (image_io.image_size, image_io.load_image):
        try:
            result = read(path, "content image")
        except InputImageError as err:
            message = str(err)
            assert "\n" not in message and message.startswith("content image") and str(path) in message
            continue
        if read is image_io.load_image:
            assert result.dtype == np.float32 and result.ndim == 3 and result.shape[-1] == 3
            assert np.all(np.isfinite(result)) and result.min() >= 0.0 and result.max() <= 1.0


def test_png16_zip_bomb_is_refused_before_it_expands(tmp_path):
    """A 2x2 16-bit PNG whose pixel stream inflates to 64 MB is corrupt, not a memory spike."""
    raw = b"\x00" * (64 << 20)
    bomb = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 16, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(raw, 9)) + _png_chunk(b"IEND", b""))
    assert len(bomb) < 1 << 20
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    with pytest.raises(InputImageError, match="longer than its header says"):
        image_io.load_image(path)


# ------------------------------------------------------------------------------------------------
# Training: Ctrl-C, then a kill at an arbitrary moment, then resume


def _complete_steps(workdir: Path) -> list[int]:
    # Orbax writes a checkpoint into a temporary folder and renames it: a numeric name is complete.
    root = workdir / "checkpoints"
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []


def _wait_for(predicate: Callable[[], bool], proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early with status {proc.returncode}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("training made no progress in time")
        time.sleep(0.05)


@pytest.mark.slow
def test_training_killed_at_any_moment_resumes_and_ctrl_c_checkpoints(tmp_path):
    """Kill -9 a training run, resume it (from the last complete checkpoint), then Ctrl-C it."""
    folders = {}
    for which, seed in (("content", 20), ("style", 30)):
        folders[which] = tmp_path / which
        folders[which].mkdir()
        for i in range(3):
            Image.fromarray(_rgb(40, 40, seed + i)).save(folders[which] / f"{i}.png")
    workdir = tmp_path / "run"
    logs: list = []
    # The second run loads the compiled step from this cache instead of compiling it again.
    env = _subprocess_env() | {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache"),
                               "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}

    def start() -> subprocess.Popen:
        cmd = [sys.executable, str(ROOT / "scripts" / "train_decoder.py"), "--workdir", str(workdir),
               "--content-dir", str(folders["content"]), "--style-dir", str(folders["style"]),
               "--vgg", str(ADAIN_VGG), "--steps", "100000", "--batch-size", "1", "--load-size", "32",
               "--crop", "32", "--log-every", "1", "--checkpoint-every", "1", "--keep", "3",
               "--num-workers", "0"]
        # Files, not pipes: the progress bar would fill a pipe nobody reads while we poll.
        log = (tmp_path / f"train{len(logs)}.log").open("w")
        logs.append(log)
        return subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, text=True)

    def output(proc: subprocess.Popen) -> str:
        proc.wait(timeout=240)
        logs[-1].close()
        return Path(logs[-1].name).read_text()

    # 1. SIGKILL once a few checkpoints exist: wherever it lands (in a step, in a save, in the
    #    deletion of an old checkpoint, in a metrics line), nothing may be lost but that step.
    proc = start()
    _wait_for(lambda: len(_complete_steps(workdir)) >= 2, proc, timeout=400)
    time.sleep(np.random.default_rng().uniform(0.0, 0.5))
    proc.kill()
    output(proc)
    complete = _complete_steps(workdir)

    # 2. Rerunning the same command resumes from the newest complete checkpoint; Ctrl-C then saves
    #    one at the current step and exits with status 130.
    proc = start()
    _wait_for(lambda: max(_complete_steps(workdir), default=0) >= complete[-1] + 2, proc, timeout=240)
    proc.send_signal(signal.SIGINT)
    log = output(proc)
    assert proc.returncode == 130, log[-2000:]
    resumed = int(re.search(r"resumed from step (\d+)", log).group(1))
    if resumed != complete[-1]:  # only if the newest folder was torn: then it is reported and skipped
        assert resumed in complete and "is unreadable" in log, log[-2000:]
    stopped = int(re.search(r"interrupted at step (\d+); checkpoint saved", log).group(1))
    assert stopped > resumed and stopped == max(_complete_steps(workdir))
    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, stopped + 1)), "metrics must hold each step exactly once"
    params = train.export_decoder(workdir, tmp_path / "decoder.npz", step=stopped)
    decoder = weights.load_adain_decoder(params)
    assert all(np.isfinite(leaf).all() for layer in decoder.values() for leaf in layer.values())
