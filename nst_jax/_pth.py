"""Reads PyTorch ``.pth`` checkpoints into numpy without importing torch or running pickled code.

A ``.pth`` file is a pickle, and unpickling can call any importable function. This module never
hands the bytes to :mod:`pickle`; it interprets them with :class:`RestrictedUnpickler`, a small
pickle machine that knows the opcodes of protocols 0-5 but

* resolves globals only from an allowlist of the names tensor rebuilding needs, each mapped to a
  function of this module (``torch._utils._rebuild_tensor_v2`` becomes :func:`_rebuild_tensor_v2`
  here, which records a lazy tensor reference); any other name raises :class:`UnsafePickleError`;
* calls (``REDUCE``) only those allowlisted functions, applies ``BUILD`` only to plain dicts, and
  refuses the object-creating opcodes (``INST``, ``OBJ``, ``NEWOBJ``, ``NEWOBJ_EX``, ``EXT*``).

The standard C unpickler offers no hook for ``REDUCE``/``BUILD``, hence the separate interpreter.

Two container formats are read (see ``torch/serialization.py``):

* zip (``torch.save`` since PyTorch 1.6): ``<name>/data.pkl`` plus one record ``<name>/data/<key>``
  per storage, ``<name>/byteorder`` naming the byte order of the records;
* legacy (``_use_new_zipfile_serialization=False`` and PyTorch < 1.6): consecutive pickles of the
  magic number, the protocol version, ``sys_info``, the object, and the list of storage keys,
  followed by the raw storages, each after an 8-byte element count.

Tensor data is read only when asked for (:meth:`Checkpoint.view`), so a loader that needs the
convolutional layers of a 548 MB VGG-19 file never reads its 470 MB classifier.
"""

from __future__ import annotations

import codecs
import collections
import dataclasses
import io
import math
import os
import reprlib
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from nst_jax.errors import UnsafePickleError, WeightsError

# Header pickles of the legacy format (torch/serialization.py MAGIC_NUMBER, PROTOCOL_VERSION).
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_HIGHEST_PICKLE_PROTOCOL = 5

# Resource bounds. A state-dict pickle spends ~100-300 bytes per tensor (key, storage record, size
# and stride tuples, hook dict); torchvision's VGG-19 has 38 tensors, AdaIN's encoder 54. 1 MiB holds
# thousands of tensors, yet is interpreted in well under a second and can build only ~1M objects.
MAX_PICKLE_BYTES = 1 << 20
# Containers nest ~4 levels in a state dict (wrapper dict, OrderedDict, args tuple, size tuple, the
# _metadata dicts); deeper nesting only serves to crash hashing or repr by C recursion.
MAX_NESTING = 16
# Containers and memo entries a pickle may create (~4 containers and ~8 memo entries per tensor);
# with the byte bound this keeps the interpreter's memory to tens of MB whatever the opcodes.
MAX_PICKLE_OBJECTS = 1 << 17
# The largest tensor any reader accepts (1 GiB of float32; VGG-19's largest, fc6, has 102.8M).
MAX_TENSOR_ELEMENTS = 1 << 28
# A checkpoint has one zip entry per storage plus a few; the central directory is parsed whole.
MAX_ZIP_ENTRIES = 1 << 16
ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # torch.save and np.savez(_compressed)

_brief = reprlib.Repr()
_brief.maxstring = _brief.maxother = 60
_brief.maxlevel = 3


def brief(value: Any) -> str:
    """A short one-line repr of a value taken from an untrusted file, for error messages."""
    return " ".join(_brief.repr(value).split())


# --- storage and tensor references --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StorageType:
    """A torch storage class (``torch.FloatStorage``), as the numpy element type of its data."""

    name: str
    dtype: str  # numpy type string without byte order; "bfloat16" is read as uint16 bits

    def numpy_dtype(self, byteorder: str) -> np.dtype:
        code = "u2" if self.dtype == "bfloat16" else self.dtype
        return np.dtype(code).newbyteorder("<" if byteorder == "little" else ">")


_STORAGE_TYPES = {
    s.name: s
    for s in (
        StorageType("FloatStorage", "f4"),
        StorageType("DoubleStorage", "f8"),
        StorageType("HalfStorage", "f2"),
        StorageType("BFloat16Storage", "bfloat16"),
        StorageType("LongStorage", "i8"),
        StorageType("IntStorage", "i4"),
        StorageType("ShortStorage", "i2"),
        StorageType("CharStorage", "i1"),
        StorageType("ByteStorage", "u1"),
        StorageType("BoolStorage", "b1"),
        StorageType("UntypedStorage", "u1"),
    )
}

# torch dtypes as pickled for _rebuild_tensor_v3 (``torch.float32`` and its aliases).
_TORCH_DTYPES = {
    "float32": "FloatStorage", "float": "FloatStorage",
    "float64": "DoubleStorage", "double": "DoubleStorage",
    "float16": "HalfStorage", "half": "HalfStorage",
    "bfloat16": "BFloat16Storage",
    "int64": "LongStorage", "long": "LongStorage",
    "int32": "IntStorage", "int": "IntStorage",
    "int16": "ShortStorage", "short": "ShortStorage",
    "int8": "CharStorage", "uint8": "ByteStorage", "bool": "BoolStorage",
}


@dataclasses.dataclass(frozen=True)
class _TorchDtype:
    storage: StorageType


@dataclasses.dataclass(frozen=True)
class _TorchType:
    """Stands for ``torch.Tensor`` / ``torch.nn.Parameter`` when a pickle names them as types."""

    name: str


@dataclasses.dataclass(frozen=True)
class StorageRef:
    """A storage in the checkpoint: ``numel`` elements of ``type`` from ``offset`` of record ``key``."""

    key: str
    type: StorageType
    numel: int
    offset: int = 0  # element offset into the root storage (legacy storage views)


