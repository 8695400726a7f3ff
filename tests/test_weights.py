"""Weights loading against torch's own values, the npz format, downloads, and scripts/port_weights.py.

Golden files come from scripts/make_weight_fixtures.py: every expected array there was produced by
PyTorch (``tensor.float().numpy()``, ``weight.permute(2, 3, 1, 0)``, a torch forward pass).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import os
import pathlib
import re
import shutil
import sys
import urllib.error
import zipfile

import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax import _pth, adain, vgg, weights
from nst_jax.errors import (
    ChecksumError,
    ConfigError,
    DownloadError,
    OutputPathError,
    UnsafePickleError,
    WeightsError,
)

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "weights"
ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def expected():
    with np.load(FIXTURES / "expected.npz") as z:
        return {k: z[k] for k in z.files}


def _golden(expected, prefix: str) -> dict[str, dict[str, np.ndarray]]:
    params: dict[str, dict[str, np.ndarray]] = {}
    for key, value in expected.items():
        if key.startswith(prefix):
            layer, leaf = key[len(prefix):].split("/")
            params.setdefault(layer, {})[leaf] = value
    return params


def _assert_params_equal(got, want):
    assert list(got) == list(want)
    for layer in want:
        assert set(got[layer]) == {"kernel", "bias"}
        for leaf in ("kernel", "bias"):
            array = got[layer][leaf]
            assert isinstance(array, np.ndarray) and array.dtype == np.float32
            assert array.flags.c_contiguous
            np.testing.assert_array_equal(array, want[layer][leaf], err_msg=f"{layer}/{leaf}")


# --- .pth -> params, against torch ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["vgg19_narrow", "vgg19_narrow_legacy", "vgg19_narrow_strided", "vgg19_narrow_module"])
def test_load_vgg19_matches_torch(name, expected):
    params = weights.load_vgg19(FIXTURES / f"{name}.pth")
    assert list(params) == list(vgg.CONV_LAYERS)
    _assert_params_equal(params, _golden(expected, "vgg19/params/"))


def test_load_vgg19_float16_matches_torch(expected):
    params = weights.load_vgg19(FIXTURES / "vgg19_narrow_fp16.pth")
    for name, index in weights.VGG19_INDEX.items():
        torch_weight = expected[f"vgg19_fp16/sd/features.{index}.weight"]
        np.testing.assert_array_equal(params[name]["kernel"], torch_weight.transpose(2, 3, 1, 0))
        np.testing.assert_array_equal(params[name]["bias"], expected[f"vgg19_fp16/sd/features.{index}.bias"])


@pytest.mark.parametrize("name", ["vgg19_narrow", "vgg19_narrow_legacy", "vgg19_narrow_strided", "vgg19_narrow_module"])
def test_read_state_dict_matches_torch(name, expected):
    state = weights.read_state_dict(FIXTURES / f"{name}.pth")
    want = {k[len("vgg19/sd/"):]: v for k, v in expected.items() if k.startswith("vgg19/sd/")}
    assert [k.removeprefix("module.") for k in state] == list(want)
    for key, value in state.items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, want[key.removeprefix("module.")], err_msg=key)


@pytest.mark.parametrize("name", ["dtypes.pth", "dtypes_legacy.pth"])
def test_every_storage_type_matches_torch(name, expected):
    state = weights.read_state_dict(FIXTURES / name)
    want = {k[len("dtypes/"):]: v for k, v in expected.items() if k.startswith("dtypes/")}
    assert list(state) == list(want)
    for key, value in state.items():
        assert value.dtype == np.float32 and value.shape == want[key].shape, key
        np.testing.assert_array_equal(value, want[key], err_msg=key)


def test_read_state_dict_include_filter():
    state = weights.read_state_dict(FIXTURES / "vgg19_narrow.pth", include=lambda k: k.startswith("classifier."))
    assert state and all(k.startswith("classifier.") for k in state)


def test_load_vgg19_never_reads_the_classifier(monkeypatch):
    path = FIXTURES / "vgg19_narrow.pth"
    with _pth.open_checkpoint(path) as ckpt:
        classifier = {t.storage.key for k, t in ckpt.tensors.items() if k.startswith("classifier.")}
    read = []
    original = _pth._ZipCheckpoint._read_root

    def spy(self, key, nbytes):
        read.append(key)
        return original(self, key, nbytes)

    monkeypatch.setattr(_pth._ZipCheckpoint, "_read_root", spy)
    weights.load_vgg19(path)
    assert len(read) == 2 * len(vgg.CONV_LAYERS)
    assert classifier and not classifier & set(read)


def test_load_adain_vgg_matches_torch(expected):
    params = weights.load_adain_vgg(FIXTURES / "adain_vgg_narrow.pth")
    assert list(params) == list(weights.ADAIN_VGG_INDEX)
    _assert_params_equal(params, _golden(expected, "adain_vgg/params/"))


def test_load_adain_decoder_matches_torch(expected):
    params = weights.load_adain_decoder(FIXTURES / "adain_decoder_narrow.pth")
    assert tuple(params) == adain.DECODER_LAYERS
    _assert_params_equal(params, _golden(expected, "adain_decoder/params/"))


def test_adain_tables_agree_with_the_network_description():
    convs = tuple(n for n in vgg.ADAIN_VGG.layers if n.startswith("conv"))
    assert tuple(weights.ADAIN_VGG_INDEX) == ("preprocess",) + convs
    assert weights.ADAIN_VGG_LAST_MODULE == weights.ADAIN_VGG_INDEX["conv4_1"] + 1  # its ReLU
    assert tuple(weights.ADAIN_DECODER_INDEX) == adain.DECODER_LAYERS
    assert list(weights.ADAIN_DECODER_INDEX.values()) == [1, 5, 8, 11, 14, 18, 21, 25, 28]
    assert weights.VGG19_INDEX["conv4_2"] == 21 and weights.VGG19_INDEX["conv5_1"] == 28


def test_loaded_vgg19_reproduces_torch_activations(expected):
    params = weights.load_vgg19(FIXTURES / "vgg19_narrow.pth")
    image = jnp.asarray(expected["vgg19/forward/image"])
    layers = ("relu1_1", "pool1", "relu3_1", "conv4_2", "relu5_1")
    out = vgg.features(params, image, layers)
    for name in layers:
        np.testing.assert_allclose(out[name], expected[f"vgg19/forward/{name}"], rtol=1e-4, atol=1e-5,
                                   err_msg=name)


# --- wrong files ----------------------------------------------------------------------------------

FILES = {"vgg19": "vgg19_narrow.pth", "adain_vgg": "adain_vgg_narrow.pth", "adain_decoder": "adain_decoder_narrow.pth"}
LOADERS = {"vgg19": "load_vgg19", "adain_vgg": "load_adain_vgg", "adain_decoder": "load_adain_decoder"}
FLAG = re.compile(r"(^|[\s(])--[a-z]")  # a command-line flag: the library names none


@pytest.mark.parametrize("kind, actual", [(k, a) for k in weights.KINDS for a in weights.KINDS if k != a])
def test_file_of_another_network_names_keys_and_the_right_kind(kind, actual):
    path = FIXTURES / FILES[actual]
    with pytest.raises(WeightsError) as err:
        weights.load(path, kind)
    message = str(err.value)
    assert "\n" not in message
    assert re.search(r"\d+ missing: -\S+ [\dx]+;", message)
    assert re.search(r"\d+ unexpected: \+\S+ [\dx]+", message)
    # Names the kind and loader the file belongs to, and no flag of any command line.
    assert f'load it as kind "{actual}" ({LOADERS[actual]})' in message
    assert not FLAG.search(message), message
    assert (err.value.kind, err.value.path, err.value.found) == (kind, path, actual)


def test_decoder_given_as_vgg19_lists_torch_keys():
    with pytest.raises(WeightsError) as err:
        weights.load_vgg19(FIXTURES / "adain_decoder_narrow.pth")
    message = str(err.value)
    # Missing keys carry the published VGG-19 shape; unexpected ones the file's shape.
    assert "-features.0.weight 64x3x3x3; -features.0.bias 64;" in message
    assert "+1.weight 8x10x3x3" in message
    assert re.search(r"\.\.\. \(\+\d+ more\)", message)
    assert 'kind "adain_decoder"' in message and "load_adain_decoder" in message and not FLAG.search(message)


def test_unknown_file_gets_the_generic_hint(tmp_path):
    params = weights.load_vgg19(FIXTURES / "vgg19_narrow.pth")
    del params["conv5_4"]
    path = weights.save_params(params, tmp_path / "partial.npz")
    with pytest.raises(WeightsError) as err:
        weights.load_vgg19(path)
    assert "-conv5_4/kernel 3x3x512x512; -conv5_4/bias 512" in str(err.value)
    assert "is this a VGG-19 file? the AdaIN encoder loads with load_adain_vgg" in str(err.value)
    assert (err.value.kind, err.value.path, err.value.found) == ("vgg19", path, None)


def test_inconsistent_channels_in_pth():
    with pytest.raises(WeightsError, match=r"8\.weight has 9 input channels but dec3_4 has 8 output channels"):
        weights.load_adain_decoder(FIXTURES / "adain_decoder_badchain.pth")


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda p: p["conv1_1"].update(kernel=np.zeros((3, 3, 1, 4), np.float32)), "1 input channels but the input is RGB"),
        (lambda p: p["conv1_2"].update(kernel=np.zeros((3, 3, 5, 4), np.float32)), "conv1_2/kernel has 5 input channels but conv1_1 has 4"),
        (lambda p: p["conv2_1"].update(kernel=np.zeros((1, 1, 4, 6), np.float32)), "1x1 kernel, expected 3x3"),
        (lambda p: p["conv2_1"].update(bias=np.zeros((5,), np.float32)), "conv2_1/bias has shape 5, expected 6"),
        (lambda p: p["conv3_1"].update(kernel=np.zeros((3, 6, 8), np.float32)), "expected a 4-D convolution kernel"),
    ],
)
def test_inconsistent_shapes_in_npz(edit, needle, tmp_path):
    params = weights.load_vgg19(FIXTURES / "vgg19_narrow.pth")
    edit(params)
    path = weights.save_params(params, tmp_path / "bad.npz")
    with pytest.raises(WeightsError) as err:
        weights.load_vgg19(path)
    assert needle in str(err.value)


def test_decoder_must_end_in_rgb(tmp_path):
    params = weights.load_adain_decoder(FIXTURES / "adain_decoder_narrow.pth")
    params["dec1_1"] = {"kernel": np.zeros((3, 3, 4, 2), np.float32), "bias": np.zeros(2, np.float32)}
    with pytest.raises(WeightsError, match=r"dec1_1 has 2 output channels, expected 3 \(RGB\)"):
        weights.save_adain_decoder(params, tmp_path / "d.npz")
    assert not (tmp_path / "d.npz").exists()


def test_non_finite_weights_are_rejected(tmp_path):
    params = weights.load_vgg19(FIXTURES / "vgg19_narrow.pth")
    params["conv3_2"]["bias"][0] = np.nan
    path = weights.save_params(params, tmp_path / "nan.npz")
    with pytest.raises(WeightsError, match="conv3_2/bias contains NaN"):
        weights.load_vgg19(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(WeightsError, match=r"^weights file not found: .*nope\.pth; check the path$") as err:
        weights.load(tmp_path / "nope.pth", "vgg19")
    assert (err.value.kind, err.value.path) == ("vgg19", tmp_path / "nope.pth")
    with pytest.raises(WeightsError, match="is a directory"):
        weights.load_adain_decoder(tmp_path)


def test_unknown_kind_is_a_config_error():
    with pytest.raises(ConfigError, match='did you mean "vgg19"'):
        weights.load(FIXTURES / "vgg19_narrow.pth", "vgg_19")


# --- npz format -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", weights.KINDS)
def test_npz_round_trip(kind, tmp_path):
    params = weights.load(FIXTURES / FILES[kind], kind)
    path = weights.save_params(params, tmp_path / f"{kind}.npz", kind=kind)
    _assert_params_equal(weights.load(path, kind), params)
    _assert_params_equal(weights.load_params(path), params)


def test_npz_accepts_jax_arrays_and_is_reproducible(tmp_path):
    params = weights.load_adain_decoder(FIXTURES / "adain_decoder_narrow.pth")
    as_jax = {k: {leaf: jnp.asarray(v) for leaf, v in d.items()} for k, d in params.items()}
    a = weights.save_adain_decoder(as_jax, tmp_path / "a.npz")
    b = weights.save_adain_decoder(params, tmp_path / "b.npz")
    assert a.read_bytes() == b.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.npz"]  # no temp files left
    umask = os.umask(0)
    os.umask(umask)
    assert a.stat().st_mode & 0o777 == 0o666 & ~umask


def test_npz_of_another_kind_is_named(tmp_path):
    path = weights.save_params(weights.load_vgg19(FIXTURES / "vgg19_narrow.pth"), tmp_path / "v.npz", kind="vgg19")
    with pytest.raises(WeightsError, match="holds torchvision VGG-19 weights, not AdaIN decoder.*load_vgg19") as err:
        weights.load_adain_decoder(path)
    assert not FLAG.search(str(err.value)) and err.value.found == "vgg19"


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = weights.save_params({"a": {"kernel": np.ones(2)}}, tmp_path / "p.npz")
    before = path.read_bytes()

    def broken(f, arrays):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(weights, "_write_npz", broken)
    with pytest.raises(OutputPathError, match="No space left"):
        weights.save_params({"a": {"kernel": np.zeros(2)}}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]


def test_save_to_missing_folder(tmp_path):
    with pytest.raises(OutputPathError, match="does not exist"):
        weights.save_params({"a": {"kernel": np.ones(2)}}, tmp_path / "no" / "p.npz")


@pytest.mark.parametrize("content", [b"garbage", b"PK\x03\x04truncated"])
def test_corrupt_npz(content, tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match="cannot read"):
        weights.load_vgg19(path)


# --- downloads ------------------------------------------------------------------------------------


def test_registry():
    spec = weights.WEIGHTS["vgg19"]
    assert spec.url == "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
    assert spec.sha256_prefix == weights.hash_prefix_from_url(spec.url) == "dcbb9e9d"
    for name in ("adain_vgg", "adain_decoder"):
        spec = weights.WEIGHTS[name]
        assert spec.url.startswith("https://github.com/naoto0804/pytorch-AdaIN/releases/download/v0.0.0/")
        assert weights.hash_prefix_from_url(spec.url) is None
    assert weights.WEIGHTS["adain_vgg"].sha256 == "804ca2835ecf7539f0cd2a7ac3c18ce81e6f8468969ae7117ac0c148d286bb4a"
    assert weights.WEIGHTS["adain_decoder"].sha256 == "379ca41d59f3a37eed3599bbbc2560c19da5c458870a5ffd3a9dd41aa88f9472"
    assert {n: s.kind for n, s in weights.WEIGHTS.items()} == {k: k for k in weights.KINDS}


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NST_JAX_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert weights.cache_dir() == tmp_path / "home" / ".cache" / "nst_jax"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.cache_dir() == tmp_path / "xdg" / "nst_jax"
    monkeypatch.setenv("NST_JAX_CACHE", str(tmp_path / "mine"))
    assert weights.cache_dir() == tmp_path / "mine"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("NST_JAX_CACHE", str(folder))
    return folder


def _served(tmp_path, fixture: str, prefix: str | None) -> tuple[pathlib.Path, str]:
    """Copies a fixture to a 'server' folder, named with a hash prefix like torchvision files."""
    data = (FIXTURES / fixture).read_bytes()
    server = tmp_path / "server"
    server.mkdir(exist_ok=True)
    stem = f"net-{prefix}" if prefix else "net"
    path = server / f"{stem}.pth"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_fetch_file_url_verifies_prefix(tmp_path, cache):
    source, digest = _served(tmp_path, "vgg19_narrow.pth", None)
    named = source.with_name(f"net-{digest[:10]}.pth")
    source.rename(named)
    spec = weights.WeightsSpec(url=named.as_uri(), filename="net.pth", kind="vgg19")
    calls = []
    path = weights.fetch(spec, progress=lambda done, total: calls.append((done, total)))
    assert path == cache / "net.pth" and path.read_bytes() == named.read_bytes()
    assert calls and calls[-1] == (named.stat().st_size, named.stat().st_size)
    assert sorted(p.name for p in cache.iterdir()) == ["net.pth"]


def test_checksum_mismatch_keeps_the_cached_file(tmp_path, cache):
    source, digest = _served(tmp_path, "vgg19_narrow.pth", "00000000")
    assert not digest.startswith("00000000")
    cache.mkdir()
    (cache / "net.pth").write_bytes(b"previous good copy")
    spec = weights.WeightsSpec(url=source.as_uri(), filename="net.pth", kind="vgg19")
    with pytest.raises(ChecksumError) as err:
        weights.fetch(spec, force=True)
    message = str(err.value)
    assert "net.pth" in message and "00000000" in message and digest[:8] in message
    assert (cache / "net.pth").read_bytes() == b"previous good copy"
    assert sorted(p.name for p in cache.iterdir()) == ["net.pth"]


def test_fetch_without_published_hash_records_the_first_digest(cache):
    spec = weights.WeightsSpec(url="https://example.invalid/decoder.pth", filename="dec.pth",
                               kind="adain_decoder")
    first = (FIXTURES / "adain_decoder_narrow.pth").read_bytes()
    weights.fetch(spec, opener=lambda url, timeout: io.BytesIO(first))
    digest = hashlib.sha256(first).hexdigest()
    assert (cache / "dec.pth.sha256").read_text().split()[0] == digest
    # A later download that differs from the recorded digest is refused.
    with pytest.raises(ChecksumError, match=digest[:16]):
        weights.fetch(spec, opener=lambda url, timeout: io.BytesIO(b"tampered"), force=True)
    assert (cache / "dec.pth").read_bytes() == first


def test_resolve_downloads_and_converts_once(tmp_path, cache, monkeypatch, expected):
    data = (FIXTURES / "vgg19_narrow.pth").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    spec = weights.WeightsSpec(url=f"https://example.invalid/vgg19-{digest[:8]}.pth",
                               filename=f"vgg19-{digest[:8]}.pth", kind="vgg19")
    downloads, opened = [], []
    original_open = _pth.open_checkpoint
    monkeypatch.setattr(_pth, "open_checkpoint", lambda p: opened.append(p) or original_open(p))

    def opener(url, timeout):
        downloads.append(url)
        return io.BytesIO(data)

    first = weights.resolve_weights(spec, opener=opener)
    assert downloads == [spec.url] and len(opened) == 1
    npz = weights.converted_path(spec)
    assert npz == cache / f"vgg19-{digest[:8]}.npz" and npz.is_file()
    assert not (cache / spec.filename).exists()  # the .pth is dropped once converted
    assert npz.stat().st_size < len(data)  # classifier dropped
    second = weights.resolve_weights(spec, opener=opener)
    assert downloads == [spec.url] and len(opened) == 1
    _assert_params_equal(second, first)
    _assert_params_equal(first, _golden(expected, "vgg19/params/"))


def test_explicit_path_works_offline(cache):
    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    params = weights.resolve_weights("adain_decoder", FIXTURES / "adain_decoder_narrow.pth", opener=offline)
    assert tuple(params) == adain.DECODER_LAYERS
    with pytest.raises(WeightsError, match="not found: .*missing.pth; check the path$") as err:
        weights.resolve_weights("adain_decoder", "missing.pth", opener=offline)
    assert (err.value.kind, err.value.path) == ("adain_decoder", pathlib.Path("missing.pth"))


@pytest.mark.parametrize("name", sorted(weights.WEIGHTS))
def test_download_error_names_url_cache_and_kind(name, cache):
    def offline(url, timeout):
        raise urllib.error.URLError("Temporary failure in name resolution")

    spec = weights.WEIGHTS[name]
    with pytest.raises(DownloadError) as err:
        weights.resolve_weights(name, opener=offline)
    message = str(err.value)
    assert "\n" not in message
    assert spec.url in message and str(weights.converted_path(name)) in message
    assert message.endswith("and pass the file's path") and f"port_weights.py --kind {spec.kind})" in message
    assert (err.value.kind, err.value.path) == (spec.kind, None)  # the command line adds its flag
    assert "Temporary failure in name resolution" in message
    assert [p for p in cache.iterdir() if p.name.startswith(".")] == []


def test_incomplete_download(cache):
    class Short(io.BytesIO):
        headers = {"Content-Length": "100"}

    with pytest.raises(DownloadError, match="after 5 of 100 bytes"):
        weights.fetch("adain_vgg", opener=lambda url, timeout: Short(b"12345"))
    assert not (cache / weights.WEIGHTS["adain_vgg"].filename).exists()


def test_corrupt_cached_npz_says_how_to_recover(cache):
    cache.mkdir()
    weights.converted_path("vgg19").write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="delete the cached file .* to download it again"):
        weights.resolve_weights("vgg19", opener=None)


# --- scripts/port_weights.py ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def port():
    spec = importlib.util.spec_from_file_location("port_weights", ROOT / "scripts" / "port_weights.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_port_converts_and_prints_the_checksum(port, tmp_path, capsys, expected):
    out = tmp_path / "vgg.npz"
    assert port.main(["--kind", "vgg19", str(FIXTURES / "vgg19_narrow_legacy.pth"), "--output", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert f"{hashlib.sha256(out.read_bytes()).hexdigest()}  vgg.npz" in stdout
    _assert_params_equal(weights.load_vgg19(out), _golden(expected, "vgg19/params/"))


def test_port_refuses_to_overwrite(port, tmp_path, capsys):
    out = tmp_path / "dec.npz"
    out.write_bytes(b"keep me")
    argv = ["--kind", "adain_decoder", str(FIXTURES / "adain_decoder_narrow.pth"), "--output", str(out)]
    assert port.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already exists" in err and "--force" in err
    assert out.read_bytes() == b"keep me"
    assert port.main(argv + ["--force"]) == 0
    assert tuple(weights.load_adain_decoder(out)) == adain.DECODER_LAYERS


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--kind", "vgg19", "DECODER"], "; pass --kind adain_decoder"),
        (["--kind", "vgg19", "MISSING"], "weights file not found"),
        (["--kind", "adain_vgg", "EVIL"], "refused to load"),
        (["--kind", "vgg_19", "DECODER"], "invalid choice"),
    ],
)
def test_port_errors_exit_2_without_traceback(port, argv, needle, tmp_path, capsys):
    paths = {"DECODER": FIXTURES / "adain_decoder_narrow.pth", "MISSING": tmp_path / "missing.pth",
             "EVIL": FIXTURES / "evil_exec_zip.pth"}
    argv = [str(paths.get(a, a)) for a in argv] + ["--output", str(tmp_path / "o.npz")]
    assert port.main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert "--decoder" not in err and "--weights" not in err  # flags of other commands
    assert not (tmp_path / "o.npz").exists()


def test_port_checks_the_hash_in_the_file_name(port, tmp_path, capsys):
    src = tmp_path / "vgg19-deadbeef.pth"
    shutil.copy(FIXTURES / "vgg19_narrow.pth", src)
    assert port.main(["--kind", "vgg19", str(src), "--output", str(tmp_path / "o.npz")]) == 2
    assert "hash prefix" in capsys.readouterr().err


def test_unsafe_error_type_is_a_weights_error():
    assert issubclass(UnsafePickleError, WeightsError)


# --- hardening: npz readers bound what they read, downloads are pinned --------------------------


def _npz_with(path: pathlib.Path, arrays: dict, compressed: set = frozenset()) -> pathlib.Path:
    with zipfile.ZipFile(path, "w") as zf:
        for key, array in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy")
            info.compress_type = zipfile.ZIP_DEFLATED if key in compressed else zipfile.ZIP_STORED
            with zf.open(info, "w", force_zip64=True) as m:
                np.lib.format.write_array(m, np.asarray(array), allow_pickle=False)
    return path


def _narrow_flat() -> dict[str, np.ndarray]:
    params = weights.load_vgg19(FIXTURES / "vgg19_narrow.pth")
    return {f"{n}/{leaf}": v for n, leaves in params.items() for leaf, v in leaves.items()}


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda f: f.update({"conv1_1/kernel": np.full((3, 3, 3, 4), "x")}), "element type <U1, expected floating"),
        (lambda f: f.update({"conv1_1/kernel": np.zeros((3, 3, 3, 0), np.float32),
                             "conv1_1/bias": np.zeros(0, np.float32)}), "maps 3 to 0 channels"),
        (lambda f: f.update({"conv5_4/kernel": np.zeros((3, 3, f["conv5_4/kernel"].shape[2], 600), np.float32),
                             "conv5_4/bias": np.zeros(600, np.float32)}), "1 to 512 outputs"),
    ],
)
def test_npz_dtype_and_channel_bounds(edit, needle, tmp_path):
    flat = _narrow_flat()
    edit(flat)
    with pytest.raises(WeightsError, match=needle):
        weights.load_vgg19(_npz_with(tmp_path / "w.npz", flat))


def test_npz_reads_headers_before_data_and_never_inflates_unneeded_members(tmp_path, monkeypatch):
    flat = _narrow_flat()
    flat["extra/big"] = np.zeros(16 << 20, np.float32)  # 64 MiB, compressed to ~64 KB
    path = _npz_with(tmp_path / "w.npz", flat, compressed={"extra/big"})
    opened = []
    original = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open",
                        lambda self, name, *a, **k: opened.append(getattr(name, "filename", name))
                        or original(self, name, *a, **k))
    with pytest.raises(WeightsError, match=r"1 unexpected: \+extra/big \(not read\)"):
        weights.load_vgg19(path)
    assert path.stat().st_size < 2 << 20
    assert "extra/big.npy" not in opened and "conv1_1/kernel.npy" in opened
    # A too-wide kernel is refused from its header: no member's data is read.
    flat = _narrow_flat()
    flat["conv1_1/kernel"] = np.zeros((3, 3, 3, 4096), np.float32)
    flat["conv1_1/bias"] = np.zeros(4096, np.float32)
    arrays = []
    monkeypatch.setattr(weights._Npz, "array", lambda self, key: arrays.append(key))
    with pytest.raises(WeightsError, match="1 to 64 outputs"):
        weights.load_vgg19(_npz_with(tmp_path / "wide.npz", flat))
    assert arrays == []


def test_npz_encrypted_member_and_0_d_kind(tmp_path):
    path = weights.save_params(weights.load_vgg19(FIXTURES / "vgg19_narrow.pth"), tmp_path / "w.npz", kind="vgg19")
    blob = bytearray(path.read_bytes())
    blob[blob.index(b"PK\x01\x02") + 8] |= 0x1
    path.write_bytes(blob)
    with pytest.raises(WeightsError, match="is encrypted"):
        weights.load_vgg19(path)


def _adain_opener(data: bytes, calls: list):
    def opener(url, timeout):
        calls.append(url)
        return io.BytesIO(data)
    return opener


@pytest.mark.parametrize("name", ["adain_vgg", "adain_decoder"])
def test_tampered_adain_download_is_refused_and_nothing_is_cached(name, cache):
    fixture = {"adain_vgg": "adain_vgg_narrow.pth", "adain_decoder": "adain_decoder_narrow.pth"}[name]
    calls = []
    with pytest.raises(ChecksumError, match=weights.WEIGHTS[name].sha256[:16]):
        weights.resolve_weights(name, opener=_adain_opener((FIXTURES / fixture).read_bytes(), calls))
    assert calls == [weights.WEIGHTS[name].url]
    assert not cache.exists() or list(cache.iterdir()) == []


def test_cached_copy_is_verified_before_conversion(cache):
    data = (FIXTURES / "adain_decoder_narrow.pth").read_bytes()
    spec = dataclasses.replace(weights.WEIGHTS["adain_decoder"], sha256=hashlib.sha256(data).hexdigest())
    cache.mkdir()
    (cache / spec.filename).write_bytes(data[:-10])  # a truncated earlier download
    calls = []
    params = weights.resolve_weights(spec, opener=_adain_opener(data, calls))
    assert calls == [spec.url]  # the bad cached copy was not trusted
    assert set(params) == set(adain.DECODER_LAYERS)
    assert sorted(p.name for p in cache.iterdir()) == ["adain_decoder.npz"]


def test_weights_cache_that_is_a_file(tmp_path, monkeypatch):
    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    monkeypatch.setenv("NST_JAX_CACHE", str(blocker))
    with pytest.raises(DownloadError, match="is a file, not a folder; set NST_JAX_CACHE") as err:
        weights.resolve_weights("adain_vgg", opener=_adain_opener(b"", []))
    assert "\n" not in str(err.value)
    assert blocker.read_text() == "not a folder"


def test_stored_npz_members_are_read_in_one_pass_and_crc_checked(tmp_path):
    # Stored (uncompressed) members, as np.savez writes them, are read straight into their arrays;
    # zipfile's CRC check still applies: one flipped data byte is refused.
    params = weights.load_vgg19(FIXTURES.parent / "gatys" / "vgg19_narrow.pth")
    path = weights.save_params(params, tmp_path / "w.npz", kind="vgg19")
    with zipfile.ZipFile(path) as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}
        info = z.getinfo("conv5_4/kernel.npy")
    loaded = weights.load(path, "vgg19")
    for name in params:
        for slot in ("kernel", "bias"):
            np.testing.assert_array_equal(loaded[name][slot], params[name][slot])
    data = bytearray(path.read_bytes())
    # A byte inside the 36 KB kernel's data: past its local header (< 100 bytes), before its end.
    data[info.header_offset + info.compress_size] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="CRC"):
        weights.load(path, "vgg19")
