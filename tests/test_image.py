"""Tests for nst_jax.image: decoding every mode, errors, resizing and atomic saving.

References are closed forms (compositing over white, 65535 -> 1.0, EXIF rotations as NumPy
rotations, an ICC profile with swapped primaries) or Pillow's own decoders where only the layout
is at stake; PNG files with every row filter are built byte by byte here.
"""

from __future__ import annotations

import errno
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms, ImageOps

from nst_jax import image as nimg
from nst_jax.errors import ConfigError, InputImageError, NonFiniteLossError, OutputPathError

RNG = np.random.default_rng(0)
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ----------------------------------------------------------------------------------------------
# Helpers that write test files independently of the code under test


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _filter_rows(raw: np.ndarray, kinds: list[int], bpp: int) -> bytes:
    """PNG row filtering written the slow, obvious way (PNG spec section 9.2)."""
    out = bytearray()
    height, row_len = raw.shape
    for y in range(height):
        kind = kinds[y % len(kinds)]
        out.append(kind)
        for x in range(row_len):
            a = int(raw[y, x - bpp]) if x >= bpp else 0
            b = int(raw[y - 1, x]) if y > 0 else 0
            c = int(raw[y - 1, x - bpp]) if (x >= bpp and y > 0) else 0
            pred = [0, a, b, (a + b) // 2, _paeth(a, b, c)][kind]
            out.append((int(raw[y, x]) - pred) % 256)
    return bytes(out)


def _png16(samples: np.ndarray, ctype: int, kinds=(0, 1, 2, 3, 4), extra: bytes = b"",
           cut: int = 0) -> bytes:
    """A 16-bit PNG of uint16 ``samples`` (H, W, C) using the given row filters in turn."""
    height, width, channels = samples.shape
    raw = samples.astype(">u2").view(np.uint8).reshape(height, width * channels * 2)
    data = zlib.compress(_filter_rows(raw, list(kinds), channels * 2))
    data = data[: len(data) - cut]
    ihdr = struct.pack(">IIBBBBB", width, height, 16, ctype, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", data)
            + _chunk(b"IEND", b""))


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _rgb_profile(red, green, blue, name: str = "test primaries") -> bytes:
    """A minimal ICC v2 matrix/TRC RGB profile with linear tone curves."""
    def xyz(v):
        return b"XYZ " + b"\0" * 4 + b"".join(_s15(c) for c in v)
    text = name.encode() + b"\0"
    desc = b"desc" + b"\0" * 4 + struct.pack(">I", len(text)) + text + b"\0" * 78
    curv = b"curv" + b"\0" * 4 + struct.pack(">IH", 1, 256) + b"\0\0"
    tags = [(b"desc", desc), (b"wtpt", xyz((0.9642, 1.0, 0.8249))), (b"rXYZ", xyz(red)),
            (b"gXYZ", xyz(green)), (b"bXYZ", xyz(blue)), (b"rTRC", curv), (b"gTRC", curv),
            (b"bTRC", curv)]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for sig, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    header = (struct.pack(">I", offset + len(data)) + b"\0" * 4 + struct.pack(">I", 0x02100000)
              + b"mntrRGB XYZ " + b"\0" * 12 + b"acsp" + b"\0" * 28
              + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + b"\0" * 48)
    return header + struct.pack(">I", len(tags)) + table + data


# sRGB primaries adapted to D50 (the ICC connection space).
SRGB_RED, SRGB_GREEN, SRGB_BLUE = (0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), \
    (0.1431, 0.0606, 0.7141)


def _u8(h: int, w: int, c: int) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, c), dtype=np.uint8)


def _save(path: Path, im: Image.Image, **kw) -> Path:
    im.save(path, **kw)
    return path


# ----------------------------------------------------------------------------------------------
# Modes


def test_rgb_png_is_exact(tmp_path):
    pixels = _u8(5, 7, 3)
    out = nimg.load_image(_save(tmp_path / "a.png", Image.fromarray(pixels)))
    assert out.dtype == np.float32 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, (pixels / 255.0).astype(np.float32))


def test_rgba_is_composited_over_white(tmp_path):
    pixels = _u8(4, 6, 4)
    out = nimg.load_image(_save(tmp_path / "a.png", Image.fromarray(pixels, "RGBA")))
    a = pixels[..., 3:] / 255.0
    np.testing.assert_allclose(out, pixels[..., :3] / 255.0 * a + (1 - a), atol=1e-6)


def test_la_and_l_are_gray(tmp_path):
    la = _u8(4, 5, 2)
    out = nimg.load_image(_save(tmp_path / "la.png", Image.fromarray(la, "LA")))
    a = la[..., 1] / 255.0
    expected = la[..., 0] / 255.0 * a + (1 - a)
    np.testing.assert_allclose(out, np.repeat(expected[..., None], 3, -1), atol=1e-6)
    gray = _u8(3, 4, 1)[..., 0]
    out = nimg.load_image(_save(tmp_path / "l.png", Image.fromarray(gray, "L")))
    np.testing.assert_allclose(out, np.repeat(gray[..., None] / 255.0, 3, -1), atol=1e-7)


def test_one_bit_image(tmp_path):
    bits = RNG.integers(0, 2, (6, 9)).astype(bool)
    out = nimg.load_image(_save(tmp_path / "b.png", Image.fromarray(bits)))
    np.testing.assert_array_equal(out, np.repeat(bits[..., None], 3, -1).astype(np.float32))


def test_palette_with_and_without_transparency(tmp_path):
    rgb = Image.fromarray(_u8(6, 6, 3))
    pal = rgb.quantize(8)
    out = nimg.load_image(_save(tmp_path / "p.png", pal))
    np.testing.assert_allclose(out, np.asarray(pal.convert("RGB")) / 255.0, atol=1e-7)

    pal.info["transparency"] = 3  # palette index 3 fully transparent
    path = _save(tmp_path / "pt.png", pal, transparency=3)
    out = nimg.load_image(path)
    rgba = np.asarray(Image.open(path).convert("RGBA")) / 255.0
    a = rgba[..., 3:]
    assert (a == 0).any()
    np.testing.assert_allclose(out, rgba[..., :3] * a + (1 - a), atol=1e-6)
    assert np.all(out[np.asarray(pal) == 3] == 1.0)  # transparent -> white


