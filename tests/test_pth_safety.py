"""The .pth reader never runs pickled code and turns every malformed file into a WeightsError.

Fixtures come from scripts/make_weight_fixtures.py (real torch.save output and malicious pickles
whose payloads that script verified to fire under pickle / torch.load).
"""

from __future__ import annotations

import io
import os
import pathlib
import pickle
import struct
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nst_jax import _pth, weights
from nst_jax.errors import UnsafePickleError, WeightsError

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "weights"
MARKER = "nst_jax_pwned_marker"

EVIL = {
    "evil_os_system.pkl": "posix.system",
    "evil_exec.pkl": "builtins.exec",
    "evil_exec_legacy.pth": "exec",
    "evil_exec_zip.pth": "exec",
    "evil_torch_os_system.pth": "torch.os.system",
    "evil_torch_serialization.pth": "torch.serialization.os.system",
}


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Runs the test inside tmp_path, where a fired payload would create the marker."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _restricted(data: bytes, **kwargs):
    return _pth.RestrictedUnpickler(io.BytesIO(data), **kwargs).load()


# --- malicious files ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EVIL))
def test_malicious_checkpoint_is_refused_and_nothing_runs(name, in_tmp):
    with pytest.raises(UnsafePickleError, match="nothing was executed") as err:
        _pth.read_state_dict(FIXTURES / name)
    assert EVIL[name] in str(err.value)
    assert "\n" not in str(err.value)
    assert not (in_tmp / MARKER).exists()


@pytest.mark.parametrize("loader", [weights.load_vgg19, weights.load_adain_vgg, weights.load_adain_decoder])
def test_loaders_refuse_malicious_zip(loader, in_tmp):
    with pytest.raises(UnsafePickleError):
        loader(FIXTURES / "evil_exec_zip.pth")
    assert not (in_tmp / MARKER).exists()


@pytest.mark.parametrize("name", ["evil_exec.pkl", "evil_os_system.pkl"])
def test_payload_is_live_under_plain_pickle(name, tmp_path):
    # The same bytes do run code under the standard unpickler, so the refusal above is meaningful.
    code = "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))"
    subprocess.run([sys.executable, "-c", code, str(FIXTURES / name)], cwd=tmp_path,
                   capture_output=True, check=False, timeout=60)
    assert (tmp_path / MARKER).exists()


@pytest.mark.parametrize(
    "data, needle",
    [
        (b"\x80\x02ctorch\nload\nX\x01\x00\x00\x00x\x85R.", "torch.load"),
        (b"\x80\x02ctorch._utils\n_rebuild_device_tensor_from_numpy\n.", "_rebuild_device_tensor"),
        (b"\x80\x02ctorch.serialization\nload\n.", "torch.serialization.load"),
        (b"cos\nsystem\n(S'echo pwned'\ntR.", "os.system"),  # protocol 0
        (b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.", "builtins.eval"),
        (b"\x80\x02csubprocess\nPopen\n.", "subprocess.Popen"),
        (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\n.", "numpy"),
    ],
)
def test_unlisted_globals_are_refused(data, needle):
    with pytest.raises(UnsafePickleError, match="nothing was executed") as err:
        _restricted(data)
    assert needle in str(err.value)


@pytest.mark.parametrize(
    "data, needle",
    [
        (b"\x80\x02ccollections\nOrderedDict\n)\x81.", "NEWOBJ"),
        (b"(ibuiltins\nlist\n.", "INST"),
        (b"(ccollections\nOrderedDict\no.", "OBJ"),
        (b"\x80\x02\x82\x01.", "EXT1"),
        (b"\x80\x04ccollections\nOrderedDict\n)}\x92.", "NEWOBJ_EX"),
        # REDUCE on something that is allowlisted but not a function
        (b"\x80\x02ctorch\nFloatStorage\n)R.", "StorageType"),
        (b"\x80\x02X\x04\x00\x00\x00evil)R.", "str"),
        # BUILD may only fill a dict (the state dict's _metadata), never set attributes elsewhere
        (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}b.", "BUILD"),
        # container opcodes applied to something other than the container they expect
        (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nK\x01K\x02s.", "SETITEM"),
        (b"\x80\x02)K\x01a.", "APPEND"),
    ],
)
def test_object_building_opcodes_are_refused(data, needle):
    with pytest.raises(UnsafePickleError) as err:
        _restricted(data)
    assert needle in str(err.value)


def test_rebuild_from_type_calls_only_allowlisted_functions():
    # _rebuild_from_type_v2(func, type, args, state) with func = OrderedDict is fine; with a storage
    # type object it must be refused rather than called.
    ok = b"\x80\x02ctorch._tensor\n_rebuild_from_type_v2\n(ccollections\nOrderedDict\nctorch\nTensor\n)NtR."
    assert _restricted(ok) == {}
    bad = b"\x80\x02ctorch._tensor\n_rebuild_from_type_v2\n(ctorch\nFloatStorage\nctorch\nTensor\n)NtR."
    with pytest.raises(UnsafePickleError):
        _restricted(bad)


def test_rebuild_tensor_v3_reinterprets_an_untyped_storage():
    # _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype): an 8-byte
    # UntypedStorage read as two float32 elements.
    blob = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v3\n("
            b"(X\x07\x00\x00\x00storagectorch\nUntypedStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x08tQ"
            b"K\x01K\x01\x85K\x01\x85\x89ccollections\nOrderedDict\n)Rctorch\nfloat32\ntR.")
    ref = _restricted(blob, persistent_load=_storage_pid)
    assert ref.storage.type.name == "FloatStorage" and ref.storage.numel == 2
    assert (ref.offset, ref.shape, ref.stride) == (1, (1,), (1,))


# --- agreement with the standard library on benign data -------------------------------------------

_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20)


def _data(extra):
    return st.recursive(
        _scalars | extra,
        lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), inner, max_size=4),
        max_leaves=12,
    )


