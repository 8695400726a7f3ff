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
  8 bits, so those are decoded here (:func:`_decode_png16`, with Pillow's own inflater and row
  unfilter) to keep every bit, interlaced ones included.
* A PNG must follow the chunk rules of the PNG specification (:func:`_png_layout`: one IHDR, first;
  contiguous IDAT; IEND last; valid depth and colour type; every CRC right), so the size its header
  declares, which :func:`image_size` reports and callers budget memory by, is what is decoded.
* Mode ``I`` (32-bit integers) is taken as 16-bit data (0..65535) and mode ``F`` as intensities in
  [0, 1]; values outside are clipped.
* CMYK (including Adobe's inverted CMYK JPEGs) goes through its ICC profile when one is embedded,
  otherwise through Pillow's naive conversion.

Every failure a user can cause raises :class:`~nst_jax.errors.InputImageError` or
:class:`~nst_jax.errors.OutputPathError` with a one-line message; Pillow's exceptions never escape.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import math
import os
import stat
import struct
import warnings
import zlib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, JpegImagePlugin, UnidentifiedImageError, features

try:  # LittleCMS support is an optional part of a Pillow build.
    from PIL import ImageCms
except ImportError:  # pragma: no cover - depends on how Pillow was built
    ImageCms = None

from nst_jax import files
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


def load_image(path: str | os.PathLike, what: str = "image", *,
               min_size: tuple[int, int] | None = None) -> np.ndarray:
    """Reads an image file as upright sRGB, float32 ``(H, W, 3)`` in [0, 1].

    The file is opened once, without blocking (a FIFO or device is refused before any read), its
    header is checked against :func:`max_pixels` before any pixel is decoded, and a PNG's chunk
    layout is validated first (see :func:`_png_layout`), so the size the header declares is the
    size that is decoded. Peak memory is about 16 bytes per pixel on top of the file for 8-bit
    images, whose result alone is 12.

    Args:
      path: the image file (PNG, JPEG, WebP, BMP, TIFF, GIF, PPM, TGA; AVIF where Pillow has it).
      what: how messages name the file, e.g. ``"content image"``.
      min_size: upright ``(height, width)`` of the largest image the caller will resample the
        result to. A JPEG is then decoded at 1/2, 1/4 or 1/8 scale by the codec (Pillow's
        ``draft``, DCT scaling) when that scale divides both sides of the file exactly and the
        reduced image keeps at least :data:`DRAFT_MARGIN` times ``min_size`` on each side; see
        :func:`_draft`. The result then has the source's exact aspect ratio, so a size computed
        from its shape (:func:`size_for_height`, :func:`resize`) is the one computed from the
        header. Other formats ignore it.

    Returns:
      The decoded pixels; see the module docstring for how modes, profiles and alpha are handled.
      Their shape is the upright header size, or that divided by the draft scale.

    Raises:
      InputImageError: the path is missing, a folder or not a regular file, empty, unreadable, not
        an image, truncated or corrupt, larger than :func:`max_pixels`, or in a mode that cannot be
        turned into RGB.
    """
    path = Path(path)
    with _reading(path, what), _opened(path, what, keep_idat=True) as (im, layout):
        orientation = _orientation(im, layout)
        if min_size is not None:
            _draft(im, min_size, orientation)
        if layout is not None and layout.depth == 16 and layout.ctype in _PNG16_CHANNELS:
            color, alpha = _decode_png16(layout, im.info)
        else:
            im.load()  # decode everything now, so a truncated file fails here
            color, alpha = _pil_to_float(im)
    return _finish(color, alpha, orientation)


def image_size(path: str | os.PathLike, what: str = "image") -> tuple[int, int]:
    """Returns the upright ``(height, width)`` of an image file from its header, without decoding it.

    EXIF orientations that turn the picture by 90 degrees swap the stored sides, as
    :func:`load_image` does. Lets a caller check every input (and the memory a job will need)
    before any expensive work. A PNG's chunks are read (not inflated) to find the one IHDR and
    the EXIF chunk wherever it is, with the same rules :func:`load_image` applies.

    Raises:
      InputImageError: as :func:`load_image`, except that a damaged pixel stream is only found by
        decoding.
    """
    path = Path(path)
    with _reading(path, what), _opened(path, what, keep_idat=False) as (im, layout):
        width, height = im.size
        if _orientation(im, layout) in (5, 6, 7, 8):
            width, height = height, width
    return height, width


# A drafted JPEG keeps at least this many times the size it will be resampled to, so the final
# (antialiased bicubic) resize still averages several decoded pixels per output pixel.
DRAFT_MARGIN = 2


def _draft(im: Image.Image, min_size: tuple[int, int], orientation: int | None) -> None:
    """Asks the JPEG decoder for the largest whole reduction that keeps ``min_size`` (with margin).

    ``min_size`` is upright; the decoder works in the file's stored orientation, so the sides are
    swapped for EXIF orientations that turn the picture. Only scales that divide both stored sides
    exactly are used, so the reduced image has the source's aspect ratio to the pixel.
    """
    if not isinstance(im, JpegImagePlugin.JpegImageFile):
        return
    height, width = (int(v) for v in min_size)
    if orientation in (5, 6, 7, 8):
        height, width = width, height
    stored_w, stored_h = im.size
    for scale in (8, 4, 2):
        if (stored_w % scale == 0 and stored_h % scale == 0
                and stored_w // scale >= DRAFT_MARGIN * width
                and stored_h // scale >= DRAFT_MARGIN * height):
            # Pillow picks the scale from the requested size; this size asks for exactly `scale`.
            # The mode is the file's own (a CMYK or grayscale JPEG stays what it is).
            im.draft(im.mode, (stored_w // scale, stored_h // scale))
            return


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


@contextlib.contextmanager
def _opened(path: Path, what: str, keep_idat: bool) -> Iterator[tuple[Image.Image, _PngLayout | None]]:
    """Opens an input image (header only) and, for a PNG, checks its chunk layout first."""
    with _open_input(path, what) as f:
        layout = None
        if f.read(len(_PNG_SIGNATURE)) == _PNG_SIGNATURE:
            layout = _png_layout(f, keep_idat)
        f.seek(0)
        with Image.open(f, formats=_READ_FORMATS) as im:
            yield im, layout


@contextlib.contextmanager
def _open_input(path: Path, what: str) -> Iterator[io.BufferedReader]:
    """Opens an input image for reading, refusing anything that is not a non-empty regular file.

    The path is checked with ``stat`` first, so a FIFO, socket or device is never opened (opening
    a FIFO for reading blocks until a writer appears). The open itself is non-blocking and the
    opened file is checked again, in case the path was swapped in between.
    """
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise InputImageError(f"{what} not found: {path}; check the path and spelling") from None
    except PermissionError:
        raise
    except OSError as err:  # ELOOP, ENAMETOOLONG...
        raise InputImageError(f"cannot read {what}: {path} ({err.strerror or _one_line(err)}); "
                              "check the path") from None
    _check_mode(mode, path, what)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
                 | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        _check_mode(info.st_mode, path, what)
        if info.st_size == 0:
            raise InputImageError(f"{what} is an empty file (0 bytes): {path}; re-export or "
                                  "re-download it")
        yield f


def _check_mode(mode: int, path: Path, what: str) -> None:
    if stat.S_ISDIR(mode):
        raise InputImageError(f"{what} is a folder, not an image file: {path}; pass one image "
                              "file inside it")
    if not stat.S_ISREG(mode):
        raise InputImageError(f"{what} is not a regular file (a pipe, socket or device): {path}; "
                              "pass an image file")


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:200]


def _pixels_of(err: BaseException) -> str:
    words = str(err).split()
    # Pillow's message starts "Image size (N pixels) exceeds ..."; fall back to the whole text.
    if len(words) > 2 and words[2].lstrip("(").isdigit():
        return f"{int(words[2].lstrip('(')) / 1e6:.0f} megapixels"
    return _one_line(err)


# Exact float32 value of every 8-bit and 16-bit sample (v / 255, v / 65535 rounded once):
# indexing a table converts an image with one allocation, the size of the result.
_UNIT8 = (np.arange(256) / 255.0).astype(np.float32)
_UNIT16 = (np.arange(65536) / 65535.0).astype(np.float32)

_GRAY16 = ("I;16", "I;16B", "I;16L", "I;16N")


def _pil_to_float(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Converts a decoded Pillow image of any mode to float32 sRGB (H, W, 1|3) and alpha (H, W).

    The Pillow image is closed once its pixels are copied out, so its buffer and the float
    result are not both alive.
    """
    icc = im.info.get("icc_profile")
    if im.mode in _GRAY16 or im.mode in ("I", "F"):
        raw = np.asarray(im)
        im.close()
        if im.mode == "F":
            if not np.all(np.isfinite(raw)):
                raise _CorruptImage("the image holds NaN or infinite values")
            gray = np.clip(raw, 0.0, 1.0, dtype=np.float32)
        elif im.mode == "I":  # 32-bit integers taken as 16-bit data; values outside are clipped
            gray = _UNIT16[np.clip(raw, 0, 65535)]
        else:
            gray = _UNIT16[raw.astype(np.uint16, copy=False)]
        return _apply_profile_float(gray[..., None], icc), None
    alpha = None
    if im.mode in ("LA", "La") or (im.mode in ("1", "L") and im.has_transparency_data):
        la = np.asarray(im.convert("LA"))
        base, alpha = la[..., :1], la[..., 1]
    elif im.has_transparency_data:  # RGBA, RGBa, PA, P or RGB with a transparent colour
        rgba = np.asarray(im.convert("RGBA"))
        base, alpha = rgba[..., :3], rgba[..., 3]
    elif im.mode in ("L", "RGB", "CMYK"):
        base = im
    elif im.mode == "1":
        base = im.convert("L")
    else:  # P, RGBX, YCbCr, LAB, HSV
        try:
            base = im.convert("RGB")
        except ValueError:
            raise _UnsupportedMode(im.mode) from None
    if isinstance(base, Image.Image):
        base = np.asarray(_apply_profile(base, icc))
    else:
        mode = "L" if base.shape[-1] == 1 else "RGB"
        if _source_profile(icc, mode) is not None:
            base = np.asarray(_apply_profile(Image.fromarray(base[..., 0] if mode == "L" else base),
                                             icc))
    im.close()
    color = _UNIT8[base]
    if color.ndim == 2:
        color = color[..., None]
    return color, None if alpha is None else _UNIT8[alpha]


def _finish(color: np.ndarray, alpha: np.ndarray | None, orientation: int | None = None
            ) -> np.ndarray:
    """Makes float32 RGB from ``color`` (H, W, 1|3) over white with ``alpha`` (H, W), upright.

    ``color`` and ``alpha`` are fresh arrays (this may work in place on them); ``orientation`` is
    an EXIF orientation, applied as a view before the one copy into the result.
    """
    turn = _EXIF_TRANSPOSE.get(orientation, lambda a: a)
    color = turn(color)
    if alpha is not None:
        color = color if color.shape[-1] == 3 else np.repeat(color, 3, axis=-1)
        color -= 1.0  # color * a + (1 - a), in place: 1 - a * (1 - color)
        color *= turn(alpha[..., None])
        color += 1.0
    if color.shape[-1] == 3:
        np.clip(color, 0.0, 1.0, out=color)
        return np.ascontiguousarray(color)  # copies only when the orientation made a view
    out = np.empty(color.shape[:2] + (3,), np.float32)
    np.clip(color, 0.0, 1.0, out=out)  # broadcasts one gray channel to three
    return out


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
    as8 = np.round(np.clip(color, 0.0, 1.0) * 255.0).astype(np.uint8)
    im = Image.fromarray(as8[..., 0] if mode == "L" else as8)
    out = _UNIT8[np.asarray(_apply_profile(im, icc))]
    return out if out.ndim == 3 else out[..., None]


# ----- PNG chunk layout and 16-bit colour PNG --------------------------------------------------

# PNG colour type -> allowed bit depths (PNG spec, table 11.1).
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
# Colour type -> exact tRNS length (palette images: at most one entry per palette colour).
_PNG_TRNS = {0: 2, 2: 6}
# Ancillary chunks that may appear at most once (PNG spec, table 5.3).
_PNG_ONCE = (b"cHRM", b"gAMA", b"iCCP", b"sBIT", b"sRGB", b"bKGD", b"hIST", b"tRNS", b"pHYs",
             b"tIME", b"eXIf", b"acTL", b"cICP", b"mDCV", b"cLLI")
_PNG_MAX_SIDE = 2**31 - 1
_PNG_BLOCK = 1 << 20
_DEFLATE_MAX_RATIO = 1032  # 258 bytes from one 2-bit match code, at best

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


@dataclasses.dataclass(frozen=True)
class _PngLayout:
    """What the chunks of a valid PNG declare (IHDR fields and the chunks this module reads)."""

    width: int
    height: int
    depth: int
    ctype: int
    interlace: int
    exif: bytes | None
    trns: bytes | None
    idat: bytes | None  # the concatenated image data, when asked for


def _png_layout(f, keep_idat: bool) -> _PngLayout:
    """Reads every chunk of a PNG and refuses one that breaks the chunk rules of the PNG spec.

    Exactly one IHDR, first, with a valid size (1 .. 2**31-1 per side) and a valid combination of
    bit depth, colour type, compression, filter and interlace method; a PLTE (once, before the
    image data) exactly when the colour type needs one; IDAT chunks one after the other; IEND
    last and empty; no unknown critical chunk; no ancillary chunk the spec allows once repeated;
    every CRC right. Bytes after IEND are ignored, as every decoder does.

    Pillow parses the header again when it opens the file; with one IHDR it cannot read another
    size than the one checked here. The file is read in blocks of at most a megabyte, and image
    data is kept only when ``keep_idat``.

    Raises:
      _CorruptImage: the first rule broken.
    """
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(0)
    if f.read(len(_PNG_SIGNATURE)) != _PNG_SIGNATURE:
        raise _CorruptImage("not a PNG signature")
    ihdr = None
    seen: set[bytes] = set()
    idat: list[bytes] = []
    idat_bytes = 0
    in_idat = done_idat = False
    exif = trns = None
    while True:
        head = f.read(8)
        if len(head) < 8:
            raise _CorruptImage("PNG ends before its IEND chunk")
        length, kind = struct.unpack(">I4s", head)
        if not kind.isalpha() or not kind.isascii():
            raise _CorruptImage(f"PNG chunk type {kind!r} is not four letters")
        if length > _PNG_MAX_SIDE or length + 4 > size - f.tell():
            raise _CorruptImage(f"PNG chunk {kind.decode()} is cut short")
        keep = kind != b"IDAT" or keep_idat
        crc = zlib.crc32(kind)
        parts = []
        left = length
        while left:
            block = f.read(min(left, _PNG_BLOCK))
            if not block:
                raise _CorruptImage(f"PNG chunk {kind.decode()} is cut short")
            crc = zlib.crc32(block, crc)
            left -= len(block)
            if keep:
                parts.append(block)
        body = b"".join(parts)
        stored = f.read(4)
        if len(stored) != 4:
            raise _CorruptImage(f"PNG chunk {kind.decode()} is cut short")
        if struct.unpack(">I", stored)[0] != crc & 0xFFFFFFFF:
            raise _CorruptImage(f"PNG chunk {kind.decode()} fails its CRC check")
        name = kind.decode()
        if ihdr is None and kind != b"IHDR":
            raise _CorruptImage(f"PNG starts with a {name} chunk instead of IHDR")
        if kind == b"IHDR":
            if ihdr is not None:
                raise _CorruptImage("PNG has more than one IHDR chunk")
            ihdr = _check_ihdr(body)
            continue
        if kind == b"IDAT":
            if done_idat:
                raise _CorruptImage("PNG image data (IDAT) is split by other chunks")
            in_idat = True
            idat_bytes += length
            if keep_idat:
                idat.append(body)
            continue
        done_idat = done_idat or in_idat
        ctype = ihdr[3]
        if kind == b"IEND":
            if length:
                raise _CorruptImage("PNG IEND chunk is not empty")
            break
        if kind == b"PLTE":
            if b"PLTE" in seen or done_idat:
                raise _CorruptImage("PNG has a second PLTE chunk or one after the image data")
            if ctype in (0, 4) or length % 3 or not 3 <= length <= 768:
                raise _CorruptImage("PNG has an invalid PLTE chunk")
        elif kind in _PNG_ONCE:
            if kind in seen:
                raise _CorruptImage(f"PNG has more than one {name} chunk")
            if kind == b"tRNS":
                if done_idat or ctype in (4, 6) or (ctype == 3 and b"PLTE" not in seen):
                    raise _CorruptImage("PNG has a tRNS chunk where it is not allowed")
                if length != _PNG_TRNS.get(ctype, length) or length > 256:
                    raise _CorruptImage("PNG tRNS chunk has the wrong length")
                trns = body
            elif kind == b"eXIf":
                exif = body
        elif kind[0] < ord("a"):  # upper-case first letter: a critical chunk we do not know
            raise _CorruptImage(f"PNG has an unknown critical chunk {name}")
        seen.add(kind)
    if not in_idat:
        raise _CorruptImage("PNG has no image data (IDAT)")
    width, height, depth, ctype, interlace = ihdr
    if ctype == 3 and b"PLTE" not in seen:
        raise _CorruptImage("palette PNG has no PLTE chunk")
    # Deflate expands at most 1032:1, so image data this short cannot fill the declared size:
    # refuse it before a decoder allocates (and zero-fills) the whole image.
    row_bits = width * depth * {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[ctype]
    raw_bytes = height * (1 + (row_bits + 7) // 8)  # Adam7 adds at most 2 filter bytes a row
    if raw_bytes > _DEFLATE_MAX_RATIO * idat_bytes + 64:
        raise _CorruptImage(f"PNG image data ({idat_bytes} bytes) is too short for the declared "
                            f"{width}x{height} pixels")
    # Stored (uncompressed) deflate blocks add 5 bytes per block: twice the raw size is far more
    # than any encoder writes. More means a stream that inflates past the image (a zip bomb).
    if idat_bytes > 2 * (raw_bytes + 2 * height) + 1024:
        raise _CorruptImage(f"PNG image data is longer than its header says ({idat_bytes} bytes "
                            f"compressed for {width}x{height} pixels)")
    return _PngLayout(width, height, depth, ctype, interlace, exif, trns,
                      b"".join(idat) if keep_idat else None)


def _check_ihdr(body: bytes) -> tuple[int, int, int, int, int]:
    if len(body) != 13:
        raise _CorruptImage("PNG IHDR chunk has the wrong length")
    width, height, depth, ctype, compression, filtering, interlace = struct.unpack(">IIBBBBB", body)
    if not (1 <= width <= _PNG_MAX_SIDE and 1 <= height <= _PNG_MAX_SIDE):
        raise _CorruptImage(f"PNG declares an invalid size {width}x{height}")
    if depth not in _PNG_DEPTHS.get(ctype, ()):
        raise _CorruptImage(f"PNG declares bit depth {depth} with colour type {ctype}")
    if compression != 0 or filtering != 0 or interlace not in (0, 1):
        raise _CorruptImage("PNG declares an unknown compression, filter or interlace method")
    return width, height, depth, ctype, interlace


def _orientation(im: Image.Image, layout: _PngLayout | None) -> int | None:
    """The EXIF orientation of an opened image; for a PNG, from its (one) eXIf chunk."""
    if layout is None:
        exif = im.getexif()  # header data for every other format (JPEG APP1, TIFF tags...)
    else:
        exif = Image.Exif()
        if layout.exif:
            exif.load(layout.exif)
    orientation = exif.get(ExifTags.Base.Orientation)
    return orientation if orientation in _EXIF_TRANSPOSE else None


def _decode_png16(layout: _PngLayout, info: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """Decodes a 16-bit colour PNG to float32 colour (H, W, 1|3) and alpha (H, W), keeping 16 bits.

    Pillow reads these files at 8 bits, but its C inflater and row unfilter (linear in the data,
    Adam7 included) can deliver every byte: read once for the high bytes and once, as
    little-endian samples, for the low ones (gray+alpha, 4 bytes a pixel, is read as raw RGBA).
    """
    size, interlace = (layout.width, layout.height), layout.interlace
    if layout.ctype == 4:
        raw = np.asarray(Image.frombytes("RGBA", size, layout.idat, "zip", "RGBA", interlace))
        samples = raw.view(">u2")  # (H, W, 2): gray, alpha
    else:
        mode = "RGB" if layout.ctype == 2 else "RGBA"
        high = np.asarray(Image.frombytes(mode, size, layout.idat, "zip", f"{mode};16B", interlace))
        samples = high.astype(np.uint16) << 8
        del high
        samples |= np.asarray(Image.frombytes(mode, size, layout.idat, "zip", f"{mode};16L",
                                              interlace))
    channels = samples.shape[-1]
    alpha = None
    if channels in (2, 4):
        color, alpha = _UNIT16[samples[..., :-1]], _UNIT16[samples[..., -1]]
    else:
        color = _UNIT16[samples]
        if layout.trns is not None:  # one fully transparent RGB colour
            key = np.array(struct.unpack(">3H", layout.trns), np.uint16)
            alpha = (~np.all(samples == key, axis=-1)).astype(np.float32)
    del samples
    return _apply_profile_float(color, info.get("icc_profile")), alpha


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
        files.probe_write(path)
    except OSError as err:
        raise OutputPathError(f"output folder is not writable: {parent} "
                              f"({err.strerror or _one_line(err)}); fix its permissions or "
                              "choose another --output") from None
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
    with files.atomic_write(path) as f:
        if bits == 16:
            _write_png16(f, pixels)
        else:
            options = {}
            if fmt in ("JPEG", "WEBP"):
                options["quality"] = quality
            if fmt == "JPEG":
                options["subsampling"] = 0 if quality >= 90 else 2
            Image.fromarray(pixels).save(f, format=fmt, **options)
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