def test_rgb_colour_key_transparency(tmp_path):
    pixels = _u8(4, 4, 3)
    pixels[1, 2] = (10, 20, 30)
    path = _save(tmp_path / "key.png", Image.fromarray(pixels), transparency=(10, 20, 30))
    out = nimg.load_image(path)
    np.testing.assert_array_equal(out[1, 2], [1.0, 1.0, 1.0])


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_i16_grayscale_scales_by_65535(tmp_path, suffix):
    values = np.array([[0, 1, 32768, 65535]], np.uint16)
    im = Image.fromarray(values)  # mode I;16
    assert im.mode == "I;16"
    out = nimg.load_image(_save(tmp_path / f"g{suffix}", im))
    np.testing.assert_allclose(out[..., 0], values / 65535.0, rtol=0, atol=1e-7)
    assert out[0, 3, 0] == 1.0 and out[0, 0, 0] == 0.0


def test_mode_i_and_f(tmp_path):
    ints = Image.fromarray(np.array([[0, 65535, 70000, -5]], np.int32))
    assert ints.mode == "I"
    out = nimg.load_image(_save(tmp_path / "i.tif", ints))
    np.testing.assert_allclose(out[0, :, 1], [0.0, 1.0, 1.0, 0.0])
    floats = Image.fromarray(np.array([[0.25, 0.5, 1.5, -1.0]], np.float32))
    assert floats.mode == "F"
    out = nimg.load_image(_save(tmp_path / "f.tif", floats))
    np.testing.assert_allclose(out[0, :, 2], [0.25, 0.5, 1.0, 0.0])


@pytest.mark.parametrize("ctype,channels", [(2, 3), (6, 4), (4, 2)])
def test_png16_all_row_filters_exact(tmp_path, ctype, channels):
    samples = RNG.integers(0, 65536, (7, 5, channels), dtype=np.uint16)
    samples[0, 0] = 65535
    path = tmp_path / "deep.png"
    path.write_bytes(_png16(samples, ctype))
    out = nimg.load_image(path)
    values = samples / 65535.0
    color, alpha = (values, None) if channels == 3 else (values[..., :-1], values[..., -1:])
    if color.shape[-1] == 1:
        color = np.repeat(color, 3, -1)
    expected = color if alpha is None else color * alpha + (1 - alpha)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    if ctype == 2:
        # Pillow reads the same file at 8 bits (high byte of each sample): same layout.
        np.testing.assert_array_equal(np.asarray(Image.open(path)), samples >> 8)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_8bit_and_16bit_agree_with_pillow(tmp_path, orientation):
    stored = RNG.integers(0, 256, (3, 5, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path8 = _save(tmp_path / "o.png", Image.fromarray(stored), exif=exif)
    with Image.open(path8) as im:
        reference = np.asarray(ImageOps.exif_transpose(im))
    np.testing.assert_allclose(nimg.load_image(path8), reference / 255.0, atol=1e-7)

    deep = stored.astype(np.uint16) * 257  # 8-bit value v -> v/255 exactly at 16 bits
    path16 = tmp_path / "o16.png"
    path16.write_bytes(_png16(deep, 2, extra=_chunk(b"eXIf", exif.tobytes())))
    np.testing.assert_allclose(nimg.load_image(path16), reference / 255.0, atol=1e-6)


def test_exif_orientation_6_rotates_clockwise(tmp_path):
    stored = _u8(2, 3, 3)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = nimg.load_image(_save(tmp_path / "r.jpg", Image.fromarray(stored), exif=exif,
                                quality=100, subsampling=0))
    assert out.shape == (3, 2, 3)
    png = nimg.load_image(_save(tmp_path / "r.png", Image.fromarray(stored), exif=exif))
    # Displayed top-left is the stored bottom-left: a quarter turn clockwise.
    np.testing.assert_array_equal(png, np.rot90(stored, -1) / np.float32(255.0))


def test_cmyk_jpeg_converts(tmp_path):
    cmyk = np.zeros((8, 32, 4), np.uint8)
    cmyk[:, 8:16, 0] = 255    # cyan
    cmyk[:, 16:24, 1] = 255   # magenta
    cmyk[:, 24:, 3] = 255     # black
    path = _save(tmp_path / "c.jpg", Image.fromarray(cmyk, "CMYK"), quality=100)
    out = nimg.load_image(path)
    assert out.shape == (8, 32, 3)
    expected = [(1, 1, 1), (0, 1, 1), (1, 0, 1), (0, 0, 0)]
    for block, rgb in enumerate(expected):
        np.testing.assert_allclose(out[:, 8 * block + 3: 8 * block + 5].mean((0, 1)), rgb,
                                   atol=3 / 255)


def test_icc_profile_is_converted_to_srgb(tmp_path):
    swapped = _rgb_profile(SRGB_GREEN, SRGB_RED, SRGB_BLUE)
    pixels = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], np.uint8)
    out = nimg.load_image(_save(tmp_path / "icc.png", Image.fromarray(pixels),
                                icc_profile=swapped))
    np.testing.assert_allclose(out[0], [[0, 1, 0], [1, 0, 0], [0, 0, 1], [1, 1, 1]], atol=2 / 255)

    # Linear tone curve, sRGB primaries: 128 -> the sRGB encoding of 128/255.
    linear = _rgb_profile(SRGB_RED, SRGB_GREEN, SRGB_BLUE)
    out = nimg.load_image(_save(tmp_path / "lin.png", Image.new("RGB", (2, 2), (128, 128, 128)),
                                icc_profile=linear))
    v = 128 / 255
    encoded = 1.055 * v ** (1 / 2.4) - 0.055
    np.testing.assert_allclose(out, encoded, atol=2 / 255)