@dataclasses.dataclass(frozen=True)
class TensorRef:
    """A tensor whose data has not been read: a strided window on a storage (units: elements)."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


# --- the allowlisted rebuild functions ------------------------------------------------------------


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise WeightsError(f"corrupt tensor record: {what} {brief(value)} is not a tuple of non-negative ints")
    return tuple(value)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> TensorRef:
    """``torch._utils._rebuild_tensor`` (PyTorch < 0.4 files)."""
    if not isinstance(storage, StorageRef):
        raise WeightsError(f"corrupt tensor record: expected a storage, got {type(storage).__name__}")
    (offset,) = _ints((storage_offset,), "storage offset")
    shape = _ints(size, "size")
    strides = _ints(stride, "stride")
    if len(shape) != len(strides):
        raise WeightsError(f"corrupt tensor record: size {brief(shape)} and stride {brief(strides)} differ in rank")
    if math.prod(shape) > MAX_TENSOR_ELEMENTS:
        raise WeightsError(
            f"corrupt tensor record: size {brief(shape)} has more than {MAX_TENSOR_ELEMENTS} elements, "
            "more than any supported network needs"
        )
    return TensorRef(storage, offset, shape, strides)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None) -> TensorRef:
    """``torch._utils._rebuild_tensor_v2``; autograd flags, hooks and metadata are dropped."""
    del requires_grad, backward_hooks, metadata
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None) -> TensorRef:
    """``torch._utils._rebuild_tensor_v3``: an untyped (byte) storage plus a separate dtype."""
    del requires_grad, backward_hooks, metadata
    if not isinstance(dtype, _TorchDtype) or not isinstance(storage, StorageRef):
        raise WeightsError("corrupt tensor record: _rebuild_tensor_v3 without a storage and dtype")
    itemsize = dtype.storage.numpy_dtype("little").itemsize
    src_size = storage.type.numpy_dtype("little").itemsize
    if (storage.numel * src_size) % itemsize or (storage.offset * src_size) % itemsize:
        raise WeightsError("corrupt tensor record: storage size is not a multiple of the element size")
    retyped = StorageRef(storage.key, dtype.storage, storage.numel * src_size // itemsize,
                         storage.offset * src_size // itemsize)
    return _rebuild_tensor(retyped, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None) -> TensorRef:
    """``torch._utils._rebuild_parameter(_with_state)``: a Parameter is just its data here."""
    del requires_grad, backward_hooks, state
    if not isinstance(data, TensorRef):
        raise WeightsError(f"corrupt parameter record: expected a tensor, got {type(data).__name__}")
    return data


def _rebuild_from_type_v2(func, new_type, args, state) -> TensorRef:
    """``torch._tensor._rebuild_from_type_v2``: calls ``func`` only if it is allowlisted too."""
    del state
    if not isinstance(func, _Allowed) or not isinstance(new_type, _TorchType):
        raise UnsafePickleError(
            f"refused _rebuild_from_type_v2 with {type(func).__name__} / {type(new_type).__name__}; "
            "nothing was executed"
        )
    if not isinstance(args, tuple):
        raise WeightsError("corrupt tensor record: _rebuild_from_type_v2 arguments are not a tuple")
    return func(*args)


def _ordered_dict(*args) -> collections.OrderedDict:
    """``collections.OrderedDict`` restricted to plain pickled containers (no user iterables)."""
    if len(args) > 1 or (args and not isinstance(args[0], (list, tuple, dict))):
        raise WeightsError("corrupt pickle: OrderedDict called with unexpected arguments")
    return collections.OrderedDict(*args)


class _Allowed:
    """An allowlisted callable; the only kind of object REDUCE may call."""

    __slots__ = ("qualname", "_fn")

    def __init__(self, qualname: str, fn: Callable[..., Any]):
        self.qualname = qualname
        self._fn = fn

    def __call__(self, *args):
        return self._fn(*args)

    def __repr__(self) -> str:
        return f"<allowed {self.qualname}>"


def _allowlist() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {}
    for module, name, fn in (
        ("collections", "OrderedDict", _ordered_dict),
        ("torch._utils", "_rebuild_tensor", _rebuild_tensor),
        ("torch._utils", "_rebuild_tensor_v2", _rebuild_tensor_v2),
        ("torch._utils", "_rebuild_tensor_v3", _rebuild_tensor_v3),
        ("torch._utils", "_rebuild_parameter", _rebuild_parameter),
        ("torch._utils", "_rebuild_parameter_with_state", _rebuild_parameter),
        ("torch._tensor", "_rebuild_from_type_v2", _rebuild_from_type_v2),
    ):
        table[module, name] = _Allowed(f"{module}.{name}", fn)
    for name, storage in _STORAGE_TYPES.items():
        table["torch", name] = storage
    for name, storage_name in _TORCH_DTYPES.items():
        table["torch", name] = _TorchDtype(_STORAGE_TYPES[storage_name])
    for module, name in (("torch", "Tensor"), ("torch._tensor", "Tensor"),
                         ("torch.nn.parameter", "Parameter"), ("torch.nn", "Parameter")):
        table[module, name] = _TorchType(f"{module}.{name}")
    return table


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = _allowlist()


# --- the restricted pickle machine ----------------------------------------------------------------

# Opcodes that construct or call objects outside the allowlist (pickletools names).
_REFUSED_OPCODES = {
    ord("i"): "INST", ord("o"): "OBJ", 0x81: "NEWOBJ", 0x92: "NEWOBJ_EX",
    0x82: "EXT1", 0x83: "EXT2", 0x84: "EXT4", 0x97: "NEXT_BUFFER", 0x98: "READONLY_BUFFER",
}

# Errors a malformed pickle can raise inside an opcode handler; all mean "corrupt file".
_CORRUPT = (IndexError, KeyError, TypeError, ValueError, struct.error, UnicodeDecodeError,
            OverflowError, AttributeError)


class PickleBudget:
    """A binary reader that refuses to deliver more than ``limit`` bytes in total.

    Shared by the consecutive pickles of a legacy file, so their sum is bounded; a length field
    beyond the budget is refused before anything of that length is read or allocated.
    """

    def __init__(self, file: BinaryIO, source: str, limit: int = MAX_PICKLE_BYTES):
        self._file = file
        self._source = source
        self.limit = limit
        self.left = limit

    def _too_large(self) -> WeightsError:
        return WeightsError(
            f"refused to load {self._source}: its pickle is larger than {self.limit} bytes, far more "
            "than a state dict of tensors needs (the file is corrupt or not a weights file)"
        )

    def read(self, n: int) -> bytes:
        if n > self.left:
            raise self._too_large()
        data = self._file.read(n)
        self.left -= len(data)
        return data

    def readline(self) -> bytes:
        line = self._file.readline(self.left + 1)
        if len(line) > self.left:
            raise self._too_large()
        self.left -= len(line)
        return line


# Mutable containers the machine builds; each is tracked for nesting depth and cycles.
_MUTABLE = (list, dict, collections.OrderedDict, set)
_CONTAINERS = (*_MUTABLE, tuple, frozenset)


class RestrictedUnpickler:
    """Interprets a pickle that may only rebuild containers, numbers, strings and tensors.

    Containers may nest at most :data:`MAX_NESTING` deep, and a mutable container may not change
    once it is inside another; with that rule no cycle can be built (the last link of a cycle
    would have to modify a container already nested in it), so hashing, comparing and printing
    what a pickle built always terminates within bounded C recursion.

    Args:
      file: binary file positioned at the pickle (or a :class:`PickleBudget` over it); left just
        after its STOP opcode.
      persistent_load: called with each persistent id (torch's storage records); ``None`` refuses
        persistent ids.
      source: file name for error messages.
      max_bytes: the most bytes the pickle may span (ignored when ``file`` is a PickleBudget).
    """

    def __init__(self, file: BinaryIO, *, persistent_load: Callable[[Any], Any] | None = None,
                 source: str = "pickle", max_bytes: int = MAX_PICKLE_BYTES):
        self._file = file if isinstance(file, PickleBudget) else PickleBudget(file, source, max_bytes)
        self._persistent = persistent_load
        self._source = source
        self._dispatch = {op: getattr(self, name) for op, name in _DISPATCH.items()}

    def find_class(self, module: str, name: str) -> Any:
        """Returns this module's stand-in for an allowlisted global; raises UnsafePickleError otherwise."""
        try:
            return ALLOWED_GLOBALS[module, name]
        except KeyError:
            raise UnsafePickleError(
                f"refused to load {self._source}: its pickle references {module}.{name}, which is not "
                "needed to rebuild tensors (nothing was executed); only state dicts of tensors "
                "(torch.save(model.state_dict(), path)) can be read"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        """Resolves a persistent id through the callback given at construction."""
        if self._persistent is None:
            raise WeightsError(f"corrupt checkpoint {self._source}: unexpected persistent id {brief(pid)}")
        return self._persistent(pid)

    def load(self) -> Any:
        """Runs the pickle to its STOP opcode and returns the object it built.

        Raises:
          UnsafePickleError: the pickle names a global, opcode or call outside the allowlist.
          WeightsError: the pickle is truncated or malformed.
        """
        self._stack: list[Any] = []
        self._metastack: list[list[Any]] = []
        self._memo: dict[int, Any] = {}
        # id -> [container, nesting depth, sealed]; holding the container keeps its id unique.
        self._nesting: dict[int, list[Any]] = {}
        read = self._file.read
        while True:
            op = read(1)
            if not op:
                raise self._truncated()
            code = op[0]
            if code == ord("."):  # STOP
                if not self._stack:
                    raise WeightsError(f"corrupt pickle in {self._source}: STOP on an empty stack")
                return self._stack.pop()
            handler = self._dispatch.get(code)
            if handler is None:
                if code in _REFUSED_OPCODES:
                    raise UnsafePickleError(
                        f"refused to load {self._source}: its pickle uses opcode "
                        f"{_REFUSED_OPCODES[code]}, which builds arbitrary objects (nothing was executed)"
                    )
                raise WeightsError(f"corrupt pickle in {self._source}: unknown opcode {op!r}")
            try:
                handler()
            except _CORRUPT as err:
                detail = " ".join(str(err).split())[:120]
                raise WeightsError(
                    f"corrupt pickle in {self._source}: {type(err).__name__} at opcode {op!r}: {detail}"
                ) from None

    # -- reading helpers
    def _truncated(self) -> WeightsError:
        return WeightsError(f"{self._source} is truncated (the pickle ends early); download it again")

    def _read(self, n: int) -> bytes:
        if n < 0:
            raise WeightsError(f"corrupt pickle in {self._source}: negative length {n}")
        data = self._file.read(n)
        if len(data) < n:
            raise self._truncated()
        return data

    def _readline(self) -> bytes:
        line = self._file.readline()
        if not line.endswith(b"\n"):
            raise self._truncated()
        return line[:-1]

    def _unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self._read(struct.calcsize(fmt)))[0]

    def _push(self, value: Any) -> None:
        self._stack.append(value)

    # -- nesting: depth bound and no changes to a nested container (hence no cycles)
    def _seal(self, value: Any) -> int:
        """Marks ``value`` as nested in another container; returns its nesting depth."""
        if not isinstance(value, _CONTAINERS):
            return 0
        entry = self._nesting.get(id(value))
        if entry is None:  # built outside the tracked opcodes (cannot happen); count it as flat
            entry = self._nesting[id(value)] = [value, 1, False]
        entry[2] = True
        return entry[1]

    def _built(self, container: Any, children: Any = ()) -> Any:
        """Registers a container just built from ``children``; returns it."""
        depth = 1 + max((self._seal(c) for c in children), default=0)
        self._check_depth(depth)
        if len(self._nesting) >= MAX_PICKLE_OBJECTS:
            raise self._too_many("containers")
        self._nesting[id(container)] = [container, depth, False]
        return container

    def _too_many(self, what: str) -> WeightsError:
        return WeightsError(
            f"refused to load {self._source}: its pickle creates more than {MAX_PICKLE_OBJECTS} {what}, "
            "far more than a state dict of tensors needs (the file is corrupt or crafted)"
        )

    def _memoize(self, key: int) -> None:
        if len(self._memo) >= MAX_PICKLE_OBJECTS and key not in self._memo:
            raise self._too_many("memo entries")
        self._memo[key] = self._stack[-1]

    def _insert(self, target: Any, children: Any, op: str) -> None:
        """Accounts for ``children`` being added to the mutable ``target``."""
        depth = 1 + max((self._seal(c) for c in children), default=0)
        entry = self._nesting.get(id(target))
        if entry is None or entry[2]:
            raise WeightsError(
                f"refused to load {self._source}: opcode {op} changes a container that is already "
                "nested in another (a cyclic or crafted pickle; torch.save never writes one)"
            )
        entry[1] = max(entry[1], depth)
        self._check_depth(entry[1])

    def _check_depth(self, depth: int) -> None:
        if depth > MAX_NESTING:
            raise WeightsError(
                f"refused to load {self._source}: its pickle nests containers more than {MAX_NESTING} "
                "deep; a state dict needs a few levels (the file is corrupt or crafted)"
            )

    def _pop_mark(self) -> list[Any]:
        items = self._stack
        self._stack = self._metastack.pop()
        return items

    @staticmethod
    def _text(data: bytes) -> str | bytes:
        # Python 2 ``str`` (old torchvision files); torch.load decodes these as UTF-8 too.
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data

    # -- framing, marks and stack
    def op_proto(self):
        proto = self._read(1)[0]
        if proto > _HIGHEST_PICKLE_PROTOCOL:
            raise WeightsError(f"{self._source} uses unsupported pickle protocol {proto}")

    def op_frame(self):
        self._read(8)  # frames are an I/O hint; the opcodes simply follow

    def op_mark(self):
        self._metastack.append(self._stack)
        self._stack = []

    def op_pop(self):
        if self._stack:
            self._stack.pop()
        else:
            self._pop_mark()

    def op_pop_mark(self):
        self._pop_mark()

    def op_dup(self):
        self._push(self._stack[-1])

    # -- scalars
    def op_none(self):
        self._push(None)

    def op_newtrue(self):
        self._push(True)

    def op_newfalse(self):
        self._push(False)

    def op_int(self):
        line = self._readline()
        # Protocol 0 spells booleans as the integers 00 and 01.
        self._push(line == b"01" if line in (b"00", b"01") else int(line))

    def op_binint(self):
        self._push(self._unpack("<i"))

    def op_binint1(self):
        self._push(self._read(1)[0])

    def op_binint2(self):
        self._push(self._unpack("<H"))

    def op_long(self):
        line = self._readline()
        self._push(int(line[:-1] if line.endswith(b"L") else line))

    def op_long1(self):
        self._push(int.from_bytes(self._read(self._read(1)[0]), "little", signed=True))

    def op_long4(self):
        self._push(int.from_bytes(self._read(self._unpack("<i")), "little", signed=True))

    def op_float(self):
        self._push(float(self._readline()))

    def op_binfloat(self):
        self._push(self._unpack(">d"))

    # -- strings and bytes
    def op_string(self):
        data = self._readline()
        if len(data) < 2 or data[0] != data[-1] or data[:1] not in (b'"', b"'"):
            raise ValueError("STRING argument is not quoted")
        self._push(self._text(codecs.escape_decode(data[1:-1])[0]))

    def op_binstring(self):
        self._push(self._text(self._read(self._unpack("<i"))))

    def op_short_binstring(self):
        self._push(self._text(self._read(self._read(1)[0])))

    def op_binbytes(self):
        self._push(self._read(self._unpack("<I")))

    def op_short_binbytes(self):
        self._push(self._read(self._read(1)[0]))

    def op_binbytes8(self):
        self._push(self._read(self._unpack("<Q")))

    def op_bytearray8(self):
        self._push(bytearray(self._read(self._unpack("<Q"))))

    def op_unicode(self):
        self._push(self._readline().decode("raw-unicode-escape"))

    def op_binunicode(self):
        self._push(self._read(self._unpack("<I")).decode("utf-8", "surrogatepass"))

    def op_short_binunicode(self):
        self._push(self._read(self._read(1)[0]).decode("utf-8", "surrogatepass"))

    def op_binunicode8(self):
        self._push(self._read(self._unpack("<Q")).decode("utf-8", "surrogatepass"))

    # -- containers (mutating opcodes touch only the built-in types created here)
    def op_empty_tuple(self):
        self._push(self._built(()))

    def op_tuple(self):
        items = self._pop_mark()
        self._push(self._built(tuple(items), items))

    def op_tuple1(self):
        item = self._stack[-1]
        self._stack[-1] = self._built((item,), (item,))

    def op_tuple2(self):
        self._tuple_n(2)

    def op_tuple3(self):
        self._tuple_n(3)

    def _tuple_n(self, n: int) -> None:
        if len(self._stack) < n:
            raise IndexError(f"TUPLE{n} on a stack of {len(self._stack)}")
        items = tuple(self._stack[-n:])
        self._stack[-n:] = [self._built(items, items)]

    def op_empty_list(self):
        self._push(self._built([]))

    def op_list(self):
        items = self._pop_mark()
        self._push(self._built(list(items), items))

    def _target(self, types: tuple[type, ...], op: str) -> Any:
        target = self._stack[-1]
        if type(target) not in types:
            raise UnsafePickleError(
                f"refused to load {self._source}: opcode {op} applied to {type(target).__name__} "
                "(nothing was executed)"
            )
        return target

    def op_append(self):
        value = self._stack.pop()
        target = self._target((list,), "APPEND")
        self._insert(target, (value,), "APPEND")
        target.append(value)

    def op_appends(self):
        items = self._pop_mark()
        target = self._target((list,), "APPENDS")
        self._insert(target, items, "APPENDS")
        target.extend(items)

    def op_empty_dict(self):
        self._push(self._built({}))

    def op_dict(self):
        items = self._pop_mark()
        self._push(self._built(dict(zip(items[::2], items[1::2])), items))

    def op_setitem(self):
        value = self._stack.pop()
        key = self._stack.pop()
        target = self._target((dict, collections.OrderedDict), "SETITEM")
        self._insert(target, (key, value), "SETITEM")
        target[key] = value

    def op_setitems(self):
        items = self._pop_mark()
        target = self._target((dict, collections.OrderedDict), "SETITEMS")
        self._insert(target, items, "SETITEMS")
        for i in range(0, len(items) - 1, 2):
            target[items[i]] = items[i + 1]

    def op_empty_set(self):
        self._push(self._built(set()))

    def op_additems(self):
        items = self._pop_mark()
        target = self._target((set,), "ADDITEMS")
        self._insert(target, items, "ADDITEMS")
        target.update(items)

    def op_frozenset(self):
        items = self._pop_mark()
        self._push(self._built(frozenset(items), items))

    # -- memo
    def op_put(self):
        self._memoize(int(self._readline()))

    def op_binput(self):
        self._memoize(self._read(1)[0])

    def op_long_binput(self):
        self._memoize(self._unpack("<I"))

    def op_memoize(self):
        self._memoize(len(self._memo))

    def op_get(self):
        self._push(self._memo[int(self._readline())])

    def op_binget(self):
        self._push(self._memo[self._read(1)[0]])

    def op_long_binget(self):
        self._push(self._memo[self._unpack("<I")])

    # -- globals, persistent ids, calls
    def op_global(self):
        module = self._readline().decode("utf-8")
        name = self._readline().decode("utf-8")
        self._push(self.find_class(module, name))

    def op_stack_global(self):
        name = self._stack.pop()
        module = self._stack.pop()
        if not isinstance(module, str) or not isinstance(name, str):
            raise TypeError("STACK_GLOBAL needs two strings")
        self._push(self.find_class(module, name))

    def op_persid(self):
        self._push(self.persistent_load(self._readline().decode("ascii")))

    def op_binpersid(self):
        self._push(self.persistent_load(self._stack.pop()))

    def op_reduce(self):
        args = self._stack.pop()
        func = self._stack[-1]
        if not isinstance(func, _Allowed):
            raise UnsafePickleError(
                f"refused to load {self._source}: its pickle calls a {type(func).__name__}, which is "
                "not an allowlisted tensor-rebuilding function (nothing was executed)"
            )
        if not isinstance(args, tuple):
            raise TypeError("REDUCE arguments are not a tuple")
        result = func(*args)
        if isinstance(result, _CONTAINERS):  # OrderedDict(items): holds what ``args`` held
            result = self._built(result, (args,))
        self._stack[-1] = result

    def op_build(self):
        self._stack.pop()
        # torch stores the state dict's ``_metadata`` (module versions) this way; it is not needed.
        self._target((dict, collections.OrderedDict), "BUILD")


_DISPATCH = {
    0x80: "op_proto", 0x95: "op_frame", ord("("): "op_mark", ord("0"): "op_pop",
    ord("1"): "op_pop_mark", ord("2"): "op_dup",
    ord("N"): "op_none", 0x88: "op_newtrue", 0x89: "op_newfalse",
    ord("I"): "op_int", ord("J"): "op_binint", ord("K"): "op_binint1", ord("M"): "op_binint2",
    ord("L"): "op_long", 0x8A: "op_long1", 0x8B: "op_long4", ord("F"): "op_float", ord("G"): "op_binfloat",
    ord("S"): "op_string", ord("T"): "op_binstring", ord("U"): "op_short_binstring",
    ord("B"): "op_binbytes", ord("C"): "op_short_binbytes", 0x8E: "op_binbytes8", 0x96: "op_bytearray8",
    ord("V"): "op_unicode", ord("X"): "op_binunicode", 0x8C: "op_short_binunicode", 0x8D: "op_binunicode8",
    ord(")"): "op_empty_tuple", ord("t"): "op_tuple", 0x85: "op_tuple1", 0x86: "op_tuple2", 0x87: "op_tuple3",
    ord("]"): "op_empty_list", ord("l"): "op_list", ord("a"): "op_append", ord("e"): "op_appends",
    ord("}"): "op_empty_dict", ord("d"): "op_dict", ord("s"): "op_setitem", ord("u"): "op_setitems",
    0x8F: "op_empty_set", 0x90: "op_additems", 0x91: "op_frozenset",
    ord("p"): "op_put", ord("q"): "op_binput", ord("r"): "op_long_binput", 0x94: "op_memoize",
    ord("g"): "op_get", ord("h"): "op_binget", ord("j"): "op_long_binget",
    ord("c"): "op_global", 0x93: "op_stack_global", ord("P"): "op_persid", ord("Q"): "op_binpersid",
    ord("R"): "op_reduce", ord("b"): "op_build",
}


# --- checkpoints ------------------------------------------------------------------------------------


def _storage_pid(pid: Any, source: str) -> tuple[StorageType, str, int, Any]:
    """Checks a ``('storage', type, key, location, numel[, view])`` persistent id."""
    if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
        kind = pid[0] if isinstance(pid, tuple) and pid else pid
        raise UnsafePickleError(
            f"refused to load {source}: persistent id {brief(kind)} is not a tensor storage "
            "(nothing was executed)"
        )
    if len(pid) not in (5, 6):
        raise WeightsError(f"corrupt checkpoint {source}: storage record of length {len(pid)}")
    storage_type, key, numel = pid[1], pid[2], pid[4]
    if not isinstance(storage_type, StorageType) or not isinstance(key, str):
        raise WeightsError(f"corrupt checkpoint {source}: malformed storage record {brief(pid[:3])}")
    if not isinstance(numel, int) or numel < 0:
        raise WeightsError(f"corrupt checkpoint {source}: storage size {brief(numel)}")
    return storage_type, key, numel, pid[5] if len(pid) == 6 else None


def _state_dict_of(obj: Any, source: str) -> dict[str, TensorRef]:
    """The tensors of a state dict (or of ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers)."""
    if not isinstance(obj, dict):
        raise WeightsError(
            f"{source} holds a {type(obj).__name__}, not a state dict; "
            "save weights with torch.save(model.state_dict(), path)"
        )
    tensors = {k: v for k, v in obj.items() if isinstance(v, TensorRef)}
    if not tensors:
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), dict):
                return _state_dict_of(obj[wrapper], source)
        raise WeightsError(
            f"{source} holds no tensors; save weights with torch.save(model.state_dict(), path)"
        )
    bad = [k for k in tensors if not isinstance(k, str)]
    if bad:
        raise WeightsError(f"corrupt state dict in {source}: non-string key {brief(bad[0])}")
    return tensors


