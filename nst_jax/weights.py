"""Pretrained weights: PyTorch checkpoints to named HWIO params, the npz cache, and downloads.

Three networks are supported (``KINDS``):

* ``vgg19``: torchvision's ImageNet VGG-19 (``vgg19-dcbb9e9d.pth``); keys ``features.N.weight``
  with N the position in :data:`nst_jax.vgg.LAYERS`; the classifier is ignored.
* ``adain_vgg``: AdaIN's ``vgg_normalised.pth`` encoder (an ``nn.Sequential``; modules 0-30, up to
  ``relu4_1``, are used; see :data:`ADAIN_VGG_INDEX`).
* ``adain_decoder``: AdaIN's ``decoder.pth`` (see :data:`ADAIN_DECODER_INDEX`).

``.pth`` files are read by :mod:`nst_jax._pth`, which never imports torch and refuses pickles that
reference anything but tensor rebuilding. Params come back as
``{"conv1_1": {"kernel": HWIO float32, "bias": (O,) float32}, ...}`` numpy arrays; channel counts
come from the file, so narrow networks with the same layout load too.

The project's own format is an ``.npz`` with keys ``"conv1_1/kernel"`` (and ``"__kind__"``), written
atomically by :func:`save_params`; loaders choose the format by file extension.

Downloads follow ``torch.hub``: files go to :func:`cache_dir`, a ``-<hex>`` suffix of the file name
is a SHA-256 prefix to check, and a converted ``.npz`` replaces the download so later runs read
~80 MB instead of 548 MB.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import math
import re
import stat
import struct
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np

from nst_jax import _pth, decoder_layers, files, vgg
from nst_jax._pth import RestrictedUnpickler, read_state_dict
from nst_jax.errors import (
    ChecksumError,
    DownloadError,
    OutputPathError,
    WeightsError,
    check_choice,
)

__all__ = [
    "ADAIN_DECODER_INDEX", "ADAIN_VGG_INDEX", "KINDS", "VGG19_INDEX",
    "WEIGHTS", "RestrictedUnpickler", "WeightsSpec", "cache_dir", "check_writable", "converted_path", "fetch",
    "hash_prefix_from_url", "load", "load_adain_decoder", "load_adain_vgg", "load_params",
    "load_vgg19", "read_state_dict", "resolve_weights", "save_adain_decoder", "save_params",
]

Params = dict[str, dict[str, np.ndarray]]
Progress = Callable[[int, "int | None"], None]

KINDS: tuple[str, ...] = ("vgg19", "adain_vgg", "adain_decoder")

# torchvision ``vgg19().features`` index of each conv (the position of its name in vgg.LAYERS).
VGG19_INDEX: dict[str, int] = {name: vgg.LAYERS.index(name) for name in vgg.CONV_LAYERS}

# pytorch-AdaIN ``net.py`` ``vgg``: a 1x1 conv, then [ReflectionPad2d, Conv2d, ReLU] per conv and
# a MaxPool2d after each block; index 30 is the ReLU giving relu4_1, the deepest layer AdaIN uses.
ADAIN_VGG_INDEX: dict[str, int] = {
    "preprocess": 0, "conv1_1": 2, "conv1_2": 5, "conv2_1": 9, "conv2_2": 12,
    "conv3_1": 16, "conv3_2": 19, "conv3_3": 22, "conv3_4": 25, "conv4_1": 29,
}
ADAIN_VGG_LAST_MODULE = 30

# pytorch-AdaIN ``net.py`` ``decoder`` Sequential index of each conv (names: the decoder's own table).
ADAIN_DECODER_INDEX: dict[str, int] = dict(zip(decoder_layers.LAYERS, (1, 5, 8, 11, 14, 18, 21, 25, 28)))

_LEAVES = {"weight": "kernel", "bias": "bias"}  # torch parameter name -> Flax leaf name
_KIND_KEY = "__kind__"
_LIST_LIMIT = 4  # keys listed per category in a mismatch message
_MAX_NPZ_MEMBERS = 4096  # an npz of params has two members per conv
_MAX_NPY_HEADER = 10_000  # numpy's own default bound on an .npy header
_MAX_KIND_CHARS = 64


# --- network layouts ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Layout:
    """How one network's convs are named, indexed and shaped in checkpoints."""

    kind: str
    what: str
    index: Mapping[str, int]  # param name -> nn.Sequential index, in forward order
    channels: Mapping[str, tuple[int, int]]  # published (in, out) channels, for "missing" lines
    kernel: Mapping[str, int]  # square kernel size
    in_channels: int | None  # the first conv reads RGB
    out_channels: int | None  # the last conv writes RGB
    loader: str
    hint: str
    prefix: str = ""  # torchvision nests the convs under "features."
    ignored: tuple[str, ...] = ()  # key prefixes skipped silently
    last_module: int | None = None  # keys of deeper Sequential modules are skipped silently