def test_icc_on_16bit_png_and_srgb_tag_keeps_16_bits(tmp_path):
    swapped = _rgb_profile(SRGB_GREEN, SRGB_RED, SRGB_BLUE)
    iccp = _chunk(b"iCCP", b"test\0\0" + zlib.compress(swapped))
    samples = np.array([[[65535, 0, 0], [0, 65535, 0]]], np.uint16)
    path = tmp_path / "d.png"
    path.write_bytes(_png16(samples, 2, extra=iccp))
    np.testing.assert_allclose(nimg.load_image(path)[0], [[0, 1, 0], [1, 0, 0]], atol=2 / 255)

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    odd = np.array([[[1, 257, 65534]]], np.uint16)  # not representable at 8 bits
    path.write_bytes(_png16(odd, 2, extra=_chunk(b"iCCP", b"s\0\0" + zlib.compress(srgb))))
    np.testing.assert_allclose(nimg.load_image(path)[0, 0], odd[0, 0] / 65535.0, atol=1e-7)


def test_unusable_icc_profile_warns_and_keeps_pixels(tmp_path):
    pixels = _u8(2, 2, 3)
    path = _save(tmp_path / "bad.png", Image.fromarray(pixels), icc_profile=b"not a profile")
    with pytest.warns(nimg.ColorProfileWarning, match="cannot be read"):
        out = nimg.load_image(path)
    np.testing.assert_array_equal(out, pixels / np.float32(255))
    rgb_profile = _rgb_profile(SRGB_RED, SRGB_GREEN, SRGB_BLUE)
    path = _save(tmp_path / "gray.png", Image.new("L", (2, 2), 77), icc_profile=rgb_profile)
    with pytest.warns(nimg.ColorProfileWarning, match="RGB data on a L image"):
        out = nimg.load_image(path)
    np.testing.assert_allclose(out, 77 / 255, atol=1e-7)


def test_other_modes_load(tmp_path):
    ycc = Image.fromarray(_u8(4, 4, 3)).convert("YCbCr")
    out = nimg.load_image(_save(tmp_path / "y.jpg", ycc, quality=100))
    assert out.shape == (4, 4, 3)
    gif = Image.fromarray(_u8(4, 4, 3)).quantize(16)
    out = nimg.load_image(_save(tmp_path / "g.gif", gif))
    np.testing.assert_allclose(out, np.asarray(gif.convert("RGB")) / 255.0, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# Load errors


def _load_error(path, what="content image") -> str:
    with pytest.raises(InputImageError) as info:
        nimg.load_image(path, what=what)
    message = str(info.value)
    assert "\n" not in message and "; " in message  # one line: problem; fix
    return message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jpg"
    message = _load_error(path)
    assert message.startswith(f"content image not found: {path}") and "check the path" in message


def test_folder_instead_of_file(tmp_path):
    message = _load_error(tmp_path, "style image")
    assert message.startswith("style image is a folder") and str(tmp_path) in message


def test_empty_file(tmp_path):
    (tmp_path / "e.png").write_bytes(b"")
    assert "empty file" in _load_error(tmp_path / "e.png")


def test_text_file_is_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("hello, not a picture\n")
    message = _load_error(path)
    assert "not an image" in message and str(path) in message and "PNG, JPEG" in message


def test_postscript_is_refused(tmp_path):
    path = tmp_path / "x.eps"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    assert "not an image in a supported format" in _load_error(path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(tmp_path, fmt):
    buf = io.BytesIO()
    Image.fromarray(_u8(64, 64, 3)).save(buf, format=fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    message = _load_error(path)
    assert "truncated or corrupt" in message and str(path) in message and "re-export" in message


def test_truncated_and_corrupt_png16(tmp_path):
    samples = RNG.integers(0, 65536, (8, 8, 3), dtype=np.uint16)
    path = tmp_path / "cut16.png"
    path.write_bytes(_png16(samples, 2, cut=20))
    assert "truncated or corrupt" in _load_error(path)
    data = bytearray(_png16(samples, 2))
    data[60] ^= 0xFF  # inside IDAT: CRC no longer matches
    path.write_bytes(bytes(data))
    assert "CRC" in _load_error(path)


def test_decompression_bomb_policy(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert nimg.max_pixels() == 200
    small = _save(tmp_path / "ok.png", Image.new("RGB", (12, 12)))  # 144 px: Pillow only warns
    assert nimg.load_image(small).shape == (12, 12, 3)
    big = _save(tmp_path / "big.png", Image.new("RGB", (16, 16)))  # 256 px > 200
    message = _load_error(big)
    assert "too large" in message and "downscale" in message


def test_unconvertible_mode(tmp_path, monkeypatch):
    # No file format Pillow reads yields such a mode today; simulate one to check the message.
    path = _save(tmp_path / "m.png", Image.new("RGB", (2, 2)))
    odd = Image.new("HSV", (2, 2))
    real_convert = Image.Image.convert

    def convert(self, mode=None, *args, **kw):
        if self.mode == "HSV":
            raise ValueError("conversion from HSV to RGB not supported")
        return real_convert(self, mode, *args, **kw)

    real_to_float = nimg._pil_to_float
    monkeypatch.setattr(nimg, "_pil_to_float", lambda im: real_to_float(odd))
    monkeypatch.setattr(Image.Image, "convert", convert)
    message = _load_error(path)
    assert "pixel format HSV" in message and "re-save it as an RGB PNG" in message


@pytest.mark.skipif(IS_ROOT, reason="root can read any file")
def test_unreadable_file(tmp_path):
    path = _save(tmp_path / "locked.png", Image.new("RGB", (2, 2)))
    path.chmod(0)
    try:
        assert "permission denied" in _load_error(path)
    finally:
        path.chmod(0o644)


# ----------------------------------------------------------------------------------------------
# Save / load round trips


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=st.integers(1, 64), w=st.integers(1, 64), mode=st.sampled_from(["L", "RGB", "RGBA", "LA",
                                                                        "I;16"]),
       seed=st.integers(0, 2**16))
def test_property_modes_load_as_expected(tmp_path, h, w, mode, seed):
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        data = rng.integers(0, 65536, (h, w), dtype=np.uint16)
        expected = np.repeat(data[..., None] / 65535.0, 3, -1)
        im = Image.fromarray(data)
    else:
        channels = {"L": 1, "RGB": 3, "RGBA": 4, "LA": 2}[mode]
        data = rng.integers(0, 256, (h, w, channels), dtype=np.uint8) / 255.0
        color = data[..., :3] if channels >= 3 else data[..., :1]
        alpha = data[..., -1:] if channels in (2, 4) else 1.0
        expected = np.broadcast_to(color * alpha + (1 - alpha), (h, w, 3))
        raw = np.round(data * 255).astype(np.uint8)
        im = Image.fromarray(raw[..., 0] if mode == "L" else raw, mode)
    path = _save(tmp_path / "p.png", im)
    out = nimg.load_image(path)
    assert out.shape == (h, w, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_allclose(out, expected, atol=1e-6)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=st.integers(1, 64), w=st.integers(1, 64), bits=st.sampled_from([8, 16]),
       ext=st.sampled_from([".png", ".tif", ".bmp"]), seed=st.integers(0, 2**16))
def test_property_save_load_round_trip(tmp_path, h, w, bits, ext, seed):
    if bits == 16:
        ext = ".png"
    image = np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)
    path = nimg.save_image(tmp_path / f"out{ext}", image, bits=bits)
    back = nimg.load_image(path)
    step = 1.0 / (65535 if bits == 16 else 255)
    np.testing.assert_allclose(back, image, rtol=0, atol=step / 2 + 1e-7)
    # tmp_path is shared by all examples: only finished outputs, never a temporary file.
    assert {p.name for p in tmp_path.iterdir()} <= {"out.png", "out.tif", "out.bmp"}


def test_png16_precision_beats_8bit(tmp_path):
    ramp = np.linspace(0, 1, 1000, dtype=np.float32)[None, :, None].repeat(3, -1)
    back16 = nimg.load_image(nimg.save_image(tmp_path / "r16.png", ramp, bits=16))
    back8 = nimg.load_image(nimg.save_image(tmp_path / "r8.png", ramp, bits=8))
    assert np.abs(back16 - ramp).max() <= 0.5 / 65535 + 1e-7
    assert np.abs(back8 - ramp).max() > 100 * np.abs(back16 - ramp).max()
    assert len(np.unique(back16)) == 1000 and len(np.unique(back8)) == 256
    # Pillow sees the same picture (high bytes) in our 48-bit PNG.
    with Image.open(tmp_path / "r16.png") as im:
        assert im.size == (1000, 1) and im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), np.round(ramp * 65535).astype(np.uint16) >> 8)