class Checkpoint:
    """An open ``.pth`` file: every tensor's shape is known, its data is read on demand.

    Use as a context manager; :meth:`view` returns arrays that stay valid after closing. Only the
    bytes a viewed tensor spans are read from its storage record, never the rest of the record.
    """

    tensors: dict[str, TensorRef]

    def __init__(self, source: str):
        self.source = source
        self.tensors = {}
        self._byteorder = "little"
        self._cache: dict[str, np.ndarray] = {}
        self._users: collections.Counter[str] = collections.Counter()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._cache.clear()

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """``{key: shape}`` for every tensor, without reading data."""
        return {k: t.shape for k, t in self.tensors.items()}

    def dtype(self, key: str) -> np.dtype:
        """The element type of tensor ``key`` as read (bfloat16 is read as float32)."""
        t = self.tensors[key]
        if t.storage.type.dtype == "bfloat16":
            return np.dtype(np.float32)
        return t.storage.type.numpy_dtype(self._byteorder)

    def view(self, key: str) -> np.ndarray:
        """The tensor ``key`` as a read-only strided view of its storage (not float32 yet).

        The window is checked against the storage's recorded size and the record's actual size
        before anything is read. A storage shared by several tensors is kept in memory until its
        last tensor was viewed; a storage used once is read, viewed and released with the array.
        """
        t = self.tensors[key]
        dtype = t.storage.type.numpy_dtype(self._byteorder)
        root = t.storage.key
        self._users[root] -= 1
        if math.prod(t.shape) == 0:
            out = np.zeros(t.shape, dtype)
        else:
            extent = t.offset + sum((n - 1) * s for n, s in zip(t.shape, t.stride)) + 1
            if extent > t.storage.numel:
                raise WeightsError(
                    f"corrupt checkpoint {self.source}: tensor {key} needs {extent} elements of a "
                    f"storage of {t.storage.numel}"
                )
            start = t.storage.offset * dtype.itemsize
            nbytes = start + extent * dtype.itemsize
            raw = self._cache.get(root)
            if raw is None or raw.size < nbytes:
                raw = self._read_root(root, nbytes)
            if self._users[root] > 0:
                self._cache[root] = raw
            buf = raw[start:nbytes].view(dtype)
            out = np.lib.stride_tricks.as_strided(
                buf[t.offset:], shape=t.shape, strides=tuple(s * dtype.itemsize for s in t.stride),
                writeable=False,
            )
        if self._users[root] <= 0:
            self._cache.pop(root, None)
        if t.storage.type.dtype == "bfloat16":
            # bfloat16 is the top half of a float32; numpy has no native type for it.
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out

    def _finish(self, obj: Any) -> None:
        self.tensors = _state_dict_of(obj, self.source)
        self._users = collections.Counter(t.storage.key for t in self.tensors.values())

    def _read_root(self, key: str, nbytes: int) -> np.ndarray:
        """The first ``nbytes`` bytes of storage record ``key`` as uint8."""
        raise NotImplementedError


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Opens ``path`` for binary reading only if it is a regular file.

    The file is opened without blocking (a FIFO would otherwise wait forever for a writer) and its
    type is checked on the open descriptor, so nothing can swap it in between.

    Raises:
      WeightsError: missing, not a regular file (directory, FIFO, device) or unreadable.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise WeightsError(f"weights file not found: {path}") from None
    except IsADirectoryError:
        raise WeightsError(f"{path} is a directory, expected a weights file") from None
    except OSError as err:
        raise WeightsError(f"cannot read {path}: {err.strerror or err}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        if stat.S_ISDIR(info.st_mode):
            raise WeightsError(f"{path} is a directory, expected a weights file")
        raise WeightsError(f"{path} is not a regular file (a FIFO, device or socket is never read); "
                           "expected a weights file")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


# What zipfile raises on damaged archives: a flipped flag bit gives NotImplementedError, a
# mangled name UnicodeDecodeError (a ValueError), a bad record BadZipFile or EOFError.
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError, ValueError)


