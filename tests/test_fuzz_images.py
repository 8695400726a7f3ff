"""Property-based fuzzing of the image readers (nst_jax.image.load_image and image_size).

Small valid PNG (8-bit, 16-bit colour, 16-bit gray+alpha, palette) and JPEG files are made here,
then damaged: bytes flipped, cut short, chunks duplicated, dropped, reordered or inserted. Every
damaged file must either load or raise InputImageError; nothing else may escape, and when both
readers accept a file they must agree on its size (the memory budget is computed from
image_size). Damage that leaves the header and pixel data of a PNG intact, such as a reordered
or inserted ancillary chunk, must load the original values or be refused.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from nst_jax import image as nimg
from nst_jax.errors import InputImageError

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _split(png: bytes) -> list[bytes]:
    """The chunks of a valid PNG, each as its full bytes (length, type, body, CRC)."""
    chunks, pos = [], len(SIGNATURE)
    while pos < len(png):
        length = struct.unpack(">I", png[pos:pos + 4])[0]
        chunks.append(png[pos:pos + 12 + length])
        pos += 12 + length
    return chunks


def _png16(samples: np.ndarray, ctype: int) -> bytes:
    """A 16-bit PNG (filter 0 on every row) with an eXIf chunk after the pixels."""
    h, w, c = samples.shape
    rows = samples.astype(">u2").view(np.uint8).reshape(h, w * c * 2)
    raw = b"".join(b"\x00" + r.tobytes() for r in rows)  # filter 0: exact by construction
    exif = Image.Exif()
    exif[0x0112] = 1
    return (SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"eXIf", exif.tobytes())
            + _chunk(b"IEND", b""))


def _encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


RNG = np.random.default_rng(1)
_RGB = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
SOURCES = {
    "png8": _encoded(Image.fromarray(_RGB), "PNG"),
    "png8-palette": _encoded(Image.fromarray(_RGB).quantize(7), "PNG"),
    "png16-rgb": _png16(RNG.integers(0, 65536, (5, 4, 3), dtype=np.uint16), 2),
    "png16-gray-alpha": _png16(RNG.integers(0, 65536, (4, 3, 2), dtype=np.uint16), 4),
    "jpeg": _encoded(Image.fromarray(_RGB), "JPEG", quality=90),
}


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-originals")
    out = {}
    for name, data in SOURCES.items():
        path = folder / name
        path.write_bytes(data)
        out[name] = nimg.load_image(path)
    return out


def _check(path, name=None, originals=None, same_pixels: bool = False) -> None:
    """Both readers either succeed consistently or raise InputImageError; nothing else."""
    try:
        size = nimg.image_size(path)
    except InputImageError as err:
        assert "\n" not in str(err)
        size = None
    try:
        image = nimg.load_image(path)
    except InputImageError as err:
        assert "\n" not in str(err)
        return
    assert image.dtype == np.float32 and image.ndim == 3 and image.shape[-1] == 3
    assert np.all(np.isfinite(image)) and image.min() >= 0.0 and image.max() <= 1.0
    # What the memory budget is computed from is what was decoded.
    assert size == image.shape[:2]
    if same_pixels:
        np.testing.assert_array_equal(image, originals[name])


@settings(max_examples=90, **SETTINGS)
@given(name=st.sampled_from(sorted(SOURCES)), data=st.data())
def test_byte_mutations(tmp_path, name, data):
    source = bytearray(SOURCES[name])
    edits = data.draw(st.lists(st.tuples(st.integers(0, len(source) - 1), st.integers(0, 255)),
                               min_size=1, max_size=4))
    for pos, value in edits:
        source[pos] = value
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(source))))
    path = tmp_path / "m"
    path.write_bytes(bytes(source[:cut]))
    _check(path)


@settings(max_examples=60, **SETTINGS)
@given(name=st.sampled_from([n for n in sorted(SOURCES) if n.startswith("png")]), data=st.data())
def test_png_chunk_shuffles(tmp_path, name, data):
    chunks = _split(SOURCES[name])
    ops = data.draw(st.lists(st.sampled_from(["dup", "drop", "swap", "move"]), min_size=1,
                             max_size=3))
    for op in ops:
        i = data.draw(st.integers(0, len(chunks) - 1))
        j = data.draw(st.integers(0, len(chunks)))
        if op == "dup":
            chunks.insert(j, chunks[i])
        elif op == "drop" and len(chunks) > 1:
            del chunks[i]
        elif op == "swap":
            j = min(j, len(chunks) - 1)
            chunks[i], chunks[j] = chunks[j], chunks[i]
        else:
            chunks.insert(j, chunks.pop(i))
    path = tmp_path / "c.png"
    path.write_bytes(SIGNATURE + b"".join(chunks))
    _check(path)


@settings(max_examples=40, **SETTINGS)
@given(name=st.sampled_from([n for n in sorted(SOURCES) if n.startswith("png")]),
       kind=st.sampled_from([b"tEXt", b"zzZz", b"pHYs", b"IHDR", b"PLTE", b"IDAT", b"ABCD"]),
       body=st.binary(max_size=40), where=st.integers(1, 10))
def test_png_inserted_chunks_keep_values_or_are_refused(tmp_path, originals, name, kind, body,
                                                        where):
    chunks = _split(SOURCES[name])
    chunks.insert(min(where, len(chunks) - 1), _chunk(kind, body))
    path = tmp_path / "i.png"
    path.write_bytes(SIGNATURE + b"".join(chunks))
    # A second IHDR, PLTE or IDAT, or an unknown critical chunk, must be refused; ancillary
    # chunks leave the header and pixels alone, so the values must not change.
    harmless = kind in (b"tEXt", b"zzZz") or (kind == b"pHYs" and len(body) == 9)
    _check(path, name, originals, same_pixels=harmless)
    if kind in (b"IHDR", b"ABCD"):
        with pytest.raises(InputImageError):
            nimg.load_image(path)
        with pytest.raises(InputImageError):
            nimg.image_size(path)
