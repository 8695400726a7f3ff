"""Image files in and out: decode any common image to float RGB, resize, and save atomically.

Host-side code (NumPy and Pillow only). Arrays are float32 RGB in [0, 1], shaped ``(H, W, 3)``;
:func:`save_image` also takes a leading batch axis of one.

Loading (:func:`load_image`) turns every Pillow mode into sRGB:

* EXIF orientation is applied (phone photos come out upright).
* An embedded ICC profile is converted to sRGB with LittleCMS (``PIL.ImageCms``) when that module
  is available; a profile that does not fit the pixels or cannot be parsed is ignored with a
  :class:`ColorProfileWarning`. Conversion runs at 8 bits per channel, so a 16-bit file tagged with
  a non-sRGB profile is read at 8-bit precision (a file tagged sRGB keeps its 16 bits).
* Transparency (RGBA, LA, palette or colour-key transparency) is composited over white, because
  VGG features have no alpha channel and a transparent background usually means "paper".
* 16-bit PNG and TIFF grayscale (``I;16``) is scaled by 1/65535. Pillow reads 16-bit colour PNGs as
  8 bits, so those are decoded here (:func:`_read_png16`) to keep every bit; Adam7-interlaced ones
  fall back to Pillow's 8-bit reading.
* Mode ``I`` (32-bit integers) is taken as 16-bit data (0..65535) and mode ``F`` as intensities in
  [0, 1]; values outside are clipped.
* CMYK (including Adobe's inverted CMYK JPEGs) goes through its ICC profile when one is embedded,
  otherwise through Pillow's naive conversion.

Every failure a user can cause raises :class:`~nst_jax.errors.InputImageError` or
:class:`~nst_jax.errors.OutputPathError` with a one-line message; Pillow's exceptions never escape.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import struct
import uuid
import warnings
import zlib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError, features

try:  # LittleCMS support is an optional part of a Pillow build.
    from PIL import ImageCms
except ImportError:  # pragma: no cover - depends on how Pillow was built
    ImageCms = None

from nst_jax.errors import ConfigError, InputImageError, NonFiniteLossError, OutputPathError

__all__ = [
    "IMAGE_EXTENSIONS",
    "SAVE_EXTENSIONS",
    "ColorProfileWarning",
    "check_min_size",
    "check_output_path",
    "default_content_path",
    "default_style_path",
    "image_size",
    "list_images",
    "load_image",
    "max_pixels",
    "resize",
    "save_image",
    "size_for_height",
]

# Extensions :func:`list_images` picks up (compared case-insensitively).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

# Decoders load_image lets Pillow use (JPEG includes multi-picture MPO files from cameras).
# Formats such as EPS would start Ghostscript on the input, which is not something a
# style-transfer tool should do with a file it was handed.
_READ_FORMATS: tuple[str, ...] = tuple(
    f for f in ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF", "PPM", "TGA", "AVIF")
    if f not in ("WEBP", "AVIF") or features.check(f.lower())
)

# Output extension -> Pillow format; formats this Pillow cannot write are left out.
_SAVE_FORMATS: dict[str, str] = {
    ext: fmt
    for ext, fmt in (
        (".png", "PNG"), (".jpg", "JPEG"), (".jpeg", "JPEG"), (".webp", "WEBP"),
        (".tif", "TIFF"), (".tiff", "TIFF"), (".bmp", "BMP"),
    )
    if fmt != "WEBP" or features.check("webp")
}
SAVE_EXTENSIONS: tuple[str, ...] = tuple(_SAVE_FORMATS)
SAVE_BITS: tuple[int, ...] = (8, 16)

_ASSETS = "assets"
_DEFAULT_CONTENT = "chelsea.jpg"
_DEFAULT_STYLE = "starry_night.jpg"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ColorProfileWarning(UserWarning):
    """An embedded ICC profile could not be applied; the pixels were read as sRGB."""


class _CorruptImage(ValueError):
    """Raised for undecodable pixel data; load_image maps it to InputImageError."""


class _UnsupportedMode(Exception):
    """Raised for a pixel format that has no RGB meaning; load_image maps it to InputImageError."""


# --------------------------------------------------------------------------------------------
# Loading


def max_pixels() -> float:
    """Returns the largest image (width x height) :func:`load_image` accepts.

    This is Pillow's hard decompression-bomb limit, ``2 * PIL.Image.MAX_IMAGE_PIXELS`` (about
    179 megapixels by default: an A0 print at 300 dpi is 140). Pillow only *warns* between
    ``MAX_IMAGE_PIXELS`` and twice that; load_image silences that warning, so big print-size images
    load, and reports anything larger as an InputImageError. Lower ``MAX_IMAGE_PIXELS`` to be
    stricter; ``None`` there removes the limit.
    """
    limit = Image.MAX_IMAGE_PIXELS
    return 2 * limit if limit is not None else math.inf


def load_image(path: str | os.PathLike, what: str = "image") -> np.ndarray:
    """Reads an image file as upright sRGB, float32 ``(H, W, 3)`` in [0, 1].

    Args:
      path: the image file (PNG, JPEG, WebP, BMP, TIFF, GIF, PPM, TGA; AVIF where Pillow has it).
      what: how messages name the file, e.g. ``"content image"``.

    Returns:
      The decoded pixels; see the module docstring for how modes, profiles and alpha are handled.

    Raises:
      InputImageError: the path is missing, a folder, empty, unreadable, not an image, truncated
        or corrupt, larger than :func:`max_pixels`, or in a mode that cannot be turned into RGB.
    """
    path = Path(path)
    _check_input_file(path, what)
    with _reading(path, what), Image.open(path, formats=_READ_FORMATS) as im:
        png16 = _png16_header(path) if im.format == "PNG" else None
        if png16 is not None:
            rgb = _load_png16(path.read_bytes(), im.info)
        else:
            im.load()  # decode everything now, so a truncated file fails here
            rgb = _pil_to_rgb(ImageOps.exif_transpose(im))
    return rgb


def image_size(path: str | os.PathLike, what: str = "image") -> tuple[int, int]:
    """Returns the upright ``(height, width)`` of an image file from its header, without decoding it.

    EXIF orientations that turn the picture by 90 degrees swap the stored sides, as
    :func:`load_image` does. Lets a caller check every input (and the memory a job will need)
    before any expensive work.

    Raises:
      InputImageError: as :func:`load_image`, except that a truncated pixel stream may only be
        found by decoding (a PNG is decoded here: its EXIF chunk may follow the pixels).
    """
    path = Path(path)
    _check_input_file(path, what)
    with _reading(path, what), Image.open(path, formats=_READ_FORMATS) as im:
        width, height = im.size
        if im.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8):
            width, height = height, width
    return height, width


@contextlib.contextmanager
def _reading(path: Path, what: str) -> Iterator[None]:
    """Maps everything Pillow (and this module's decoders) raise for a bad file to InputImageError."""
    try:
        with warnings.catch_warnings():
            # Between MAX_IMAGE_PIXELS and max_pixels() Pillow warns; big prints are welcome here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # Pillow also warns when it skips damaged metadata (corrupt EXIF, TIFF tags past the
            # end of the file). The pixels either decode, and are used, or fail below; a warning
            # on top would only break the command line's one-line output.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\.|$)")
            yield
    except Image.DecompressionBombError as err:
        raise InputImageError(
            f"{what} is too large to load safely: {path} ({_pixels_of(err)}; the limit is "
            f"{max_pixels() / 1e6:.0f} megapixels); downscale it first or raise "
            "PIL.Image.MAX_IMAGE_PIXELS") from None
    except _UnsupportedMode as err:
        raise InputImageError(
            f"{what} has pixel format {err} that cannot be turned into RGB: {path}; re-save it "
            "as an RGB PNG or JPEG") from None
    except UnidentifiedImageError:
        raise InputImageError(
            f"{what} is not an image in a supported format: {path}; use PNG, JPEG, WebP, BMP, "
            "TIFF or GIF") from None
    except PermissionError:
        raise InputImageError(
            f"cannot read {what}: {path} (permission denied); fix its permissions or copy it "
            "somewhere readable") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as err:
        # Pillow reports truncation as OSError, broken chunks as SyntaxError, bad EXIF or
        # headers as ValueError/struct.error; all mean the bytes are not a complete image.
        raise InputImageError(
            f"{what} is truncated or corrupt: {path} ({_one_line(err)}); re-export or "
            "re-download it") from None


def _check_input_file(path: Path, what: str) -> None:
    if not path.exists():
        raise InputImageError(f"{what} not found: {path}; check the path and spelling")
    if path.is_dir():
        raise InputImageError(f"{what} is a folder, not an image file: {path}; pass one image "
                              "file inside it")
    if not path.is_file():
        raise InputImageError(f"{what} is not a regular file: {path}; pass an image file")
    if path.stat().st_size == 0:
        raise InputImageError(f"{what} is an empty file (0 bytes): {path}; re-export or "
                              "re-download it")


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:200]


