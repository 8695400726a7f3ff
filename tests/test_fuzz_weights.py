"""Property-based fuzzing of the weights readers: damaged files load unchanged or raise WeightsError.

Random byte changes, truncations, chunk swaps and splices of small valid files (the torch.save
fixtures and an npz written by save_params) must either give exactly the original values (zip and
npz members are CRC-checked, so a change that survives reading touched no value) or raise the
project's own WeightsError: never another exception, never a hang, never an unbounded allocation.
The legacy format has no checksum, so a changed data byte legitimately changes a value there; its
property is the error type and that the result is well-formed.
"""

from __future__ import annotations

import io
import pathlib
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nst_jax import _pth, weights
from nst_jax.errors import WeightsError

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "weights"
SECONDS_PER_EXAMPLE = 10.0  # generous for 2 shared cores; a real read of these files takes milliseconds


@st.composite
def _mutation(draw, blob: bytes) -> bytes:
    """One to three edits, aimed at the structured ends of the file as often as at its middle."""
    data = bytearray(blob)
    for _ in range(draw(st.integers(1, 3))):
        n = len(data)
        if n < 2:
            break
        region = draw(st.sampled_from(["head", "tail", "any"]))
        lo, hi = {"head": (0, min(n, 700)), "tail": (max(0, n - 700), n), "any": (0, n)}[region]
        pos = draw(st.integers(lo, hi - 1))
        op = draw(st.sampled_from(["set", "flip", "truncate", "swap", "splice", "delete"]))
        if op == "set":
            data[pos] = draw(st.integers(0, 255))
        elif op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        elif op == "swap":
            size = draw(st.integers(1, 64))
            other = draw(st.integers(0, n - 1))
            a, b = bytes(data[pos:pos + size]), bytes(data[other:other + size])
            if len(a) == len(b) and (pos + size <= other or other + size <= pos):
                data[pos:pos + size], data[other:other + size] = b, a
        elif op == "splice":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[pos:pos + draw(st.integers(1, 64))]
    return bytes(data)


def _check(path: pathlib.Path, read, reference) -> None:
    start = time.perf_counter()
    try:
        got = read(path)
    except WeightsError as err:
        assert "\n" not in str(err)
    else:
        reference(got)
    assert time.perf_counter() - start < SECONDS_PER_EXAMPLE


def _same_state(want: dict[str, np.ndarray]):
    def check(got):
        assert list(got) == list(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    return check


def _same_params(want):
    def check(got):
        assert list(got) == list(want)
        for name in want:
            for leaf in ("kernel", "bias"):
                np.testing.assert_array_equal(got[name][leaf], want[name][leaf])
    return check


def _well_formed(got):
    for value in got.values():
        assert value.dtype == np.float32 and value.size <= _pth.MAX_TENSOR_ELEMENTS


_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("name", ["dtypes.pth", "adain_decoder_narrow.pth"])
@_FUZZ
@given(data=st.data())
def test_zip_pth_mutations(name, data, tmp_path):
    blob = (FIXTURES / name).read_bytes()
    path = tmp_path / "w.pth"
    path.write_bytes(data.draw(_mutation(blob)))
    _check(path, _pth.read_state_dict, _same_state(_pth.read_state_dict(FIXTURES / name)))


@_FUZZ
@given(data=st.data())
def test_zip_pth_loader_mutations(data, tmp_path):
    name = "adain_decoder_narrow.pth"
    path = tmp_path / "w.pth"
    path.write_bytes(data.draw(_mutation((FIXTURES / name).read_bytes())))
    _check(path, weights.load_adain_decoder, _same_params(weights.load_adain_decoder(FIXTURES / name)))


@pytest.mark.parametrize("name", ["dtypes_legacy.pth", "vgg19_narrow_legacy.pth"])
@_FUZZ
@given(data=st.data())
def test_legacy_pth_mutations(name, data, tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(data.draw(_mutation((FIXTURES / name).read_bytes())))
    _check(path, _pth.read_state_dict, _well_formed)


def _decoder_npz() -> tuple[bytes, dict]:
    params = weights.load_adain_decoder(FIXTURES / "adain_decoder_narrow.pth")
    flat = {f"{n}/{leaf}": v for n, leaves in params.items() for leaf, v in leaves.items()}
    buf = io.BytesIO()
    weights._write_npz(buf, flat)  # the bytes save_params writes
    return buf.getvalue(), params


_NPZ, _NPZ_PARAMS = _decoder_npz()


@_FUZZ
@given(blob=_mutation(_NPZ))
def test_npz_mutations(blob, tmp_path):
    path = tmp_path / "w.npz"
    path.write_bytes(blob)
    _check(path, weights.load_adain_decoder, _same_params(_NPZ_PARAMS))
    _check(path, weights.load_params, _same_params(_NPZ_PARAMS))