def _chain(names: Iterable[str], outs: Iterable[int], cin: int) -> dict[str, tuple[int, int]]:
    channels = {}
    for name, cout in zip(names, outs):
        channels[name] = (cin, cout)
        cin = cout
    return channels


_VGG_WIDTHS = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}

_LAYOUTS: dict[str, _Layout] = {
    "vgg19": _Layout(
        kind="vgg19", what="torchvision VGG-19",
        index=VGG19_INDEX,
        channels=_chain(vgg.CONV_LAYERS, (_VGG_WIDTHS[int(n[4])] for n in vgg.CONV_LAYERS), 3),
        kernel={n: 3 for n in VGG19_INDEX}, in_channels=3, out_channels=None,
        loader="load_vgg19",
        hint="is this a VGG-19 file? the AdaIN encoder loads with load_adain_vgg",
        prefix="features.", ignored=("classifier.",),
    ),
    "adain_vgg": _Layout(
        kind="adain_vgg", what="AdaIN vgg_normalised encoder",
        index=ADAIN_VGG_INDEX,
        channels={"preprocess": (3, 3), **_chain(
            list(ADAIN_VGG_INDEX)[1:], (_VGG_WIDTHS[int(n[4])] for n in list(ADAIN_VGG_INDEX)[1:]), 3)},
        kernel={n: 1 if n == "preprocess" else 3 for n in ADAIN_VGG_INDEX},
        in_channels=3, out_channels=None,
        loader="load_adain_vgg",
        hint="is this AdaIN's vgg_normalised.pth? torchvision's VGG-19 loads with load_vgg19",
        last_module=ADAIN_VGG_LAST_MODULE,
    ),
    "adain_decoder": _Layout(
        kind="adain_decoder", what="AdaIN decoder",
        index=ADAIN_DECODER_INDEX,
        channels=dict(zip(decoder_layers.LAYERS, decoder_layers.layer_channels())),
        kernel={n: 3 for n in ADAIN_DECODER_INDEX}, in_channels=None, out_channels=3,
        loader="load_adain_decoder",
        hint="is this AdaIN's decoder.pth? the encoder loads with load_adain_vgg",
    ),
}


def _fmt(shape: Iterable[int] | None) -> str:
    if shape is None:  # an npz member whose header was not read (compressed and not needed)
        return "(not read)"
    return "x".join(str(d) for d in shape) or "scalar"


def _torch_shapes(layout: _Layout, name: str) -> dict[str, tuple[int, ...]]:
    cin, cout = layout.channels[name]
    k = layout.kernel[name]
    return {"kernel": (cout, cin, k, k), "bias": (cout,)}


def _match_torch(layout: _Layout, shapes: Mapping[str, tuple[int, ...]]):
    """Maps state-dict keys to ``(name, leaf)``; returns (found, missing lines, unexpected lines)."""
    by_index = {i: n for n, i in layout.index.items()}
    found: dict[tuple[str, str], str] = {}
    unexpected = []
    for key, shape in shapes.items():
        k = key
        while k.startswith("module."):  # nn.DataParallel wrappers
            k = k[len("module."):]
        if k.startswith(layout.ignored):
            continue
        if layout.prefix and k.startswith(layout.prefix):
            k = k[len(layout.prefix):]
        idx, _, leaf = k.partition(".")
        if idx.isdigit() and layout.last_module is not None and int(idx) > layout.last_module:
            continue
        name = by_index.get(int(idx)) if idx.isdigit() else None
        slot = _LEAVES.get(leaf)
        if name is None or slot is None or (name, slot) in found:
            unexpected.append(f"+{key} {_fmt(shape)}")
            continue
        found[name, slot] = key
    missing = [
        f"-{layout.prefix}{layout.index[n]}.{torch_leaf} {_fmt(_torch_shapes(layout, n)[slot])}"
        for n in layout.index for torch_leaf, slot in _LEAVES.items() if (n, slot) not in found
    ]
    return found, missing, unexpected


def _match_flat(layout: _Layout, shapes: Mapping[str, tuple[int, ...]]):
    """Like :func:`_match_torch` for npz keys ``"conv1_1/kernel"`` (HWIO)."""
    found = {}
    unexpected = []
    for key, shape in shapes.items():
        name, _, slot = key.partition("/")
        if name in layout.index and slot in ("kernel", "bias"):
            found[name, slot] = key
        else:
            unexpected.append(f"+{key} {_fmt(shape)}")
    missing = []
    for n in layout.index:
        o, i, kh, kw = _torch_shapes(layout, n)["kernel"]
        for slot, shape in (("kernel", (kh, kw, i, o)), ("bias", (o,))):
            if (n, slot) not in found:
                missing.append(f"-{n}/{slot} {_fmt(shape)}")
    return found, missing, unexpected