def _pixels_of(err: BaseException) -> str:
    words = str(err).split()
    # Pillow's message starts "Image size (N pixels) exceeds ..."; fall back to the whole text.
    if len(words) > 2 and words[2].lstrip("(").isdigit():
        return f"{int(words[2].lstrip('(')) / 1e6:.0f} megapixels"
    return _one_line(err)


_HIGH_DEPTH_GRAY = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0,
                    "I": 65535.0, "F": 1.0}


def _pil_to_rgb(im: Image.Image) -> np.ndarray:
    """Converts a decoded, upright Pillow image of any mode to float32 sRGB over white."""
    icc = im.info.get("icc_profile")
    alpha = None
    if im.mode in _HIGH_DEPTH_GRAY:
        gray = np.asarray(im).astype(np.float64) / _HIGH_DEPTH_GRAY[im.mode]
        if not np.all(np.isfinite(gray)):
            raise _CorruptImage("the image holds NaN or infinite values")
        gray = np.clip(gray, 0.0, 1.0)[..., None]
        color = _apply_profile_float(gray, icc)
    else:
        if im.mode in ("LA", "La") or (im.mode in ("1", "L") and im.has_transparency_data):
            la = im.convert("LA")
            base, alpha = la.getchannel("L"), la.getchannel("A")
        elif im.has_transparency_data:  # RGBA, RGBa, PA, P or RGB with a transparent colour
            rgba = im.convert("RGBA")
            base, alpha = rgba.convert("RGB"), rgba.getchannel("A")
        elif im.mode in ("L", "RGB", "CMYK"):
            base = im
        elif im.mode == "1":
            base = im.convert("L")
        else:  # P, RGBX, YCbCr, LAB, HSV
            try:
                base = im.convert("RGB")
            except ValueError:
                raise _UnsupportedMode(im.mode) from None
        color = np.asarray(_apply_profile(base, icc), dtype=np.float64) / 255.0
        if color.ndim == 2:
            color = color[..., None]
        if alpha is not None:
            alpha = np.asarray(alpha, dtype=np.float64) / 255.0
    return _finish(color, alpha)