@settings(max_examples=60, deadline=None)
@given(data=st.data(), protocol=st.integers(0, pickle.HIGHEST_PROTOCOL))
def test_plain_data_round_trips_like_pickle(data, protocol):
    # bytes need codecs.encode below protocol 3 and sets need builtins.set below 4 (both refused).
    extra = st.nothing()
    if protocol >= 3:
        extra = extra | st.binary(max_size=20)
    if protocol >= 5:
        extra = extra | st.binary(max_size=5).map(bytearray)
    value = data.draw(_data(extra))
    if protocol >= 4:
        value = [value, data.draw(st.frozensets(st.integers(0, 9), max_size=3)),
                 data.draw(st.sets(st.text(max_size=3), max_size=3))]
    blob = pickle.dumps(value, protocol=protocol)
    assert _restricted(blob) == pickle.loads(blob)


def _data_pkl(path: pathlib.Path) -> bytes:
    with zipfile.ZipFile(path) as zf:
        return zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))


def _storage_pid(pid):
    return _pth.StorageRef(pid[2], pid[1], pid[4])


def test_every_truncation_of_a_real_pickle_is_a_weights_error():
    blob = _data_pkl(FIXTURES / "dtypes.pth")
    for n in range(len(blob)):
        with pytest.raises(WeightsError):
            _restricted(blob[:n], persistent_load=_storage_pid)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_corrupted_pickles_raise_only_weights_errors(data):
    blob = bytearray(_data_pkl(FIXTURES / "dtypes.pth"))
    for _ in range(data.draw(st.integers(1, 4))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    try:
        _restricted(bytes(blob), persistent_load=_storage_pid)
    except WeightsError:
        pass


# --- container formats ----------------------------------------------------------------------------


def _rezip(src: pathlib.Path, dst: pathlib.Path, replace: dict[str, bytes]) -> pathlib.Path:
    """Copies a torch zip, replacing records whose name ends with a key of ``replace``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = next((v for k, v in replace.items() if info.filename.endswith(k)), None)
            zout.writestr(info, zin.read(info) if data is None else data)
    return dst


def test_state_dict_wrapped_in_a_checkpoint_dict(tmp_path):
    # {"state_dict": <the original OrderedDict>}, as training scripts often save.
    body = _data_pkl(FIXTURES / "dtypes.pth")
    assert body[:2] == b"\x80\x02" and body[-1:] == b"."
    wrapped = b"\x80\x02}X\x0a\x00\x00\x00state_dict" + body[2:-1] + b"s."
    path = _rezip(FIXTURES / "dtypes.pth", tmp_path / "wrapped.pth", {"/data.pkl": wrapped})
    direct = _pth.read_state_dict(FIXTURES / "dtypes.pth")
    got = _pth.read_state_dict(path)
    assert got.keys() == direct.keys()
    for k in direct:
        np.testing.assert_array_equal(got[k], direct[k])


def test_non_dict_pickle_is_not_a_state_dict(tmp_path):
    path = _rezip(FIXTURES / "dtypes.pth", tmp_path / "list.pth", {"/data.pkl": pickle.dumps([1, 2], protocol=2)})
    with pytest.raises(WeightsError, match="holds a list, not a state dict"):
        _pth.read_state_dict(path)


def test_missing_storage_record_is_reported(tmp_path):
    src = FIXTURES / "dtypes.pth"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp_path / "x.pth", "w") as zout:
        for info in zin.infolist():
            if not info.filename.endswith("/data/0"):
                zout.writestr(info, zin.read(info))
    with pytest.raises(WeightsError, match="missing"):
        _pth.read_state_dict(tmp_path / "x.pth")


def test_short_storage_record_is_reported(tmp_path):
    path = _rezip(FIXTURES / "dtypes.pth", tmp_path / "short.pth", {"/data/0": b"\x00\x00"})
    with pytest.raises(WeightsError, match="bytes, expected"):
        _pth.read_state_dict(path)


@pytest.mark.parametrize("name", ["vgg19_narrow.pth", "vgg19_narrow_legacy.pth", "dtypes.pth", "dtypes_legacy.pth"])
@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.3, 0.6, 0.97])
def test_truncated_files_raise_weights_error(name, fraction, tmp_path):
    data = (FIXTURES / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(WeightsError) as err:
        _pth.read_state_dict(path)
    assert "\n" not in str(err.value)


def test_legacy_bad_magic(tmp_path):
    path = tmp_path / "bad.pth"
    path.write_bytes(pickle.dumps(12345, protocol=2) + pickle.dumps(1001, protocol=2))
    with pytest.raises(WeightsError, match="bad magic number"):
        _pth.read_state_dict(path)


def test_tar_checkpoint_is_not_supported(tmp_path):
    path = tmp_path / "old.pth"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("pickle")
        payload = pickle.dumps({}, protocol=2)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(WeightsError, match="tar checkpoint"):
        _pth.read_state_dict(path)


@pytest.mark.parametrize("content, needle", [(b"", "empty"), (b"hello world\n" * 10, "not a PyTorch checkpoint")])
def test_not_a_checkpoint(content, needle, tmp_path):
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=needle):
        _pth.read_state_dict(path)


def test_zip_without_data_pkl(tmp_path):
    path = tmp_path / "x.pth"
    with open(path, "wb") as f:
        np.savez(f, a=np.zeros(2))
    with pytest.raises(WeightsError, match="no data.pkl"):
        _pth.read_state_dict(path)


def test_directory_and_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="is a directory"):
        _pth.read_state_dict(tmp_path)
    with pytest.raises(WeightsError, match="not found"):
        _pth.read_state_dict(tmp_path / "nope.pth")


def test_tensor_reaching_past_its_storage_is_refused(tmp_path):
    # Enlarge the recorded shape of "f32" (2x3 over a 6-element storage) to 3x3 in the pickle.
    blob = _data_pkl(FIXTURES / "dtypes.pth")
    key = b"X\x03\x00\x00\x00f32"
    start = blob.index(key)
    shape = blob.index(b"K\x02K\x03", start)
    patched = blob[:shape] + b"K\x03K\x03" + blob[shape + 4:]
    path = _rezip(FIXTURES / "dtypes.pth", tmp_path / "past.pth", {"/data.pkl": patched})
    with pytest.raises(WeightsError, match="needs 9 elements of a storage of 6"):
        _pth.read_state_dict(path)


# --- resource bounds: nesting, cycles, sizes (issue: crafted files crashed, hung or ate memory) -----

_DEEP_KEY = b"\x80\x02})" + b"\x85" * 200_000 + b"K\x01s."  # 200,000 nested tuples as a dict key
_SELF_DICT = b"\x80\x02}q\x00X\x0a\x00\x00\x00state_dicth\x00s."  # {"state_dict": <itself>}


def _tensor_pickle(numel: int, shape: tuple[int, ...], stride: tuple[int, ...], key: str = "0") -> bytes:
    """A protocol-2 state dict {"w": tensor} whose storage record and window are as given."""

    def tup(values):
        return b"(" + b"".join(b"J" + struct.pack("<i", v) if v < 2**31 else b"\x8a\x08" + struct.pack("<q", v)
                               for v in values) + b"t"

    def num(v):
        return b"J" + struct.pack("<i", v) if v < 2**31 else b"\x8a\x08" + struct.pack("<q", v)

    k = key.encode()
    pid = b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX" + struct.pack("<I", len(k)) + k + b"X\x03\x00\x00\x00cpu" + num(numel) + b"t"
    return (b"\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n(" + pid + b"QK\x00" + tup(shape)
            + tup(stride) + b"\x89ccollections\nOrderedDict\n)RtRs.")


def _zip_pth(path: pathlib.Path, pkl: bytes, records: dict[str, bytes], method=zipfile.ZIP_STORED) -> pathlib.Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a/data.pkl", pkl)
        zf.writestr("a/byteorder", "little")
        for key, data in records.items():
            zf.writestr(zipfile.ZipInfo(f"a/data/{key}"), data, compress_type=method)
    return path


def _legacy_pth(path: pathlib.Path, obj: bytes, keys: bytes, tail: bytes) -> pathlib.Path:
    head = (pickle.dumps(_pth._LEGACY_MAGIC, protocol=2) + pickle.dumps(_pth._LEGACY_PROTOCOL, protocol=2)
            + pickle.dumps({"little_endian": True}, protocol=2))
    path.write_bytes(head + obj + keys + tail)
    return path


def test_zip_and_legacy_helpers_build_readable_files(tmp_path):
    # The crafted files below differ from these only in the field under test.
    data = np.arange(6, dtype="<f4")
    z = _zip_pth(tmp_path / "ok.pth", _tensor_pickle(6, (2, 3), (3, 1)), {"0": data.tobytes()})
    legacy = _legacy_pth(tmp_path / "ok_legacy.pth", _tensor_pickle(6, (3, 2), (1, 3)),
                         pickle.dumps(["0"], protocol=2), struct.pack("<q", 6) + data.tobytes())
    np.testing.assert_array_equal(_pth.read_state_dict(z)["w"], data.reshape(2, 3))
    np.testing.assert_array_equal(_pth.read_state_dict(legacy)["w"], data.reshape(2, 3).T)


@pytest.mark.parametrize(
    "blob, needle",
    [
        (_DEEP_KEY, "nests containers more than 16 deep"),
        (b"\x80\x02" + b"]" * 40 + b"a" * 39 + b".", "nests containers"),
        (_SELF_DICT, "already nested"),
        (b"\x80\x02]q\x00h\x00a.", "already nested"),  # a list appended to itself
        (b"\x80\x02]q\x00]q\x01h\x00ah\x01a.", "already nested"),  # a contains b contains a
        (b"\x80\x02}]K\x01s.", "unhashable"),
        (b"\x80\x02]" + b"N" * (2 << 20) + b".", "larger than 1048576 bytes"),
        (b"\x80\x02" + b"]" * (1 << 18) + b".", "more than 131072 containers"),
        (b"\x80\x04N" + b"\x94" * (1 << 18) + b".", "more than 131072 memo entries"),
        (b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b".", "larger than"),  # BINBYTES8 of 1 TiB
        (b"\x80\x02X" + struct.pack("<I", 2**32 - 1) + b".", "larger than"),
    ],
)
def test_nesting_cycles_and_size_are_bounded(blob, needle):
    with pytest.raises(WeightsError, match=needle) as err:
        _restricted(blob)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400


def test_nesting_of_a_real_state_dict_is_far_below_the_bound():
    # A state dict with _metadata and a wrapper nests ~5 levels; the bound leaves room for more.
    value = {"state_dict": {"a": [(1, (2, (3,)))], "_meta": {"": {"version": 1}}}}
    assert _restricted(pickle.dumps(value, protocol=2)) == value


def test_crafted_zip_files_are_refused(tmp_path):
    for name, pkl in (("deep", _DEEP_KEY), ("cyclic", _SELF_DICT)):
        with pytest.raises(WeightsError, match="nests|already nested"):
            _pth.read_state_dict(_zip_pth(tmp_path / f"{name}.pth", pkl, {}))


@pytest.mark.parametrize(
    "shape, stride, needle",
    [
        ((2**62,), (1,), "more than 268435456 elements"),
        ((1 << 20, 1 << 10), (0, 0), "more than 268435456 elements"),  # zero-stride expansion
        ((4,), (2**40,), "needs"),
    ],
)
def test_declared_tensor_sizes_are_bounded_before_reading(shape, stride, needle, tmp_path):
    path = _zip_pth(tmp_path / "big.pth", _tensor_pickle(4, shape, stride), {"0": bytes(16)})
    with pytest.raises(WeightsError, match=needle):
        _pth.read_state_dict(path)


def test_zero_stride_tensor_within_the_bound_is_read(tmp_path):
    # torch.save keeps expanded views with stride 0; within the bound they read like torch reads them.
    path = _zip_pth(tmp_path / "expand.pth", _tensor_pickle(2, (3, 2), (0, 1)),
                    {"0": np.array([5, 7], "<f4").tobytes()})
    np.testing.assert_array_equal(_pth.read_state_dict(path)["w"], [[5, 7]] * 3)


def test_storage_record_is_read_only_as_far_as_tensors_reach(tmp_path):
    import tracemalloc

    data = np.arange(4, dtype="<f4").tobytes() + bytes(64 << 20)  # 64 MiB of zeros behind 4 floats
    path = _zip_pth(tmp_path / "bomb.pth", _tensor_pickle(len(data) // 4, (4,), (1,)), {"0": data},
                    method=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        got = _pth.read_state_dict(path)["w"]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got, [0, 1, 2, 3])
    assert peak < 4 << 20


def test_oversized_pickle_entry_is_refused_by_its_declared_size(tmp_path):
    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/data.pkl", b"\x80\x02]" + b"N" * (8 << 20) + b".")
    assert path.stat().st_size < 100_000
    with pytest.raises(WeightsError, match="declares 8388612 bytes"):
        _pth.read_state_dict(path)


def test_encrypted_and_unsupported_zip_entries(tmp_path):
    src = FIXTURES / "vgg19_narrow.pth"
    blob = bytearray(src.read_bytes())
    central = blob.index(b"PK\x01\x02")  # the first central-directory record: data.pkl
    blob[central + 8] |= 0x1
    (tmp_path / "enc.pth").write_bytes(blob)
    with pytest.raises(WeightsError, match="is encrypted"):
        _pth.read_state_dict(tmp_path / "enc.pth")
    path = tmp_path / "bz2.pth"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info), compress_type=zipfile.ZIP_BZIP2)
    with pytest.raises(WeightsError, match="compression method 12"):
        _pth.read_state_dict(path)


def test_legacy_lengths_and_key_list(tmp_path):
    data = struct.pack("<q", 4) + bytes(16)
    keys = pickle.dumps(["0"], protocol=2)
    huge = _legacy_pth(tmp_path / "huge.pth", _tensor_pickle(1 << 40, (4,), (1,)), keys,
                       struct.pack("<q", 1 << 40) + bytes(16))
    with pytest.raises(WeightsError, match="truncated"):
        _pth.read_state_dict(huge)
    unlisted = _legacy_pth(tmp_path / "unlisted.pth", _tensor_pickle(4, (4,), (1,)),
                           pickle.dumps([], protocol=2), data)
    with pytest.raises(WeightsError, match="missing from the storage key list"):
        _pth.read_state_dict(unlisted)
    repeated = _legacy_pth(tmp_path / "rep.pth", _tensor_pickle(4, (4,), (1,)),
                           pickle.dumps(["0", "0"], protocol=2), data + data)
    with pytest.raises(WeightsError, match="repeats a key"):
        _pth.read_state_dict(repeated)
    blob = b"\x80\x02" + b"(" * 10 + b"N" * (1 << 20)  # a pickle that never stops, bigger than the bound
    with pytest.raises(WeightsError, match="larger than"):
        _pth.read_state_dict(_legacy_pth(tmp_path / "endless.pth", blob, b"", b""))


def test_legacy_readline_is_bounded(tmp_path):
    # Protocol-0 opcodes read a line: a file without newlines must not be read whole.
    path = tmp_path / "line.pth"
    head = pickle.dumps(_pth._LEGACY_MAGIC, protocol=2)
    path.write_bytes(head + b"I" + b"1" * (4 << 20))
    with pytest.raises(WeightsError, match="larger than"):
        _pth.read_state_dict(path)


def test_fifo_is_not_a_regular_file_and_is_never_opened_blocking(tmp_path):
    import signal

    fifo = tmp_path / "w.pth"
    os.mkfifo(fifo)
    old = signal.signal(signal.SIGALRM, lambda *a: pytest.fail("opening the FIFO blocked"))
    signal.alarm(20)
    try:
        with pytest.raises(WeightsError, match="not a regular file"):
            _pth.open_checkpoint(fifo)
        with pytest.raises(WeightsError, match="not a regular file"):
            weights.load_adain_vgg(fifo)
        with pytest.raises(WeightsError, match="not a regular file"):
            weights.load_vgg19(fifo)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize(
    "module, flag, make",
    [
        ("nst_jax.gatys", "--weights", lambda d: (d / "deep.pth").write_bytes(_DEEP_KEY) and d / "deep.pth"),
        ("nst_jax.adain", "--vgg", lambda d: _zip_pth(d / "cyclic.pth", _SELF_DICT, {})),
        ("nst_jax.adain", "--vgg", lambda d: os.mkfifo(d / "fifo.pth") or d / "fifo.pth"),
    ],
)
def test_cli_refuses_crafted_weights_with_one_line(module, flag, make, tmp_path):
    from PIL import Image

    weights_path = make(tmp_path)
    Image.new("RGB", (16, 16), (120, 60, 30)).save(tmp_path / "c.png")
    args = [sys.executable, "-m", module, flag, str(weights_path), "--content", str(tmp_path / "c.png"),
            "--style", str(tmp_path / "c.png"), "--output", str(tmp_path / "out.png")]
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parent.parent), "NST_JAX_CACHE": str(tmp_path)}
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    # ru_maxrss of that child alone (wait4 reaps it; communicate already collected the status).
    err = stderr.decode()
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert str(weights_path.name) in lines[0]
    assert not (tmp_path / "out.png").exists()


@pytest.mark.skipif(not pathlib.Path("/proc/self/status").exists(), reason="needs Linux /proc for VmHWM")
def test_refusing_crafted_weights_is_fast_and_small(tmp_path):
    # The same refusals as the CLI test, measured in a child without JAX: time and peak memory.
    # VmHWM is the child's own peak (ru_maxrss would include the parent's before exec).
    code = (
        "import re, sys, time; from nst_jax import _pth, errors\n"
        "t = time.perf_counter()\n"
        "for p in sys.argv[1:]:\n"
        "    try: _pth.read_state_dict(p)\n"
        "    except errors.WeightsError: pass\n"
        "    else: raise SystemExit('accepted ' + p)\n"
        "hwm = re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1)\n"
        "print(time.perf_counter() - t, hwm)\n"
    )
    (tmp_path / "deep.pth").write_bytes(_DEEP_KEY)
    big = tmp_path / "bomb.pth"
    with zipfile.ZipFile(big, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("a/data.pkl", "w", force_zip64=True) as f:
        f.write(b"\x80\x02]")
        for _ in range(600):
            f.write(b"N" * (1 << 20))
        f.write(b".")
    files = [tmp_path / "deep.pth", _zip_pth(tmp_path / "cyclic.pth", _SELF_DICT, {}), big]
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parent.parent)}
    out = subprocess.run([sys.executable, "-c", code, *map(str, files)], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    seconds, peak_kib = float(out[0]), int(out[1])
    assert seconds < 10
    assert peak_kib < 200 * 1024  # numpy import included; the 600 MB entry is never inflated