def check_zip_entry(info: zipfile.ZipInfo, source: str, limit: int, what: str) -> None:
    """Refuses an entry that is encrypted, compressed in an unexpected way or declares > ``limit`` bytes."""
    if info.flag_bits & 0x1:
        raise WeightsError(f"{source}: zip entry {brief(info.filename)} is encrypted; weights files are "
                           "never encrypted (re-save it without a password)")
    if info.compress_type not in ZIP_METHODS:
        raise WeightsError(f"{source}: zip entry {brief(info.filename)} uses compression method "
                           f"{info.compress_type}; only stored or deflated entries are read")
    if info.file_size > limit:
        raise WeightsError(f"refused to load {source}: zip entry {brief(info.filename)} declares "
                           f"{info.file_size} bytes, more than the {limit} its {what} can need")


def read_zip_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, n: int) -> bytes:
    """The first ``n`` bytes of an entry, decompressing no more than that (bounded by the caller)."""
    with archive.open(info) as member:
        return member.read(n)


def open_zip(f: BinaryIO, source: str) -> zipfile.ZipFile:
    """Opens a zip after checking, from its end record, that its directory is of bounded size.

    Raises:
      zipfile.BadZipFile, OSError: not a zip, or unreadable.
      WeightsError: the directory lists more than MAX_ZIP_ENTRIES entries.
    """
    end = zipfile._EndRecData(f)
    if end is None:
        raise zipfile.BadZipFile("no end-of-directory record")
    entries = end[zipfile._ECD_ENTRIES_TOTAL]
    if entries > MAX_ZIP_ENTRIES or end[zipfile._ECD_SIZE] > MAX_ZIP_ENTRIES * 1024:
        raise WeightsError(f"refused to load {source}: its zip directory lists {entries} entries, "
                           f"more than the {MAX_ZIP_ENTRIES} a weights file can need")
    f.seek(0)
    return zipfile.ZipFile(f)