def _finish(color: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """Composites ``color`` (H, W, 1|3) over white with ``alpha`` (H, W) and returns float32 RGB."""
    if color.shape[-1] == 1:
        color = np.repeat(color, 3, axis=-1)
    if alpha is not None:
        a = alpha[..., None]
        color = color * a + (1.0 - a)
    return np.ascontiguousarray(np.clip(color, 0.0, 1.0), dtype=np.float32)


@functools.cache
def _srgb_profile():
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _source_profile(icc: bytes | None, mode: str):
    """Returns the ImageCms profile to convert from, or None when no conversion is needed."""
    if not icc or ImageCms is None:
        return None
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        space = profile.profile.xcolor_space.strip()
        description = ImageCms.getProfileDescription(profile) or ""
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as err:
        warnings.warn(f"ignoring an embedded ICC profile that cannot be read ({_one_line(err)}); "
                      "colours are taken as sRGB", ColorProfileWarning, stacklevel=4)
        return None
    expected = {"L": "GRAY", "RGB": "RGB", "CMYK": "CMYK"}[mode]
    if space != expected:
        warnings.warn(f"ignoring an embedded ICC profile for {space} data on a {mode} image; "
                      "colours are taken as sRGB", ColorProfileWarning, stacklevel=4)
        return None
    if space == "RGB" and "sRGB" in description:
        return None  # already sRGB: skip a lossy identity transform
    return profile


def _apply_profile(im: Image.Image, icc: bytes | None) -> Image.Image:
    """Converts an L, RGB or CMYK image to sRGB through its ICC profile (RGB or L result)."""
    source = _source_profile(icc, im.mode)
    if source is None:
        return im.convert("RGB") if im.mode == "CMYK" else im
    try:
        return ImageCms.profileToProfile(im, source, _srgb_profile(), outputMode="RGB")
    except ImageCms.PyCMSError as err:
        warnings.warn(f"ignoring an embedded ICC profile that LittleCMS cannot apply "
                      f"({_one_line(err)}); colours are taken as sRGB", ColorProfileWarning,
                      stacklevel=3)
        return im.convert("RGB") if im.mode == "CMYK" else im


def _apply_profile_float(color: np.ndarray, icc: bytes | None) -> np.ndarray:
    """Like _apply_profile for float (H, W, 1|3) data; converts at 8 bits only when needed."""
    mode = "L" if color.shape[-1] == 1 else "RGB"
    if _source_profile(icc, mode) is None:
        return color
    as8 = np.round(color * 255.0).astype(np.uint8)
    im = Image.fromarray(as8[..., 0] if mode == "L" else as8)
    out = np.asarray(_apply_profile(im, icc), dtype=np.float64) / 255.0
    return out if out.ndim == 3 else out[..., None]


# ----- 16-bit colour PNG (Pillow keeps only the high byte of each sample) ---------------------

# PNG colour type -> channel count, for the 16-bit types Pillow reduces to 8 bits.
_PNG16_CHANNELS = {2: 3, 4: 2, 6: 4}

_EXIF_TRANSPOSE = {  # EXIF orientation -> how to make an (H, W, C) array upright
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def _png16_header(path: Path) -> tuple[int, int] | None:
    """Returns (colour type, interlace) for a non-interlaced 16-bit colour PNG, else None."""
    with open(path, "rb") as f:
        head = f.read(29)
    if len(head) < 29 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    depth, ctype, interlace = head[24], head[25], head[28]
    if depth != 16 or ctype not in _PNG16_CHANNELS or interlace != 0:
        return None
    return ctype, interlace


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    pos = len(_PNG_SIGNATURE)
    while True:
        if pos + 8 > len(data):
            raise _CorruptImage("PNG ends before its IEND chunk")
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        crc = data[pos + 8 + length:pos + 12 + length]
        if len(body) != length or len(crc) != 4:
            raise _CorruptImage(f"PNG chunk {kind!r} is cut short")
        if struct.unpack(">I", crc)[0] != zlib.crc32(kind + body) & 0xFFFFFFFF:
            raise _CorruptImage(f"PNG chunk {kind!r} fails its CRC check")
        yield kind, body
        if kind == b"IEND":
            return
        pos += 12 + length


def _read_png16(data: bytes) -> tuple[np.ndarray, dict]:
    """Decodes a non-interlaced 16-bit colour PNG to uint16 (H, W, C) plus eXIf/iCCP/tRNS."""
    ihdr, idat, extra = None, [], {}
    for kind, body in _png_chunks(data):
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind in (b"eXIf", b"tRNS"):
            extra[kind.decode()] = body
    if ihdr is None or not idat:
        raise _CorruptImage("PNG has no IHDR or no image data")
    width, height, _, ctype, _, _, _ = ihdr
    channels = _PNG16_CHANNELS[ctype]
    bpp = 2 * channels
    expected = height * (1 + width * bpp)
    stream = zlib.decompressobj()
    # Inflate at most one byte more than the header allows: a small file must not be able to
    # expand into gigabytes (a zip bomb in IDAT) before its size is checked.
    raw = stream.decompress(b"".join(idat), expected + 1)
    if len(raw) > expected:
        raise _CorruptImage("PNG image data is longer than its header says")
    if not stream.eof or len(raw) != expected:
        raise _CorruptImage("PNG image data is truncated")
    rows = np.frombuffer(raw, np.uint8).reshape(height, 1 + width * bpp)
    kinds = rows[:, 0]
    if kinds.max(initial=0) > 4:
        raise _CorruptImage("PNG uses an unknown row filter")
    pixels = _unfilter(kinds, rows[:, 1:].reshape(height, width, bpp))
    return pixels.view(">u2").reshape(height, width, channels).astype(np.uint16), extra


def _unfilter(kinds: np.ndarray, filtered: np.ndarray) -> np.ndarray:
    """Reverses PNG row filters (PNG spec section 9) along anti-diagonals.

    Pixel (y, x) depends on its left, upper and upper-left neighbours, so all pixels with the same
    y + x can be reconstructed at once: H + W - 1 vectorised steps instead of H * W Python ones.
    """
    height, width, bpp = filtered.shape
    # One row and one column of zeros in front stand for the "outside the image" neighbours.
    out = np.zeros((height + 1, width + 1, bpp), np.int16)
    filt = filtered.astype(np.int16)
    kind = kinds.astype(np.int16)
    for d in range(height + width - 1):
        ys = np.arange(max(0, d - width + 1), min(height, d + 1))
        xs = d - ys
        a, b, c = out[ys + 1, xs], out[ys, xs + 1], out[ys, xs]
        k = kind[ys][:, None]
        p = a + b - c
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        pred = np.select([k == 1, k == 2, k == 3, k == 4], [a, b, (a + b) >> 1, paeth], 0)
        out[ys + 1, xs + 1] = (filt[ys, xs] + pred) & 0xFF
    return out[1:, 1:].astype(np.uint8)


def _load_png16(data: bytes, info: dict) -> np.ndarray:
    samples, extra = _read_png16(data)
    values = samples.astype(np.float64) / 65535.0
    channels = samples.shape[-1]
    alpha = None
    if channels in (2, 4):
        values, alpha = values[..., :-1], values[..., -1]
    elif "tRNS" in extra and len(extra["tRNS"]) == 6:  # one fully transparent RGB colour
        key = np.array(struct.unpack(">3H", extra["tRNS"]), np.uint16)
        alpha = (~np.all(samples == key, axis=-1)).astype(np.float64)
    if "eXIf" in extra:
        exif = Image.Exif()
        exif.load(extra["eXIf"])
        orient = _EXIF_TRANSPOSE.get(exif.get(ExifTags.Base.Orientation))
        if orient is not None:
            values = orient(values)
            alpha = orient(alpha[..., None])[..., 0] if alpha is not None else None
    values = _apply_profile_float(values, info.get("icc_profile"))
    return _finish(values, alpha)


# --------------------------------------------------------------------------------------------
# Sizes


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def size_for_height(h: int, w: int, height: int) -> tuple[int, int]:
    """Returns ``(height, width)`` that scales an ``h`` x ``w`` image to ``height`` rows.

    The width keeps the aspect ratio, rounded half up, and is at least 1. This is Gatys-style
    preprocessing: ``--size`` sets the height.
    """
    return height, max(1, _round_half_up(w * height / h))


def _target_size(h: int, w: int, height, width, short_side, long_side) -> tuple[int, int]:
    given = {k: v for k, v in (("height", height), ("width", width), ("short_side", short_side),
                               ("long_side", long_side)) if v is not None}
    for name, value in given.items():
        if int(value) != value or value < 1:
            raise ConfigError(f"resize {name} must be a positive whole number of pixels, got "
                              f"{value}; pass e.g. 512")
    if not given or (("short_side" in given or "long_side" in given) and len(given) > 1):
        raise ConfigError("resize needs height and/or width, or exactly one of short_side and "
                          f"long_side; got {', '.join(given) or 'nothing'}")
    if "short_side" in given or "long_side" in given:
        side = given.get("short_side", given.get("long_side"))
        pick_height = (h <= w) == ("short_side" in given)
        if pick_height:
            return size_for_height(h, w, int(side))
        return tuple(reversed(size_for_height(w, h, int(side))))  # type: ignore[return-value]
    if height is not None and width is not None:
        return int(height), int(width)
    if height is not None:
        return size_for_height(h, w, int(height))
    return tuple(reversed(size_for_height(w, h, int(width))))  # type: ignore[return-value]


def resize(image: np.ndarray, height: int | None = None, width: int | None = None, *,
           short_side: int | None = None, long_side: int | None = None) -> np.ndarray:
    """Resizes ``(H, W, C)`` float data with Pillow's bicubic filter, keeping aspect by default.

    Give ``height`` (width follows the aspect ratio), ``width`` (height follows), both (exact size),
    or exactly one of ``short_side``/``long_side``. Each channel is resampled as a 32-bit float
    Pillow image, so no precision is lost to 8 bits; bicubic overshoot is clipped back to [0, 1].
    Downscaling is antialiased (Pillow widens the filter support).

    Args:
      image: float array ``(H, W, C)``.
      height, width, short_side, long_side: target size in pixels.

    Returns:
      float32 ``(height, width, C)`` in [0, 1].

    Raises:
      ConfigError: sizes are missing, conflicting or not positive integers.
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"resize expects an (H, W, C) array, got shape {image.shape}")
    h, w = image.shape[:2]
    new_h, new_w = _target_size(h, w, height, width, short_side, long_side)
    if (new_h, new_w) == (h, w):
        return np.clip(image, 0.0, 1.0).astype(np.float32)
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], dtype=np.float32))
                   .resize((new_w, new_h), Image.Resampling.BICUBIC))
        for c in range(image.shape[-1])
    ]
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0).astype(np.float32)


def check_min_size(image: np.ndarray, min_side: int, what: str = "image",
                   layer: str | None = None, flag: str = "--size") -> None:
    """Raises InputImageError when an ``(H, W, C)`` or ``(N, H, W, C)`` image is too small.

    Args:
      image: the array to check.
      min_side: the smallest height and width the network accepts (see ``vgg.min_image_size``).
      what: how the message names the image, e.g. ``"content image"``.
      layer: the deepest layer used, named in the message to explain the limit.
      flag: the option that sets the image size, suggested as a fix.
    """
    h, w = np.shape(image)[-3:-1]
    if h < min_side or w < min_side:
        why = (f"the deepest layer used ({layer}) needs" if layer else "the network needs")
        raise InputImageError(f"{what} is {w}x{h} px; {why} at least {min_side} px per side; "
                              f"use a larger image or {flag}")


# --------------------------------------------------------------------------------------------
# Saving


def check_output_path(path: str | os.PathLike, bits: int = 8) -> Path:
    """Checks that ``path`` can be written as an image, before any long job starts.

    Creates and removes a probe file next to ``path``, which is the only reliable test of
    write access (permission bits say nothing about read-only mounts or ACLs).

    Args:
      path: the output file.
      bits: 8, or 16 (PNG only).

    Returns:
      ``path`` as a Path.

    Raises:
      OutputPathError: unsupported extension, missing or unwritable folder, or a folder at path.
      ConfigError: bits is not 8 or 16, or 16 bits for a format other than PNG.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"output path is a folder: {path}; give a file name such as "
                              f"{path / 'result.png'}")
    ext = path.suffix.lower()
    if ext not in _SAVE_FORMATS:
        shown = f'extension "{path.suffix}"' if path.suffix else "no extension"
        raise OutputPathError(f"cannot save an image with {shown}: {path}; use one of "
                              f"{', '.join(SAVE_EXTENSIONS)}")
    if bits not in SAVE_BITS:
        raise ConfigError(f"output bit depth must be 8 or 16, got {bits}; use 8 (or 16 for PNG)")
    if bits == 16 and _SAVE_FORMATS[ext] != "PNG":
        raise ConfigError(f"16-bit output is written only as PNG, not {ext}: {path}; use a .png "
                          "output or 8 bits")
    parent = path.parent
    if not parent.exists():
        raise OutputPathError(f"output folder does not exist: {parent}; create it or choose "
                              "another --output")
    if not parent.is_dir():
        raise OutputPathError(f"output folder is not a folder: {parent}; choose another --output")
    try:
        fd, probe = _create_temp(path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputPathError(f"output folder is not writable: {parent} "
                              f"({err.strerror or _one_line(err)}); fix its permissions or "
                              "choose another --output") from None
    return path


def _create_temp(path: Path) -> tuple[int, Path]:
    # O_EXCL makes the name ours alone; mode 0o666 lets the umask decide, as for any new file.
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), temp


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Writes ``data`` (str as UTF-8) to ``path`` atomically, as :func:`save_image` writes images.

    A temporary file in the same folder is written, synced and renamed over ``path``: a failed
    write (disk full...) leaves any earlier file at ``path`` untouched and no temporary file behind.

    Raises:
      OutputPathError: the folder cannot be written or the write failed.
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    temp = None
    try:
        fd, temp = _create_temp(path)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except OSError as err:
        raise OutputPathError(f"could not write {path} ({err.strerror or _one_line(err)}); check free "
                              "disk space and permissions, or choose another path") from None
    finally:
        if temp is not None and temp.exists():
            temp.unlink()
    return path


def save_image(path: str | os.PathLike, image, *, bits: int = 8, quality: int = 95) -> Path:
    """Writes a float RGB image to ``path`` atomically; the format follows the extension.

    The file is written to a temporary name in the same folder, synced, then renamed over
    ``path``: an interrupted or failed save leaves any earlier file at ``path`` untouched and no
    partial file behind.

    Args:
      path: output file; ``.png``, ``.jpg``/``.jpeg``, ``.webp``, ``.tif``/``.tiff``, ``.bmp``.
      image: float ``(H, W, 3)`` or ``(1, H, W, 3)`` in [0, 1] (NumPy or JAX); values outside are
        clipped.
      bits: 8, or 16 for PNG (48-bit RGB, written by this module since Pillow has no such mode).
      quality: JPEG/WebP quality 1..100. At 90 and above JPEG keeps full-resolution chroma (4:4:4),
        which matters for the fine colour texture of stylised images.

    Returns:
      ``path`` as a Path.

    Raises:
      OutputPathError: see :func:`check_output_path`, or the write itself failed (disk full...).
      ConfigError: bad bits or quality.
      NonFiniteLossError: the image holds NaN or infinite values (the run diverged).
      ValueError: the array has the wrong shape or is not floating point.
    """
    path = check_output_path(path, bits)
    if not 1 <= quality <= 100:
        raise ConfigError(f"image quality must be between 1 and 100, got {quality}; 95 is a good "
                          "default")
    pixels = _to_pixels(image, path, bits)
    fmt = _SAVE_FORMATS[path.suffix.lower()]
    fd, temp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            if bits == 16:
                _write_png16(f, pixels)
            else:
                options = {}
                if fmt in ("JPEG", "WEBP"):
                    options["quality"] = quality
                if fmt == "JPEG":
                    options["subsampling"] = 0 if quality >= 90 else 2
                Image.fromarray(pixels).save(f, format=fmt, **options)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except OSError as err:
        raise OutputPathError(f"could not write {path} ({err.strerror or _one_line(err)}); check "
                              "free disk space and permissions, or choose another --output") from None
    finally:
        if temp.exists():
            temp.unlink()
    return path


def _to_pixels(image, path: Path, bits: int) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"save_image expects an (H, W, 3) or (1, H, W, 3) array, got shape "
                         f"{array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"save_image expects floats in [0, 1], got dtype {array.dtype}")
    array = array.astype(np.float64)
    bad = np.count_nonzero(~np.isfinite(array))
    if bad:
        raise NonFiniteLossError(f"refusing to save {path}: the image has {bad} NaN or infinite "
                                 "values, so the run diverged; lower the learning rate or weights")
    scale = 65535.0 if bits == 16 else 255.0
    return np.round(np.clip(array, 0.0, 1.0) * scale).astype(np.uint16 if bits == 16 else np.uint8)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return (struct.pack(">I", len(body)) + kind + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))