def _guess_kind(shapes: Mapping[str, tuple[int, ...]], npz: bool) -> str | None:
    """The kind whose layout the keys match exactly, if any."""
    match = _match_flat if npz else _match_torch
    for kind, layout in _LAYOUTS.items():
        _, missing, unexpected = match(layout, shapes)
        if not missing and not unexpected:
            return kind
    return None


def _hint(layout: _Layout, guessed: str | None, shapes: Mapping[str, tuple[int, ...]]) -> str:
    if guessed is not None and guessed != layout.kind:
        other = _LAYOUTS[guessed]
        return f'it looks like {other.what} weights: load it as kind "{other.kind}" ({other.loader})'
    if any(k.endswith("running_mean") for k in shapes):
        return "batch-norm VGG (e.g. vgg19_bn) is not supported; use plain VGG-19 weights"
    return layout.hint


def _listing(lines: list[str]) -> str:
    shown = "; ".join(lines[:_LIST_LIMIT])
    return shown + (f"; ... (+{len(lines) - _LIST_LIMIT} more)" if len(lines) > _LIST_LIMIT else "")


def _key_error(source: str, layout: _Layout, missing: list[str], unexpected: list[str],
               shapes: Mapping[str, tuple[int, ...]], npz: bool, path: Path | None = None) -> WeightsError:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {_listing(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {_listing(unexpected)}")
    guessed = _guess_kind(shapes, npz)
    return WeightsError(f"{source} does not match {layout.what} ({'; '.join(parts)}); "
                        f"{_hint(layout, guessed, shapes)}", kind=layout.kind if path else None, path=path,
                        found=guessed if guessed != layout.kind else None)


def _check_shapes(source: str, layout: _Layout, found: Mapping[tuple[str, str], str],
                  shapes: Mapping[str, tuple[int, ...]], hwio: bool, path: Path | None = None) -> None:
    """Checks kernel sizes, bias lengths and that each conv reads its predecessor's channels."""

    def fail(problem: str) -> None:
        raise WeightsError(f"{source} does not match {layout.what}: {problem}; {layout.hint}",
                           kind=layout.kind if path else None, path=path)

    prev_name, prev_out = None, layout.in_channels
    for name in layout.index:
        kkey, bkey = found[name, "kernel"], found[name, "bias"]
        kshape, bshape = shapes[kkey], shapes[bkey]
        if len(kshape) != 4:
            fail(f"{kkey} has shape {_fmt(kshape)}, expected a 4-D convolution kernel")
        kh, kw, cin, cout = kshape if hwio else (kshape[2], kshape[3], kshape[1], kshape[0])
        size = layout.kernel[name]
        if (kh, kw) != (size, size):
            fail(f"{kkey} is a {kh}x{kw} kernel, expected {size}x{size}")
        if bshape is None or tuple(bshape) != (cout,):
            fail(f"{bkey} has shape {_fmt(bshape)}, expected {cout} (one per output channel of {name})")
        if prev_out is not None and cin != prev_out:
            source_of = f"{prev_name} has {prev_out} output channels" if prev_name else "the input is RGB"
            fail(f"{kkey} has {cin} input channels but {source_of}")
        # Narrow variants load too, but nothing wider than the published network: this bounds
        # what a file can make the loader allocate before any data is read.
        max_in, max_out = layout.channels[name]
        if not (1 <= cin <= max_in and 1 <= cout <= max_out):
            fail(f"{kkey} maps {cin} to {cout} channels; {name} has 1 to {max_in} inputs and "
                 f"1 to {max_out} outputs")
        prev_name, prev_out = name, cout
    if layout.out_channels is not None and prev_out != layout.out_channels:
        fail(f"{prev_name} has {prev_out} output channels, expected {layout.out_channels} (RGB)")


def _finite(source: str, key: str, array: np.ndarray) -> np.ndarray:
    if not np.isfinite(array).all():
        raise WeightsError(f"{source}: {key} contains NaN or infinite values; the file is damaged")
    return array


# --- loading --------------------------------------------------------------------------------------


def _existing_file(path: str | os.PathLike, kind: str | None) -> Path:
    path = Path(path).expanduser()
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise WeightsError(f"weights file not found: {path}; check the path", kind=kind, path=path) from None
    except OSError as err:
        raise WeightsError(f"cannot read {path}: {err.strerror or err}", kind=kind, path=path) from None
    if stat.S_ISDIR(mode):
        raise WeightsError(f"{path} is a directory; expected a .pth or .npz weights file", kind=kind, path=path)
    if not stat.S_ISREG(mode):
        raise WeightsError(f"{path} is not a regular file (a FIFO, device or socket); "
                           "expected a .pth or .npz weights file", kind=kind, path=path)
    return path


def _check_dtypes(source: str, found: Mapping[tuple[str, str], str],
                  dtypes: Mapping[str, np.dtype]) -> None:
    for key in found.values():
        dtype = dtypes[key]
        if dtype.kind != "f":
            raise WeightsError(f"{source}: {key} has element type {dtype}, expected floating point "
                               "weights; the file is damaged or not a weights file")


def _load_pth(path: Path, layout: _Layout) -> Params:
    with _pth.open_checkpoint(path) as ckpt:
        shapes = ckpt.shapes()
        found, missing, unexpected = _match_torch(layout, shapes)
        if missing or unexpected:
            raise _key_error(str(path), layout, missing, unexpected, shapes, npz=False, path=path)
        _check_shapes(str(path), layout, found, shapes, hwio=False, path=path)
        _check_dtypes(str(path), found, {k: ckpt.dtype(k) for k in found.values()})
        params: Params = {}
        for name in layout.index:
            kkey, bkey = found[name, "kernel"], found[name, "bias"]
            # OIHW -> HWIO in the same copy that converts to contiguous float32.
            kernel = _pth.to_float32(ckpt.view(kkey).transpose(2, 3, 1, 0))
            params[name] = {"kernel": _finite(str(path), kkey, kernel),
                            "bias": _finite(str(path), bkey, _pth.to_float32(ckpt.view(bkey)))}
    return params


_NPZ_FIX = "re-create it with scripts/port_weights.py"


def _npz_error(path: Path, problem: str) -> WeightsError:
    return WeightsError(f"cannot read {path} as .npz weights ({problem}); {_NPZ_FIX}")


class _Npz:
    """An npz opened as a zip: member names and, on request, array headers, then data.

    Unlike ``np.load`` nothing is decompressed until asked for, a header is read before its data,
    and every member is checked (encryption, compression method, declared size) first.
    """

    def __init__(self, path: Path):
        self.path = path
        self._file = _pth.open_regular(path)
        try:
            self._zip = _pth.open_zip(self._file, str(path))
            infos = self._zip.infolist()
        except _pth.ZIP_ERRORS as err:
            self._file.close()
            raise _npz_error(path, _pth.brief(str(err))) from None
        except WeightsError:
            self._file.close()
            raise
        if len(infos) > _MAX_NPZ_MEMBERS:
            self.close()
            raise _npz_error(path, f"{len(infos)} members, at most {_MAX_NPZ_MEMBERS} are read")
        self.members = {i.filename[:-4] if i.filename.endswith(".npy") else i.filename: i for i in infos}

    def __enter__(self) -> _Npz:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()
        self._file.close()

    def _read_header(self, member: BinaryIO, key: str) -> tuple[tuple[int, ...], bool, np.dtype]:
        try:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                header = np.lib.format.read_array_header_1_0(member, max_header_size=_MAX_NPY_HEADER)
            elif version == (2, 0):
                header = np.lib.format.read_array_header_2_0(member, max_header_size=_MAX_NPY_HEADER)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except (*_pth.ZIP_ERRORS, SyntaxError) as err:
            raise _npz_error(self.path, f"member {_pth.brief(key)}: {_pth.brief(str(err))}") from None
        shape, fortran, dtype = header
        if dtype.hasobject:
            raise _npz_error(self.path, f"member {_pth.brief(key)} holds Python objects")
        return tuple(shape), fortran, dtype

    def header(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype of member ``key``, decompressing only its header."""
        info = self.members[key]
        _pth.check_zip_entry(info, str(self.path), _pth.MAX_TENSOR_ELEMENTS * 8 + _MAX_NPY_HEADER, "array")
        try:
            with self._zip.open(info) as member:
                shape, _, dtype = self._read_header(member, key)
        except _pth.ZIP_ERRORS as err:
            raise _npz_error(self.path, f"member {_pth.brief(key)}: {_pth.brief(str(err))}") from None
        return shape, dtype

    def array(self, key: str) -> np.ndarray:
        """Member ``key``; reads exactly the bytes its header declares, refusing oversized arrays."""
        info = self.members[key]
        _pth.check_zip_entry(info, str(self.path), _pth.MAX_TENSOR_ELEMENTS * 8 + _MAX_NPY_HEADER, "array")
        try:
            with self._zip.open(info) as member:
                shape, fortran, dtype = self._read_header(member, key)
                count = math.prod(shape)
                if count > _pth.MAX_TENSOR_ELEMENTS:
                    raise _npz_error(self.path, f"member {_pth.brief(key)} declares {count} elements")
                nbytes = count * dtype.itemsize
                if nbytes > info.file_size:
                    raise _npz_error(self.path, f"member {_pth.brief(key)} is shorter than its header says")
                header = member.tell()
                direct = self._read_stored(info, header, nbytes, dtype, count)
                data = member.read(nbytes) if direct is None else None
        except _pth.ZIP_ERRORS as err:
            raise _npz_error(self.path, f"member {_pth.brief(key)}: {_pth.brief(str(err))}") from None
        if direct is not None:
            return direct.reshape(shape, order="F" if fortran else "C")
        if len(data) != nbytes:
            raise _npz_error(self.path, f"member {_pth.brief(key)} is truncated")
        try:
            array = np.frombuffer(data, dtype, count=count)
        except ValueError as err:  # e.g. a zero-size element type
            raise _npz_error(self.path, f"member {_pth.brief(key)}: {_pth.brief(str(err))}") from None
        return array.reshape(shape, order="F" if fortran else "C")

    def _read_stored(self, info: zipfile.ZipInfo, header: int, nbytes: int, dtype: np.dtype,
                     count: int) -> np.ndarray | None:
        """A stored (uncompressed) member's data read straight into its array, CRC checked; else None.

        zipfile would read the member into a bytes object and np.frombuffer copy it once more: for the
        80 MB VGG-19 cache this one read into the final buffer is the whole load.
        """
        if info.compress_type != zipfile.ZIP_STORED or dtype.kind not in "fiub" or not nbytes \
                or info.file_size != header + nbytes:
            return None
        self._file.seek(info.header_offset)
        local = self._file.read(zipfile.sizeFileHeader)
        if len(local) != zipfile.sizeFileHeader:
            return None
        fields = struct.unpack(zipfile.structFileHeader, local)
        start = info.header_offset + zipfile.sizeFileHeader + fields[zipfile._FH_FILENAME_LENGTH] \
            + fields[zipfile._FH_EXTRA_FIELD_LENGTH]
        self._file.seek(start)
        head = self._file.read(header)
        array = np.empty(count, dtype)
        if len(head) != header or self._file.readinto(memoryview(array.view(np.uint8))) != nbytes:
            raise _npz_error(self.path, f"member {_pth.brief(info.filename)} is truncated")
        if zlib.crc32(array.view(np.uint8), zlib.crc32(head)) != info.CRC:
            raise _npz_error(self.path, f"member {_pth.brief(info.filename)} fails its CRC check")
        return array

    def kind(self) -> str | None:
        """The ``__kind__`` tag, if any."""
        if _KIND_KEY not in self.members:
            return None
        shape, dtype = self.header(_KIND_KEY)
        if shape != () or dtype.kind != "U" or dtype.itemsize > 4 * _MAX_KIND_CHARS:
            return f"<{_fmt(shape)} {dtype}>"
        return str(self.array(_KIND_KEY)[()])


def _float_array(path: Path, key: str, array: np.ndarray) -> np.ndarray:
    if array.dtype.kind != "f":
        raise WeightsError(f"{path}: {key} has element type {array.dtype}, expected floating point "
                           f"weights; {_NPZ_FIX}")
    return _finite(str(path), key, np.asarray(array, np.float32, order="C"))


def _load_npz(path: Path, layout: _Layout) -> Params:
    with _Npz(path) as npz:
        tag = npz.kind()
        names = [k for k in npz.members if k != _KIND_KEY]
        wanted = {f"{n}/{slot}" for n in layout.index for slot in ("kernel", "bias")}
        headers = {k: npz.header(k) for k in names
                   if k in wanted or npz.members[k].compress_type == zipfile.ZIP_STORED}
        shapes = {k: headers[k][0] if k in headers else None for k in names}
        if tag is not None and tag != layout.kind:
            what = _LAYOUTS[tag].what if tag in _LAYOUTS else repr(tag)
            known = tag if tag in _LAYOUTS else None
            raise WeightsError(f"{path} holds {what} weights, not {layout.what}; {_hint(layout, known, shapes)}",
                               kind=layout.kind, path=path, found=known)
        found, missing, unexpected = _match_flat(layout, shapes)
        if missing or unexpected:
            raise _key_error(str(path), layout, missing, unexpected, shapes, npz=True, path=path)
        _check_shapes(str(path), layout, found, shapes, hwio=True, path=path)
        _check_dtypes(str(path), found, {k: headers[k][1] for k in found.values()})
        params: Params = {}
        for name in layout.index:
            params[name] = {}
            for slot in ("kernel", "bias"):
                key = found[name, slot]
                params[name][slot] = _float_array(path, key, npz.array(key))
    return params


def load(path: str | os.PathLike, kind: str) -> Params:
    """Loads weights of network ``kind`` from a ``.pth`` (PyTorch) or ``.npz`` (this project) file.

    Args:
      path: the weights file; the format is chosen by extension (``.npz`` or anything else).
      kind: one of :data:`KINDS`.

    Returns:
      ``{name: {"kernel": HWIO float32, "bias": (O,) float32}}`` in forward order.

    Raises:
      WeightsError: missing file, wrong network (the message lists missing ``-key shape`` and
        unexpected ``+key shape`` entries), inconsistent shapes, or a corrupt file; its ``kind`` and
        ``path`` say which load failed, ``found`` the network the file holds when recognised.
      UnsafePickleError: the ``.pth`` pickle references anything but tensor rebuilding.
      ConfigError: ``kind`` is not one of :data:`KINDS`.
    """
    layout = _LAYOUTS[check_choice("weights kind", kind, KINDS)]
    path = _existing_file(path, kind)
    if path.suffix.lower() == ".npz":
        return _load_npz(path, layout)
    return _load_pth(path, layout)


def load_vgg19(path: str | os.PathLike) -> Params:
    """Loads torchvision VGG-19 convs (``features.N.*``, bare ``N.*`` or ``module.``-prefixed) or an npz.

    The classifier is ignored. See :func:`load` for the return value and errors.
    """
    return load(path, "vgg19")


def load_adain_vgg(path: str | os.PathLike) -> Params:
    """Loads AdaIN's ``vgg_normalised.pth`` up to relu4_1 (``"preprocess"``, conv1_1..conv4_1) or an npz.

    Matches :data:`nst_jax.vgg.ADAIN_VGG`. See :func:`load` for the return value and errors.
    """
    return load(path, "adain_vgg")


def load_adain_decoder(path: str | os.PathLike) -> Params:
    """Loads AdaIN's ``decoder.pth`` as :data:`nst_jax.adain.DECODER_LAYERS` params, or an npz.

    See :func:`load` for the return value and errors.
    """
    return load(path, "adain_decoder")


def load_params(path: str | os.PathLike) -> Params:
    """Loads any params npz written by :func:`save_params` (no layout checks) as float32 arrays.

    Raises:
      WeightsError: the file is missing, not an npz, or has keys not of the form ``layer/leaf``.
    """
    path = _existing_file(path, None)
    params: Params = {}
    with _Npz(path) as npz:
        keys = [k for k in npz.members if k != _KIND_KEY]
        for key in keys:  # every name is checked before any data is read
            layer, sep, leaf = key.partition("/")
            if not sep or not layer or not leaf or "/" in leaf:
                raise WeightsError(f"{path} has key {_pth.brief(key)}, expected 'layer/leaf' such as "
                                   "'conv1_1/kernel'")
        for key in keys:
            layer, _, leaf = key.partition("/")
            params.setdefault(layer, {})[leaf] = _float_array(path, key, npz.array(key))
    return params


# --- saving ---------------------------------------------------------------------------------------


def _write_npz(f: BinaryIO, arrays: Mapping[str, np.ndarray]) -> None:
    # A fixed timestamp makes the bytes (and SHA256SUMS entries) reproducible, unlike np.savez.
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, array in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def _check_target(path: Path) -> None:
    if path.is_dir():
        raise OutputPathError(f"{path} is a directory; give a file name ending in .npz")
    if not path.parent.exists():
        raise OutputPathError(f"cannot write {path}: folder {path.parent} does not exist; create it first")
    if not path.parent.is_dir():
        raise OutputPathError(f"cannot write {path}: {path.parent} is a file, not a folder; choose "
                              "another output path")


def check_writable(path: str | os.PathLike) -> Path:
    """Checks, before a long job, that :func:`save_params` will be able to write ``path``.

    Creates and removes a probe file next to ``path``: the only reliable test of write access
    (permission bits say nothing about read-only mounts or ACLs).

    Returns:
      ``path`` as a Path (``~`` expanded).

    Raises:
      OutputPathError: ``path`` is a directory, or its folder is missing, a file or not writable.
    """
    path = Path(path).expanduser()
    _check_target(path)
    try:
        files.probe_write(path)
    except OSError as err:
        raise OutputPathError(
            f"cannot write in {path.parent}: {err.strerror or err}; choose a writable folder"
        ) from None
    return path


def save_params(params: Mapping[str, Mapping[str, np.ndarray]], path: str | os.PathLike, *,
                kind: str | None = None) -> Path:
    """Saves params as an npz of float32 arrays keyed ``"layer/leaf"``, atomically.

    Args:
      params: ``{layer: {leaf: array}}`` (numpy or JAX arrays).
      path: destination file; ``.npz`` is the extension the loaders recognise.
      kind: if given (one of :data:`KINDS`), the params are checked against that network's layout
        and the kind is recorded so that loading it as another network gives a clear error.

    Returns:
      The path written.

    Raises:
      WeightsError: a name contains "/", or the params do not match ``kind``.
      OutputPathError: the folder is missing or not writable.
    """
    path = Path(path).expanduser()
    flat: dict[str, np.ndarray] = {}
    for layer, leaves in params.items():
        for leaf, value in leaves.items():
            if not layer or not leaf or "/" in layer or "/" in leaf:
                raise WeightsError(
                    f"cannot save param {layer!r}/{leaf!r}: names must be non-empty, without '/'"
                )
            flat[f"{layer}/{leaf}"] = np.ascontiguousarray(np.asarray(value, dtype=np.float32))
    if kind is not None:
        layout = _LAYOUTS[check_choice("weights kind", kind, KINDS)]
        shapes = {k: v.shape for k, v in flat.items()}
        found, missing, unexpected = _match_flat(layout, shapes)
        if missing or unexpected:
            raise _key_error("params to save", layout, missing, unexpected, shapes, npz=True)
        _check_shapes("params to save", layout, found, shapes, hwio=True)
        flat[_KIND_KEY] = np.array(kind)
    _check_target(path)
    with files.atomic_write(path) as f:
        _write_npz(f, flat)
    return path


def save_adain_decoder(params: Mapping[str, Mapping[str, np.ndarray]], path: str | os.PathLike) -> Path:
    """Saves AdaIN decoder params (names :data:`nst_jax.adain.DECODER_LAYERS`) as an npz; see :func:`save_params`."""
    return save_params(params, path, kind="adain_decoder")


# --- downloads ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WeightsSpec:
    """A downloadable weights file.

    ``sha256_prefix`` is checked as ``torch.hub`` does (the ``-<hex>`` part of the file name);
    ``sha256`` is a full digest when known (pinned for every registry entry that has one). With
    neither, the digest of the first download is recorded next to it and later downloads must
    match it. A cached copy is verified before use as well.
    """

    url: str
    filename: str
    kind: str
    sha256_prefix: str | None = None
    sha256: str | None = None


WEIGHTS: dict[str, WeightsSpec] = {
    "vgg19": WeightsSpec(
        url="https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
        filename="vgg19-dcbb9e9d.pth", kind="vgg19", sha256_prefix="dcbb9e9d",
    ),
    "adain_vgg": WeightsSpec(
        url="https://github.com/naoto0804/pytorch-AdaIN/releases/download/v0.0.0/vgg_normalised.pth",
        filename="adain_vgg_normalised.pth", kind="adain_vgg",
        sha256="804ca2835ecf7539f0cd2a7ac3c18ce81e6f8468969ae7117ac0c148d286bb4a",
    ),
    "adain_decoder": WeightsSpec(
        url="https://github.com/naoto0804/pytorch-AdaIN/releases/download/v0.0.0/decoder.pth",
        filename="adain_decoder.pth", kind="adain_decoder",
        sha256="379ca41d59f3a37eed3599bbbc2560c19da5c458870a5ffd3a9dd41aa88f9472",
    ),
}

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")  # torch.hub HASH_REGEX


def hash_prefix_from_url(url: str) -> str | None:
    """The SHA-256 prefix in a ``name-<hex>.ext`` file name (torch.hub convention), or None."""
    match = _HASH_IN_NAME.search(url.rsplit("/", 1)[-1])
    return match.group(1) if match else None


def cache_dir() -> Path:
    """``$NST_JAX_CACHE``, else ``$XDG_CACHE_HOME/nst_jax``, else ``~/.cache/nst_jax``."""
    if os.environ.get("NST_JAX_CACHE"):
        return Path(os.environ["NST_JAX_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "nst_jax"


def _spec(name: str | WeightsSpec) -> WeightsSpec:
    if isinstance(name, WeightsSpec):
        return name
    return WEIGHTS[check_choice("weights", name, WEIGHTS)]


def converted_path(name: str | WeightsSpec) -> Path:
    """Where the converted npz of a registry entry is cached."""
    return cache_dir() / (Path(_spec(name).filename).stem + ".npz")


def _record_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def _recorded_hash(dest: Path) -> str | None:
    try:
        token = _record_path(dest).read_text(encoding="ascii").split()[0]
    except (OSError, IndexError, UnicodeDecodeError):
        return None
    return token if re.fullmatch(r"[0-9a-f]{64}", token) else None


def _download_error(spec: WeightsSpec, reason: str) -> DownloadError:
    return DownloadError(
        f"could not download {spec.kind} weights from {spec.url} ({reason}) and there is no cached copy "
        f"at {converted_path(spec)}; download the file elsewhere (or convert it with "
        f"scripts/port_weights.py --kind {spec.kind}) and pass the file's path", kind=spec.kind
    )


def _reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return str(err.reason)
    return str(err) or type(err).__name__


def _content_length(response) -> int | None:
    headers = getattr(response, "headers", None)
    value = headers.get("Content-Length") if headers is not None else None
    return int(value) if value is not None and str(value).isdigit() else None


def _stream(spec: WeightsSpec, out: BinaryIO, progress: Progress | None, opener) -> str:
    """Downloads ``spec.url`` into ``out``; returns the SHA-256 hex digest."""
    errors = (urllib.error.URLError, http.client.HTTPException, OSError, ValueError)
    try:
        response = opener(spec.url, timeout=_TIMEOUT_S)
    except errors as err:
        raise _download_error(spec, _reason(err)) from None
    digest = hashlib.sha256()
    done = 0
    try:
        total = _content_length(response)
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    except errors as err:
        raise _download_error(spec, _reason(err)) from None
    finally:
        response.close()
    if total is not None and done != total:
        raise _download_error(spec, f"connection closed after {done} of {total} bytes")
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _cache_folder(spec: WeightsSpec) -> Path:
    """:func:`cache_dir`, created if missing; a path that exists as a non-folder is refused."""
    folder = cache_dir()
    fix = "set NST_JAX_CACHE to a writable folder or pass the file's path"
    if folder.exists() and not folder.is_dir():
        raise DownloadError(f"the weights cache {folder} is a file, not a folder; {fix}", kind=spec.kind)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(f"cannot create the weights cache {folder} ({err.strerror or err}); {fix}") from None
    return folder


def fetch(name: str | WeightsSpec, *, progress: Progress | None = None,
          opener: Callable[..., BinaryIO] = urllib.request.urlopen, force: bool = False) -> Path:
    """Downloads a registry file into :func:`cache_dir` and verifies its SHA-256, as torch.hub does.

    The file is streamed into a temp file in the cache folder and moved into place only if the
    digest matches, so a failed or corrupted download never replaces a good cached copy.

    Args:
      name: a key of :data:`WEIGHTS`, or a :class:`WeightsSpec`.
      progress: called as ``progress(bytes_done, total_bytes_or_None)`` after each chunk.
      opener: called as ``opener(url, timeout=seconds)``; returns a readable binary response.
      force: download even if the file is already cached.

    Returns:
      The path of the cached file.

    Raises:
      DownloadError: the download failed (the message names the URL and the cache path).
      ChecksumError: the digest does not match; the download was discarded.
    """
    spec = _spec(name)
    folder = _cache_folder(spec)
    dest = folder / spec.filename
    expected = (spec.sha256 or spec.sha256_prefix or hash_prefix_from_url(spec.url)
                or _recorded_hash(dest))
    if dest.is_file() and not force:
        # A cached copy is verified too (it may be a truncated or altered file); a bad one is
        # downloaded again and replaced only if the new download verifies.
        if expected is None or _file_sha256(dest).startswith(expected.lower()):
            return dest
    try:
        files.probe_write(dest)
    except OSError as err:
        raise DownloadError(
            f"cannot write in the weights cache {folder} ({err.strerror or err}); set NST_JAX_CACHE to a "
            "writable folder or pass the file's path", kind=spec.kind
        ) from None
    # The file appears under its name only once complete and verified (a mismatch raises inside).
    with files.atomic_write(dest) as out:
        digest = _stream(spec, out, progress, opener)
        if expected is not None and not digest.startswith(expected.lower()):
            n = min(len(expected), 16)
            raise ChecksumError(
                f"checksum mismatch for {spec.filename} from {spec.url}: expected sha256 "
                f"{expected[:n]}..., got {digest[:n]}...; the download was "
                f"discarded and any cached copy kept; retry, or download it by hand and pass the file's path",
                kind=spec.kind)
    if expected is None:
        # Trust on first use: no published digest, so later downloads must match this one.
        files.atomic_write_text(_record_path(dest), f"{digest}  {dest.name}\n")
    return dest


def _cached_file_error(err: WeightsError, cached: Path) -> WeightsError:
    # The library chose this file, so ``path`` stays None: the caller did not pass it.
    return WeightsError(f"{err}; delete the cached file {cached} to download it again, or pass the file's path",
                        kind=err.kind, found=err.found)


def resolve_weights(name: str | WeightsSpec, path: str | os.PathLike | None = None, *,
                    progress: Progress | None = None,
                    opener: Callable[..., BinaryIO] = urllib.request.urlopen) -> Params:
    """Params for a registry entry: an explicit file, else the cached npz, else download and convert.

    An explicit ``path`` never touches the network. A download is converted once to
    :func:`converted_path` (for VGG-19 only the convs, ~80 MB instead of 548 MB) and then deleted.

    Args:
      name: a key of :data:`WEIGHTS` (``"vgg19"``, ``"adain_vgg"``, ``"adain_decoder"``) or a spec.
      path: a ``.pth`` or ``.npz`` file given by the user; the network is never needed then.
      progress: download progress callback, see :func:`fetch`.
      opener: URL opener, see :func:`fetch`.

    Raises:
      WeightsError: the explicit file is missing or wrong; DownloadError / ChecksumError when a
        needed download fails.
    """
    spec = _spec(name)
    if path is not None:
        return load(path, spec.kind)
    npz = converted_path(spec)
    if npz.is_file():
        try:
            return load(npz, spec.kind)
        except WeightsError as err:
            raise _cached_file_error(err, npz) from None
    pth = fetch(spec, progress=progress, opener=opener)
    try:
        params = load(pth, spec.kind)
    except WeightsError as err:
        raise _cached_file_error(err, pth) from None
    save_params(params, npz, kind=spec.kind)
    pth.unlink()
    return params