def test_jpeg_quality(tmp_path):
    x = np.linspace(0, 1, 64, dtype=np.float32)
    image = np.stack([x[None, :] * x[:, None], x[None, :].repeat(64, 0), 1 - x[:, None].repeat(64, 1)],
                     -1)
    image += RNG.normal(0, 0.05, image.shape).astype(np.float32)
    err, size = {}, {}
    for q in (30, 95):
        path = nimg.save_image(tmp_path / f"q{q}.jpg", image, quality=q)
        err[q] = np.abs(nimg.load_image(path) - np.clip(image, 0, 1)).mean()
        size[q] = path.stat().st_size
    assert err[95] < 0.02 and err[95] < err[30] / 2 and size[95] > size[30]


def test_save_webp_and_batch_axis(tmp_path):
    if ".webp" not in nimg.SAVE_EXTENSIONS:
        pytest.skip("Pillow built without WebP")
    y, x = np.mgrid[0:16, 0:24] / 24.0
    image = np.stack([x, y, 0.5 + 0 * x], -1)[None].astype(np.float32)
    back = nimg.load_image(nimg.save_image(tmp_path / "a.webp", image, quality=95))
    assert back.shape == (16, 24, 3) and np.abs(back - image[0]).mean() < 0.02


def test_save_clips_and_accepts_float64(tmp_path):
    image = np.array([[[-0.5, 0.5, 2.0]]], np.float64)
    back = nimg.load_image(nimg.save_image(tmp_path / "c.png", image))
    np.testing.assert_allclose(back[0, 0], [0.0, 128 / 255, 1.0])


# ----------------------------------------------------------------------------------------------
# Save errors and atomicity