def _write_png16(f, pixels: np.ndarray) -> None:
    """Writes uint16 (H, W, 3) as a 48-bit RGB PNG with the Up filter on every row."""
    height, width, _ = pixels.shape
    rows = pixels.astype(">u2").view(np.uint8).reshape(height, width * 6)
    up = rows.copy()
    up[1:] -= rows[:-1]  # uint8 arithmetic wraps modulo 256, as the filter defines
    raw = np.concatenate([np.full((height, 1), 2, np.uint8), up], axis=1)
    f.write(_PNG_SIGNATURE)
    f.write(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)))
    f.write(_png_chunk(b"sRGB", b"\x00"))  # pixels are sRGB; perceptual rendering intent
    f.write(_png_chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)))
    f.write(_png_chunk(b"IEND", b""))


# --------------------------------------------------------------------------------------------
# Folders and packaged images


def list_images(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Returns the image files under ``folder``, sorted by path.

    Picks files whose extension is in :data:`IMAGE_EXTENSIONS` (any case). Hidden files (name
    starting with ".") are skipped: they are mostly macOS "._" resource forks that share an
    image's extension but hold no image.

    Raises:
      InputImageError: ``folder`` is missing or not a folder.
    """
    folder = Path(folder)
    if not folder.exists():
        raise InputImageError(f"image folder not found: {folder}; check the path")
    if not folder.is_dir():
        raise InputImageError(f"not a folder: {folder}; pass the folder that holds the images")
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in candidates
                  if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
                  and p.is_file())


def _asset(name: str) -> Path:
    # The package is installed as plain files (setuptools package-data), so this is a real path.
    return Path(str(resources.files("nst_jax").joinpath(_ASSETS, name)))


def default_content_path() -> Path:
    """Returns the packaged default content photo (see ``nst_jax/assets/ATTRIBUTION.md``)."""
    return _asset(_DEFAULT_CONTENT)


def default_style_path() -> Path:
    """Returns the packaged default style painting (see ``nst_jax/assets/ATTRIBUTION.md``)."""
    return _asset(_DEFAULT_STYLE)