class _ZipCheckpoint(Checkpoint):
    """``torch.save`` zip archives (PyTorch >= 1.6)."""

    def __init__(self, f: BinaryIO, path: Path):
        super().__init__(str(path))
        self._storage_numel: dict[str, tuple[StorageType, int]] = {}
        self._file = f
        self._zip: zipfile.ZipFile | None = None
        try:
            self._zip = open_zip(f, str(path))
            names = self._zip.namelist()
            pickles = sorted((n for n in names if n == "data.pkl" or n.endswith("/data.pkl")), key=len)
            if not pickles:
                raise WeightsError(f"{path} is a zip file but not a PyTorch checkpoint (no data.pkl)")
            self._prefix = pickles[0][: -len("data.pkl")]
            if f"{self._prefix}byteorder" in names:
                info = self._zip.getinfo(f"{self._prefix}byteorder")
                check_zip_entry(info, str(path), 16, "byte order")
                order = read_zip_entry(self._zip, info, 16).decode("ascii", "replace").strip()
                if order not in ("little", "big"):
                    raise WeightsError(f"corrupt checkpoint {path}: unknown byte order {brief(order)}")
                self._byteorder = order
            info = self._zip.getinfo(pickles[0])
            check_zip_entry(info, str(path), MAX_PICKLE_BYTES, "state-dict pickle")
            data = read_zip_entry(self._zip, info, MAX_PICKLE_BYTES)
            obj = RestrictedUnpickler(io.BytesIO(data), persistent_load=self._persistent_load,
                                      source=str(path)).load()
            self._finish(obj)
        except ZIP_ERRORS as err:
            self.close()
            raise WeightsError(
                f"{path} is a corrupt or truncated zip file ({brief(str(err))}); download it again"
            ) from None
        except WeightsError:
            self.close()
            raise

    def _persistent_load(self, pid: Any) -> StorageRef:
        storage_type, key, numel, _ = _storage_pid(pid, self.source)
        self._storage_numel[key] = (storage_type, numel)
        return StorageRef(key, storage_type, numel)

    def _read_root(self, key: str, nbytes: int) -> np.ndarray:
        name = f"{self._prefix}data/{key}"
        try:
            info = self._zip.getinfo(name)
        except KeyError:
            raise WeightsError(
                f"corrupt checkpoint {self.source}: storage record {brief(name)} is missing"
            ) from None
        check_zip_entry(info, self.source, MAX_TENSOR_ELEMENTS * 8, "storage")
        if info.file_size < nbytes:
            raise WeightsError(
                f"corrupt checkpoint {self.source}: storage {brief(name)} has {info.file_size} bytes, "
                f"expected at least {nbytes} for the tensors using it"
            )
        try:
            data = read_zip_entry(self._zip, info, nbytes)
        except ZIP_ERRORS as err:
            raise WeightsError(
                f"{self.source} is corrupt ({brief(name)}: {brief(str(err))}); download it again"
            ) from None
        if len(data) < nbytes:
            raise WeightsError(f"{self.source} is truncated (storage {brief(name)}); download it again")
        return np.frombuffer(data, np.uint8)

    def close(self) -> None:
        super().close()
        if self._zip is not None:
            self._zip.close()
        self._file.close()