def test_save_is_atomic_when_the_encoder_fails(tmp_path, monkeypatch):
    target = nimg.save_image(tmp_path / "out.png", np.zeros((4, 4, 3), np.float32))
    before = target.read_bytes()

    def broken_save(self, fp, format=None, **kw):
        fp.write(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OutputPathError, match="No space left on device.*free disk space"):
        nimg.save_image(target, np.ones((4, 4, 3), np.float32))
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_save16_is_atomic_when_sync_fails(tmp_path, monkeypatch):
    target = nimg.save_image(tmp_path / "out.png", np.zeros((4, 4, 3), np.float32), bits=16)
    before = target.read_bytes()

    def broken_fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OutputPathError, match="could not write"):
        nimg.save_image(target, np.ones((4, 4, 3), np.float32), bits=16)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_save_interrupted_leaves_no_temp_file(tmp_path, monkeypatch):
    def interrupted(self, fp, format=None, **kw):
        fp.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        nimg.save_image(tmp_path / "x.jpg", np.zeros((2, 2, 3), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_output_path_errors(tmp_path):
    with pytest.raises(OutputPathError, match=r'extension "\.gif".*use one of \.png, \.jpg'):
        nimg.check_output_path(tmp_path / "a.gif")
    with pytest.raises(OutputPathError, match="no extension"):
        nimg.check_output_path(tmp_path / "result")
    missing = tmp_path / "missing" / "a.png"
    with pytest.raises(OutputPathError) as info:
        nimg.check_output_path(missing)
    assert str(info.value) == (f"output folder does not exist: {missing.parent}; create it or "
                               "choose another --output")
    with pytest.raises(OutputPathError, match="output path is a folder"):
        nimg.check_output_path(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match="is not a folder"):
        nimg.check_output_path(tmp_path / "file" / "a.png")
    with pytest.raises(ConfigError, match="only as PNG"):
        nimg.check_output_path(tmp_path / "a.jpg", bits=16)
    with pytest.raises(ConfigError, match="8 or 16"):
        nimg.check_output_path(tmp_path / "a.png", bits=12)
    assert nimg.check_output_path(str(tmp_path / "A.PNG")) == tmp_path / "A.PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # the probe is gone


def test_output_folder_not_writable(tmp_path, monkeypatch):
    real_open = os.open

    def denied(path, flags, mode=0o777):
        if str(path).endswith(".tmp"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(OutputPathError, match="not writable.*Permission denied.*another --output"):
        nimg.save_image(tmp_path / "a.png", np.zeros((2, 2, 3), np.float32))


@pytest.mark.skipif(IS_ROOT, reason="root can write anywhere")
def test_output_folder_not_writable_for_real(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputPathError, match="not writable"):
            nimg.check_output_path(locked / "a.png")
    finally:
        locked.chmod(0o700)


def test_save_rejects_bad_arrays(tmp_path):
    bad = np.zeros((3, 3, 3), np.float32)
    bad[1, 1, 1] = np.nan
    with pytest.raises(NonFiniteLossError, match="1 NaN or infinite"):
        nimg.save_image(tmp_path / "n.png", bad)
    with pytest.raises(ValueError, match="shape"):
        nimg.save_image(tmp_path / "s.png", np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="dtype uint8"):
        nimg.save_image(tmp_path / "u.png", np.zeros((3, 3, 3), np.uint8))
    with pytest.raises(ConfigError, match="quality"):
        nimg.save_image(tmp_path / "q.jpg", np.zeros((3, 3, 3), np.float32), quality=0)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# Resizing and size checks


def test_size_for_height():
    assert nimg.size_for_height(300, 451, 100) == (100, 150)  # 150.33
    assert nimg.size_for_height(2, 3, 1) == (1, 2)  # 1.5 rounds half up
    assert nimg.size_for_height(1000, 1, 10) == (10, 1)  # never 0 wide


def test_resize_shapes_and_aspect():
    image = RNG.random((30, 45, 3)).astype(np.float32)
    assert nimg.resize(image, height=20).shape == (20, 30, 3)
    assert nimg.resize(image, width=90).shape == (60, 90, 3)
    assert nimg.resize(image, 10, 11).shape == (10, 11, 3)
    assert nimg.resize(image, short_side=15).shape == (15, 23, 3)  # 22.5 rounds half up
    assert nimg.resize(image, long_side=15).shape == (10, 15, 3)
    tall = image.transpose(1, 0, 2)
    assert nimg.resize(tall, short_side=15).shape == (23, 15, 3)
    assert nimg.resize(tall, long_side=15).shape == (15, 10, 3)
    same = nimg.resize(image, height=30)
    np.testing.assert_array_equal(same, image)


def test_resize_matches_pillow_bicubic_on_8bit_data():
    # Values in [0.3, 0.7]: bicubic overshoot stays inside [0, 1], so Pillow's 8-bit path (which
    # rounds and clips between its horizontal and vertical passes) differs from our float path
    # only by those two roundings.
    pixels = RNG.integers(77, 179, (24, 32, 3), dtype=np.uint8)
    for size in ((13, 17), (50, 67)):
        ours = nimg.resize(pixels / np.float32(255), height=size[0])
        theirs = np.asarray(Image.fromarray(pixels).resize(size[::-1], Image.Resampling.BICUBIC))
        np.testing.assert_allclose(ours, theirs / 255, atol=1.5 / 255)


def test_resize_reproduces_a_linear_ramp():
    # Cubic convolution reproduces linear functions; Pillow aligns pixel centres:
    # source coordinate = (target + 0.5) * scale - 0.5.
    y, x = np.mgrid[0:20, 0:30].astype(np.float64)
    ramp = (0.1 + 0.02 * x + 0.01 * y)[..., None]
    out = nimg.resize(ramp, 40, 60)[..., 0]
    ty, tx = np.mgrid[0:40, 0:60]
    sx, sy = (tx + 0.5) * 0.5 - 0.5, (ty + 0.5) * 0.5 - 0.5
    inner = (slice(4, -4), slice(4, -4))  # away from the clamped border
    np.testing.assert_allclose(out[inner], (0.1 + 0.02 * sx + 0.01 * sy)[inner], atol=2e-6)


def test_resize_keeps_precision_and_range():
    ramp = np.linspace(0.2, 0.2 + 1 / 255, 64, dtype=np.float32)[None, :, None].repeat(8, 0)
    out = nimg.resize(ramp, height=16)
    assert len(np.unique(np.round(out, 7))) > 10  # sub-8-bit steps survive
    step = np.zeros((8, 8, 1), np.float32)
    step[:, 4:] = 1.0
    up = nimg.resize(step, height=32)
    assert up.min() >= 0.0 and up.max() <= 1.0 and up.dtype == np.float32
    flat = nimg.resize(np.full((9, 7, 3), 0.3, np.float32), height=20)
    np.testing.assert_allclose(flat, 0.3, atol=1e-6)


@pytest.mark.parametrize("kwargs", [{}, {"height": 0}, {"height": 2.5}, {"short_side": 5, "height": 4},
                                    {"short_side": 5, "long_side": 6}])
def test_resize_bad_sizes(kwargs):
    with pytest.raises(ConfigError):
        nimg.resize(np.zeros((4, 4, 3), np.float32), **kwargs)


def test_check_min_size():
    nimg.check_min_size(np.zeros((32, 40, 3)), 32)
    with pytest.raises(InputImageError) as info:
        nimg.check_min_size(np.zeros((1, 20, 12, 3)), 32, "content image", layer="relu5_1")
    assert str(info.value) == ("content image is 12x20 px; the deepest layer used (relu5_1) needs "
                               "at least 32 px per side; use a larger image or --size")


# ----------------------------------------------------------------------------------------------
# Folders and packaged images


def test_list_images(tmp_path):
    (tmp_path / "b").mkdir()
    for name in ["z.JPG", "a.png", "b/c.TiFF", "b/d.webp", "notes.txt", ".hidden.jpg", "b/e.jpeg",
                 "x.bmp", "y.gif"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "dir.png").mkdir()  # a folder named like an image is not an image
    found = nimg.list_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a.png", "b/c.TiFF", "b/d.webp", "b/e.jpeg", "x.bmp", "z.JPG"]
    top = nimg.list_images(tmp_path, recursive=False)
    assert [p.name for p in top] == ["a.png", "x.bmp", "z.JPG"]
    with pytest.raises(InputImageError, match="image folder not found"):
        nimg.list_images(tmp_path / "nope")
    with pytest.raises(InputImageError, match="not a folder"):
        nimg.list_images(tmp_path / "a.png")


def test_default_images_load_and_are_attributed():
    content = nimg.load_image(nimg.default_content_path(), "content image")
    style = nimg.load_image(nimg.default_style_path(), "style image")
    for img in (content, style):
        assert img.ndim == 3 and img.shape[-1] == 3 and max(img.shape[:2]) <= 512
        assert min(img.shape[:2]) >= 256 and img.std() > 0.05
    attribution = (nimg.default_content_path().parent / "ATTRIBUTION.md").read_text()
    for name in (nimg.default_content_path().name, nimg.default_style_path().name):
        assert name in attribution
    assert "CC0" in attribution and "Public domain" in attribution


# ----------------------------------------------------------------------------------------------
# Hardening: PNG chunk rules, decoding cost, non-regular files


def _png_with(chunks: list[bytes]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def _ihdr(w, h, depth=16, ctype=2, interlace=0) -> bytes:
    return _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, interlace))


@pytest.mark.parametrize("second_ctype", [2, 3])
def test_png_with_a_second_ihdr_is_refused_by_both_readers(tmp_path, second_ctype):
    # The reproduction: IHDR 8x8, then a second IHDR of 2000x2000 whose data is really there.
    raw = b"".join(b"\x00" + bytes(2000 * 6) for _ in range(2000))
    data = _png_with([_ihdr(8, 8), _ihdr(2000, 2000, ctype=second_ctype),
                      _chunk(b"IDAT", zlib.compress(raw)), _chunk(b"IEND", b"")])
    path = tmp_path / "two.png"
    path.write_bytes(data)
    assert "more than one IHDR" in _load_error(path)
    with pytest.raises(InputImageError, match="more than one IHDR"):
        nimg.image_size(path)


@pytest.mark.parametrize("case,expected", [
    ("ihdr-late", "instead of IHDR"), ("idat-split", "split by other chunks"),
    ("iend-body", "IEND chunk is not empty"), ("no-iend", "ends before its IEND"),
    ("critical", "unknown critical chunk"), ("depth", "bit depth 16 with colour type 3"),
    ("no-plte", "no PLTE"), ("zero", "invalid size 0x4"), ("short-data", "too short"),
    ("two-exif", "more than one eXIf"), ("no-idat", "no image data"),
])
def test_png_chunk_rules(tmp_path, case, expected):
    samples = RNG.integers(0, 65536, (4, 4, 3), dtype=np.uint16)
    chunks = _split_png(_png16(samples, 2))  # IHDR, IDAT, IEND
    ihdr, idat, iend = chunks
    text = _chunk(b"tEXt", b"k\0v")
    exif = _chunk(b"eXIf", Image.Exif().tobytes())
    body = struct.unpack(">I", idat[:4])[0]
    half = idat[8:8 + body // 2], idat[8 + body // 2:8 + body]
    layouts = {
        "ihdr-late": [text, ihdr, idat, iend],
        "idat-split": [ihdr, _chunk(b"IDAT", half[0]), text, _chunk(b"IDAT", half[1]), iend],
        "iend-body": [ihdr, idat, _chunk(b"IEND", b"x")],
        "no-iend": [ihdr, idat],
        "critical": [ihdr, _chunk(b"ABCD", b""), idat, iend],
        "depth": [_ihdr(4, 4, 16, 3), idat, iend],
        "no-plte": [_ihdr(4, 4, 8, 3), idat, iend],
        "zero": [_ihdr(0, 4), idat, iend],
        "short-data": [_ihdr(4, 400000), idat, iend],
        "two-exif": [ihdr, exif, idat, exif, iend],
        "no-idat": [ihdr, iend],
    }
    path = tmp_path / "bad.png"
    path.write_bytes(_png_with(layouts[case]))
    message = _load_error(path)
    assert expected in message and "truncated or corrupt" in message
    with pytest.raises(InputImageError, match=expected):
        nimg.image_size(path)


def _split_png(png: bytes) -> list[bytes]:
    chunks, pos = [], 8
    while pos < len(png):
        length = struct.unpack(">I", png[pos:pos + 4])[0]
        chunks.append(png[pos:pos + 12 + length])
        pos += 12 + length
    return chunks


@pytest.mark.parametrize("shape", [(1, 100000), (100000, 1)])
def test_png16_decoding_is_linear_for_very_wide_or_tall_images(tmp_path, shape):
    # The reproduction: a 661-byte 1x100000 16-bit PNG with the Paeth filter took 2.9 s (one
    # NumPy step per anti-diagonal). Filter 4 on a zero row is zero; filter 3 likewise.
    h, w = shape
    raw = b"".join(bytes([3 + y % 2]) + bytes(6 * w) for y in range(h))
    path = tmp_path / "wide.png"
    path.write_bytes(_png_with([_ihdr(w, h), _chunk(b"IDAT", zlib.compress(raw, 9)),
                                _chunk(b"IEND", b"")]))
    assert path.stat().st_size < 2000  # a tiny file
    import time
    start = time.perf_counter()
    out = nimg.load_image(path)
    elapsed = time.perf_counter() - start
    assert out.shape == (h, w, 3) and not out.any()
    assert nimg.image_size(path) == (h, w)
    assert elapsed < 1.0  # about 10 ms; the diagonal sweep took seconds


def _adam7(samples: np.ndarray) -> bytes:
    """Adam7-interlaced raw data (filter 0 rows) for a 16-bit image (PNG spec section 8.2)."""
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
              (0, 1, 1, 2)]
    out = b""
    for x0, y0, dx, dy in passes:
        sub = samples[y0::dy, x0::dx]
        if sub.size:
            for row in sub.astype(">u2"):
                out += b"\x00" + row.tobytes()
    return out


def test_interlaced_png16_keeps_16_bits(tmp_path):
    samples = RNG.integers(0, 65536, (11, 9, 4), dtype=np.uint16)
    path = tmp_path / "adam7.png"
    path.write_bytes(_png_with([_ihdr(9, 11, 16, 6, interlace=1),
                                _chunk(b"IDAT", zlib.compress(_adam7(samples))),
                                _chunk(b"IEND", b"")]))
    values = samples / 65535.0
    a = values[..., 3:]
    np.testing.assert_allclose(nimg.load_image(path), values[..., :3] * a + (1 - a), atol=1e-6)


def test_png_image_size_reads_exif_after_the_pixels_without_decoding(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    samples = RNG.integers(0, 256, (3, 5, 3), dtype=np.uint8)
    good = _split_png(_png16(samples.astype(np.uint16) * 257, 2))
    # Valid chunks, but a pixel stream that does not inflate: only decoding can tell.
    broken = _chunk(b"IDAT", b"\x78\x9c" + bytes(range(40, 90)))
    path = tmp_path / "late-exif.png"
    path.write_bytes(_png_with([good[0], broken, _chunk(b"eXIf", exif.tobytes()), good[2]]))
    assert nimg.image_size(path) == (5, 3)
    assert "truncated or corrupt" in _load_error(path)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_non_regular_files_are_refused_without_blocking(tmp_path, kind):
    import threading

    if kind == "fifo":
        if not hasattr(os, "mkfifo"):
            pytest.skip("no FIFOs on this system")
        path = tmp_path / "pipe.png"
        os.mkfifo(path)
    else:
        path = Path(os.devnull)
        if not path.exists() or path.is_file():
            pytest.skip("no character device to try")
    results = []

    def attempt():
        for reader in (nimg.load_image, nimg.image_size):
            try:
                reader(path, "style mask")
            except InputImageError as err:
                results.append(str(err))

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "opening a FIFO blocked"
    assert len(results) == 2
    for message in results:
        assert message.startswith(f"style mask is not a regular file (a pipe, socket or device): "
                                  f"{path}")


def test_load_memory_per_pixel_is_bounded(tmp_path):
    import tracemalloc

    path = _save(tmp_path / "big.png", Image.fromarray(_u8(256, 384, 3)))
    rgba = _save(tmp_path / "big-rgba.png", Image.fromarray(_u8(256, 384, 4), "RGBA"))
    for p in (path, rgba):
        nimg.load_image(p)  # warm up: first calls build caches
        tracemalloc.start()
        out = nimg.load_image(p)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        # Python's and NumPy's share (Pillow's own buffers are not traced): the float32 result
        # is 12 bytes a pixel, the 8-bit copy 3-4 (made twice by Pillow's tobytes) and, with
        # alpha, the float alpha 4 more. It was 60 (RGB) and 92 (RGBA) with float64 steps.
        assert peak / out[..., 0].size < 28


# The child reports its own peak memory (VmHWM) at exit: a forked child's ru_maxrss starts from its
# parent's resident size, which is the test process's (gigabytes after other tests), not the CLI's.
_RUN_GATYS_WITH_PEAK = (
    "import atexit, re, runpy, sys\n"
    "peak_file = sys.argv.pop(1)\n"
    "def _peak():\n"
    "    with open('/proc/self/status') as f, open(peak_file, 'w') as out:\n"
    "        out.write(re.search(r'VmHWM:\\s*(\\d+)', f.read()).group(1))\n"
    "atexit.register(_peak)\n"
    "sys.argv[0] = 'nst-gatys'\n"
    "runpy.run_module('nst_jax.gatys', run_name='__main__', alter_sys=True)\n"
)


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not Path("/proc/self/status").exists(),
                    reason="needs FIFOs and /proc (VmHWM)")
def test_cli_refuses_a_fifo_style_in_one_line_before_decoding_anything(tmp_path):
    import subprocess
    import sys
    import tempfile

    root = Path(__file__).resolve().parents[1]
    content = _save(tmp_path / "content.png", Image.fromarray(_u8(64, 64, 3)))
    os.mkfifo(tmp_path / "style.png")
    env = dict(os.environ, PYTHONPATH=str(root), JAX_PLATFORMS="cpu")
    with tempfile.TemporaryDirectory() as logs:
        peak_file = Path(logs) / "peak"
        proc = subprocess.run(
            [sys.executable, "-c", _RUN_GATYS_WITH_PEAK, str(peak_file), "--content", str(content), "--style",
             str(tmp_path / "style.png"), "--output", str(tmp_path / "out.png"), "--size", "64"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)  # a FIFO opened would block
        peak_kib = int(peak_file.read_text())
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: style image is not a regular file")
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["content.png", "style.png"]
    assert peak_kib < 2 * 2**20  # KiB: well under 2 GiB, nothing was decoded


def test_png_image_data_longer_than_the_header_is_refused(tmp_path):
    # Pillow would stop inflating once the image is full; the file still contradicts its header.
    raw = os.urandom(6 * 4 * 4 * 50)  # incompressible: 50 times what a 4x4 image holds
    path = tmp_path / "long.png"
    path.write_bytes(_png_with([_ihdr(4, 4), _chunk(b"IDAT", zlib.compress(raw)),
                                _chunk(b"IEND", b"")]))
    assert "longer than its header says" in _load_error(path)


# ----------------------------------------------------------------------------------------------
# Reduced-scale JPEG decoding (load_image(min_size=...))


def _photo_like(h: int, w: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Shading, waves below any target's Nyquist limit, hard-edged shapes and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    planes = []
    for c in range(channels):
        fx, fy, phase = rng.uniform(1, 8, 2).tolist() + [rng.uniform(0, 6)]  # cycles per image
        v = 0.5 + 0.25 * np.sin(2 * np.pi * (fx * x + fy * y) + phase) + 0.15 * (x - y)
        for _ in range(6):  # rectangles with sharp edges
            y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
            v[y0:y0 + h // 4, x0:x0 + w // 5] = rng.uniform(0, 1)
        planes.append(v + rng.normal(0, 0.02, (h, w)))  # sensor-like noise
    return (np.clip(np.stack(planes, -1), 0, 1) * 255).round().astype(np.uint8)


def _full_then_resize(path, hw) -> np.ndarray:
    return nimg.resize(nimg.load_image(path), *hw)


# With at least DRAFT_MARGIN (2) source pixels per target pixel left after the codec's reduction,
# both pipelines are low-pass filters that agree on what lies well below the target's Nyquist
# limit; they differ in how each weighs the pixels around a hard edge, by a fraction of the edge's
# contrast. Both are deterministic (integer IDCT, Pillow's float resize); libjpeg builds may
# differ by 1/255 in a decoded pixel, which the bounds absorb. Measured: these images max
# 5.7/255, mean 0.30/255; a photograph max 7.4/255, mean 0.83/255. Decoding straight at the target
# size (no margin) gives max 17-20/255, which the max bound refuses.
DRAFT_MAX, DRAFT_MEAN = 12 / 255, 1.5 / 255


def test_draft_decodes_large_jpeg_near_the_target(tmp_path):
    path = _save(tmp_path / "big.jpg", Image.fromarray(_photo_like(1500, 2000)), quality=92)
    target = nimg.size_for_height(1500, 2000, 180)  # (180, 240): 1/4 scale keeps >= 2x
    drafted = nimg.load_image(path, min_size=target)
    assert drafted.shape == (1500 // 4, 2000 // 4, 3)  # the codec reduced it, aspect exact
    diff = np.abs(nimg.resize(drafted, *target) - _full_then_resize(path, target))
    assert diff.max() <= DRAFT_MAX and diff.mean() <= DRAFT_MEAN, (diff.max() * 255, diff.mean() * 255)
    # A size computed from the drafted shape is the one computed from the header.
    for height in (37, 180, 333):
        assert nimg.size_for_height(*drafted.shape[:2], height) == nimg.size_for_height(1500, 2000, height)


def test_draft_keeps_the_margin_and_exact_aspect(tmp_path):
    path = _save(tmp_path / "a.jpg", Image.fromarray(_photo_like(240, 320)), quality=90)
    assert nimg.load_image(path, min_size=(30, 40)).shape[:2] == (60, 80)     # 1/4: 2x margin
    assert nimg.load_image(path, min_size=(31, 40)).shape[:2] == (120, 160)   # 1/4 too small
    assert nimg.load_image(path, min_size=(121, 40)).shape[:2] == (240, 320)  # no reduction fits
    odd = _save(tmp_path / "odd.jpg", Image.fromarray(_photo_like(242, 320)), quality=90)
    # 242 is not a multiple of 4 or 8: only 1/2 keeps the aspect ratio exact.
    assert nimg.load_image(odd, min_size=(10, 10)).shape[:2] == (121, 160)
    png = _save(tmp_path / "a.png", Image.fromarray(_photo_like(240, 320)))
    assert nimg.load_image(png, min_size=(10, 10)).shape[:2] == (240, 320)  # not a JPEG


def test_draft_peak_memory_is_far_below_full_decode(tmp_path):
    import tracemalloc

    path = _save(tmp_path / "big.jpg", Image.fromarray(_photo_like(1504, 2000)), quality=90)
    target = nimg.size_for_height(1504, 2000, 94)  # 1/8 scale keeps 188x250 >= 2x

    def peak(**kw) -> tuple[int, tuple[int, ...]]:
        tracemalloc.start()
        try:
            image = nimg.load_image(path, **kw)
            return tracemalloc.get_traced_memory()[1], image.shape
        finally:
            tracemalloc.stop()

    (full, full_shape), (drafted, drafted_shape) = peak(), peak(min_size=target)
    assert full_shape == (1504, 2000, 3) and drafted_shape == (188, 250, 3)
    assert full >= 12 * 1504 * 2000  # the float32 result alone
    assert drafted <= full / 32  # 64x fewer pixels; half of that leaves room for fixed costs


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_draft_respects_exif_orientation(tmp_path, orientation):
    stored = _photo_like(1000, 2000)  # stored 2000 wide, 1000 tall
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(tmp_path / "o.jpg", Image.fromarray(stored), quality=92, exif=exif.tobytes())
    upright = nimg.image_size(path)
    target = (400, 200) if orientation != 3 else (200, 400)  # upright; the same box stored
    drafted = nimg.load_image(path, min_size=target)
    # Stored 2000x1000 needs 800x400 (2x) after the turn: 1/2 fits and 1/4 does not. Without
    # swapping the sides the stored image would have needed 400 wide, 800 tall: no reduction.
    assert drafted.shape[:2] == (upright[0] // 2, upright[1] // 2)
    diff = np.abs(nimg.resize(drafted, *target) - _full_then_resize(path, target))
    assert diff.max() <= DRAFT_MAX and diff.mean() <= DRAFT_MEAN


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_draft_gray_and_cmyk_jpegs(tmp_path, mode):
    pixels = _photo_like(480, 640, channels=1 if mode == "L" else 4, seed=1)
    path = _save(tmp_path / "m.jpg", Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode),
                 quality=92)
    target = (60, 80)
    drafted = nimg.load_image(path, min_size=target)
    assert drafted.shape == (120, 160, 3)
    diff = np.abs(nimg.resize(drafted, *target) - _full_then_resize(path, target))
    assert diff.max() <= DRAFT_MAX and diff.mean() <= DRAFT_MEAN


def test_gatys_cli_output_size_unchanged_by_draft(tmp_path, monkeypatch):
    from nst_jax.cli import gatys as gatys_cli

    weights = Path(__file__).parent / "fixtures" / "gatys" / "vgg19_narrow.pth"
    content = _save(tmp_path / "c.jpg", Image.fromarray(_photo_like(1000, 1336)), quality=90)
    style = _save(tmp_path / "s.jpg", Image.fromarray(_photo_like(800, 1200, seed=2)), quality=90)
    shapes = {}
    real = nimg.load_image

    def spy(path, *args, **kw):
        shapes[Path(path).name] = out = real(path, *args, **kw)
        return out

    monkeypatch.setattr(nimg, "load_image", spy)
    out = tmp_path / "o.png"
    code = gatys_cli.main(["--content", str(content), "--style", str(style), "--weights", str(weights),
                       "--content-layers", "relu2_1", "--style-layers", "relu1_1,relu2_1",
                       "--size", "64", "--iterations", "0", "--style-scale", "1.5", "--no-progress",
                       "-o", str(out)])
    assert code == 0
    # Both inputs were decoded reduced (1/4), each still >= 2x what is sampled from it.
    assert shapes["c.jpg"].shape[:2] == (250, 334) and shapes["s.jpg"].shape[:2] == (200, 300)
    assert nimg.image_size(out) == nimg.size_for_height(*nimg.image_size(content), 64) == (64, 86)