class _LegacyCheckpoint(Checkpoint):
    """Pre-zip ``torch.save`` files: header pickles, the object pickle, then raw storages."""

    def __init__(self, f: BinaryIO, path: Path):
        super().__init__(str(path))
        self._storages: dict[str, tuple[StorageType, int]] = {}
        self._offsets: dict[str, int] = {}
        self._file = f
        try:
            self._parse(path)
        except WeightsError:
            self._file.close()
            raise

    def _parse(self, path: Path) -> None:
        budget = PickleBudget(self._file, str(path))  # shared by the five pickles

        def pickle(persistent_load=None) -> Any:
            return RestrictedUnpickler(budget, persistent_load=persistent_load, source=self.source).load()

        if pickle() != _LEGACY_MAGIC:
            raise WeightsError(f"{path} is not a PyTorch checkpoint (bad magic number)")
        protocol = pickle()
        if protocol != _LEGACY_PROTOCOL:
            raise WeightsError(f"{path} uses unsupported PyTorch serialization protocol {brief(protocol)}")
        sys_info = pickle()
        if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
            self._byteorder = "big"
        obj = pickle(self._persistent_load)
        keys = pickle()
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise WeightsError(f"corrupt checkpoint {path}: storage key list is malformed")
        if len(set(keys)) != len(keys):
            raise WeightsError(f"corrupt checkpoint {path}: the storage key list repeats a key")
        self._finish(obj)
        unlisted = [k for k in self._storages if k not in set(keys)]
        if unlisted:
            raise WeightsError(
                f"corrupt checkpoint {path}: storage {brief(unlisted[0])} is used but missing from "
                "the storage key list"
            )
        # Storages follow in ``keys`` order, each as an 8-byte element count and its raw bytes.
        size = os.fstat(self._file.fileno()).st_size
        count = struct.Struct("<q" if self._byteorder == "little" else ">q")
        pos = self._file.tell()
        for key in keys:
            if key not in self._storages:
                raise WeightsError(f"corrupt checkpoint {path}: storage {brief(key)} is not referenced")
            storage_type, numel = self._storages[key]
            if pos + 8 > size:
                raise WeightsError(f"{path} is truncated (storage {brief(key)} is missing); download it again")
            self._file.seek(pos)
            (stored,) = count.unpack(self._file.read(8))
            if stored != numel:
                raise WeightsError(
                    f"corrupt checkpoint {path}: storage {brief(key)} has {stored} elements, expected {numel}"
                )
            self._offsets[key] = pos + 8
            pos += 8 + numel * storage_type.numpy_dtype(self._byteorder).itemsize
            if pos > size:
                raise WeightsError(f"{path} is truncated ({size} of {pos} bytes); download it again")

    def _persistent_load(self, pid: Any) -> StorageRef:
        storage_type, root_key, numel, view = _storage_pid(pid, self.source)
        self._storages.setdefault(root_key, (storage_type, numel))
        if view is None:
            return StorageRef(root_key, storage_type, numel)
        # Storage views (PyTorch < 0.4): (view_key, element offset, element count) into the root.
        if not (isinstance(view, tuple) and len(view) == 3 and all(isinstance(v, int) for v in view[1:])):
            raise WeightsError(f"corrupt checkpoint {self.source}: malformed storage view {brief(view)}")
        _, offset, view_numel = view
        if offset < 0 or view_numel < 0 or offset + view_numel > numel:
            raise WeightsError(f"corrupt checkpoint {self.source}: storage view outside its storage")
        return StorageRef(root_key, storage_type, view_numel, offset)

    def _read_root(self, key: str, nbytes: int) -> np.ndarray:
        storage_type, numel = self._storages[key]
        if nbytes > numel * storage_type.numpy_dtype(self._byteorder).itemsize:
            raise WeightsError(f"corrupt checkpoint {self.source}: a tensor reaches past storage {brief(key)}")
        buf = np.empty(nbytes, np.uint8)
        self._file.seek(self._offsets[key])
        if self._file.readinto(buf) != nbytes:
            raise WeightsError(f"{self.source} is truncated (storage {brief(key)}); download it again")
        return buf

    def close(self) -> None:
        super().close()
        self._file.close()


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Opens a ``.pth`` file (zip or legacy format) and reads its tensor metadata, not its data.

    Raises:
      UnsafePickleError: the pickle references anything but tensor rebuilding.
      WeightsError: the file is missing, not a regular file, of another format, truncated or corrupt.
    """
    path = Path(path)
    f = open_regular(path)
    try:
        head = f.read(512)
        f.seek(0)
    except OSError as err:
        f.close()
        raise WeightsError(f"cannot read {path}: {err.strerror or err}") from None
    if head.startswith(b"PK"):
        return _ZipCheckpoint(f, path)
    if head.startswith(b"\x80"):
        return _LegacyCheckpoint(f, path)
    f.close()
    if len(head) >= 262 and head[257:262] == b"ustar":
        raise WeightsError(
            f"{path} is a tar checkpoint from PyTorch < 0.4, which is not supported; "
            "load it with that PyTorch and re-save it with torch.save(state_dict, path)"
        )
    what = "empty" if not head else "not a PyTorch checkpoint (neither a zip nor a pickle)"
    raise WeightsError(f"{path} is {what}; expected a file written by torch.save")


def to_float32(view: np.ndarray) -> np.ndarray:
    """A contiguous float32 copy of a tensor view (one copy, whatever the strides; 0-d stays 0-d)."""
    return np.array(view, dtype=np.float32, order="C", copy=True)


def read_state_dict(path: str | os.PathLike,
                    include: Callable[[str], bool] | None = None) -> dict[str, np.ndarray]:
    """Reads a PyTorch state dict as float32 numpy arrays without importing torch.

    Args:
      path: a ``.pth`` file written by ``torch.save(model.state_dict(), path)``, zip or legacy.
      include: if given, only keys for which it returns True are read (others are never loaded).

    Returns:
      ``{key: float32 array}`` in the file's key order, with the tensors' logical shapes.

    Raises:
      UnsafePickleError: the pickle references anything but tensor rebuilding; nothing ran.
      WeightsError: the file is missing, not a checkpoint, truncated or corrupt.
    """
    with open_checkpoint(path) as ckpt:
        return {k: to_float32(ckpt.view(k)) for k in ckpt.tensors if include is None or include(k)}

