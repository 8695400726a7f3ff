"""Host-side input pipelines for AdaIN decoder training (image folders and TFDS), built on grain.

Training (Huang & Belongie 2017, §6.2; report §VI-C) draws content and style images independently:
each image is resized so its shorter side is ``load_size`` (512), keeping the aspect ratio, and a
random ``crop`` x ``crop`` (256) square is cut from it. This module produces those crops as uint8
NHWC batches; conversion to float32 [0, 1] happens on the device, inside the train step.

Determinism. Each stream is a grain ``MapDataset`` over :class:`ShuffledEpochs` (the source repeated
forever, every epoch in its own permutation seeded by (seed, epoch)), a random crop seeded by
(seed, element index), then batching. Element ``k`` of the batched dataset is therefore the batch of
training step ``k + 1``, a pure function of (seed, step): resuming after ``s`` steps slices the
dataset at ``s`` and sees exactly the batches an uninterrupted run would have seen, whatever the
number of worker processes. Content and style are two such streams with independent seeds, so the
two datasets may have any sizes.

Unreadable files. Images are opened only with the decoders of :data:`READ_FORMATS` (the allow-list
of :func:`nst_jax.image.load_image`; never Ghostscript). :func:`scan_image_folder` opens every
file's header once and skips (and counts) files that are not decodable images of those formats. A
file whose header reads but whose body is broken (a truncated JPEG) is found only when decoded in a
worker; it is then replaced by the next readable file of the folder (the next record of a TFDS
dataset) and a warning is logged (from that worker process).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from nst_jax import image
from nst_jax.errors import ConfigError, InputImageError

logger = logging.getLogger(__name__)

# PIL raises these for files that are not images or are damaged; DecompressionBombError is a
# subclass of Exception raised for absurdly large images, which we also skip.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError)

# The decoders training lets Pillow use: the same allow-list as image.load_image. Without it Pillow
# picks a decoder from the file's bytes, whatever its name, and an EPS file (say, saved as x.png)
# makes it run Ghostscript; such files are skipped and counted like any other unreadable file.
READ_FORMATS: tuple[str, ...] = image._READ_FORMATS


def _open(fp) -> Image.Image:
    return Image.open(fp, formats=READ_FORMATS)


@dataclasses.dataclass(frozen=True)
class FolderScan:
    """Result of scanning an image folder.

    Attributes:
      files: readable image files, sorted (so the shuffle depends on the seed only).
      skipped: files with an image extension that PIL could not open.
    """

    files: tuple[str, ...]
    skipped: tuple[str, ...]


def _readable(path: str) -> bool:
    try:
        with _open(path) as im:
            im.size  # noqa: B018 - reading the header is the check
        return True
    except _DECODE_ERRORS:
        return False


def scan_image_folder(folder: str | os.PathLike, *, threads: int = 8) -> FolderScan:
    """Lists the images under ``folder`` (recursively) and skips the ones PIL cannot open.

    Args:
      folder: a directory with image files (:data:`nst_jax.image.IMAGE_EXTENSIONS`: jpg, jpeg, png,
        webp, ...) at any depth; hidden files are ignored.
      threads: header reads run in this many threads (I/O bound on large folders).

    Returns:
      A :class:`FolderScan`; ``len(scan.skipped)`` is the number of unreadable files.

    Raises:
      InputImageError: the folder does not exist or has no readable image.
    """
    candidates = [str(p) for p in image.list_images(folder, recursive=True)]
    with futures.ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        ok = list(pool.map(_readable, candidates))
    files = tuple(p for p, good in zip(candidates, ok) if good)
    skipped = tuple(p for p, good in zip(candidates, ok) if not good)
    if skipped:
        logger.warning("skipped %d unreadable file(s) in %s, e.g. %s", len(skipped), folder, skipped[0])
    if not files:
        raise InputImageError(
            f"no readable images in {str(folder)!r} ({len(skipped)} unreadable); "
            f"add {'/'.join(e[1:] for e in image.IMAGE_EXTENSIONS)} files")
    return FolderScan(files=files, skipped=skipped)


def fit_short_side(im: Image.Image, load_size: int, crop: int) -> Image.Image:
    """Resizes so the shorter side is ``load_size`` (aspect kept); never below ``crop``.

    ``load_size == 0`` keeps the original size, as the official ``-contentSize 0``. An image whose
    shorter side would end up smaller than ``crop`` is scaled up to ``crop`` (the official loader
    errors out instead).
    """
    w, h = im.size
    target = load_size if load_size > 0 else min(w, h)
    target = max(target, crop)
    if min(w, h) == target:
        return im
    scale = target / min(w, h)
    size = (max(target, round(w * scale)), max(target, round(h * scale)))
    return im.resize(size, Image.Resampling.BILINEAR)


def _to_rgb(im: Image.Image) -> Image.Image:
    im = ImageOps.exif_transpose(im)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Composite transparent pixels over white rather than letting convert() expose their
        # (arbitrary) colour values.
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return im.convert("RGB")


def decode_and_fit(data: bytes | np.ndarray, load_size: int, crop: int) -> np.ndarray:
    """Decodes encoded bytes (or takes a uint8 HWC array) and applies :func:`fit_short_side`.

    Returns:
      (H, W, 3) uint8 RGB.
    """
    if isinstance(data, np.ndarray):
        arr = data if data.ndim == 3 else data[..., None]
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
        im = Image.fromarray(np.ascontiguousarray(arr[..., :3]).astype(np.uint8))
    else:
        im = _open(io.BytesIO(data))
        if load_size > 0:
            # JPEG can decode at 1/2, 1/4, 1/8 scale for free; draft() keeps the result at least as
            # large as requested, so the resize below still sets the exact size.
            w, h = im.size
            scale = max(load_size, crop) / min(w, h)
            im.draft(None, (int(w * scale) + 1, int(h * scale) + 1))
        im = _to_rgb(im)
    return np.asarray(fit_short_side(im, load_size, crop), dtype=np.uint8)


class ImageFolderSource:
    """Random-access source over a scanned folder: item ``i`` is image ``i`` resized (uint8 HWC).

    Picklable (holds only paths), so grain worker processes can use it.
    """

    def __init__(self, files: Sequence[str], load_size: int, crop: int):
        if not files:
            raise InputImageError("no images to train on; pass a folder with readable images")
        self.files = tuple(files)
        self.load_size = load_size
        self.crop = crop

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> np.ndarray:
        n = len(self.files)
        for k in range(n):
            path = self.files[(index + k) % n]
            try:
                return decode_and_fit(Path(path).read_bytes(), self.load_size, self.crop)
            except _DECODE_ERRORS as err:
                # Truncated bodies pass the header scan; use the next file so the batch stays full.
                logger.warning("cannot decode %s (%s); using the next image instead", path, err)
        raise InputImageError(f"none of the {n} images could be decoded; check the image folder")

    def __repr__(self) -> str:
        return f"ImageFolderSource({len(self.files)} files, load_size={self.load_size}, crop={self.crop})"


def parse_tfds_name(spec: str) -> tuple[str, str]:
    """Splits ``"name[/config][:split]"`` into (name, split); the split defaults to ``"train"``."""
    name, _, split = spec.partition(":")
    if not name:
        raise ConfigError(f"empty TFDS dataset name in {spec!r}; use e.g. coco/2017 or coco/2017:train")
    return name, split or "train"


class TfdsImageSource:
    """Random-access source over a TFDS dataset prepared as array_record (no TensorFlow needed).

    Uses ``tfds.data_source``, so the dataset must already be prepared in ``data_dir`` (e.g. with
    ``tfds build``) in the ``array_record`` file format.
    """

    def __init__(self, spec: str, load_size: int, crop: int, *, data_dir: str | None = None,
                 image_key: str = "image"):
        try:
            import tensorflow_datasets as tfds  # optional dependency: nst_jax[tfds]
        except ImportError as err:
            raise ConfigError(f"TFDS source {spec!r} needs tensorflow-datasets; "
                              "install it with pip install 'nst_jax[tfds]'") from err
        name, split = parse_tfds_name(spec)
        folder = data_dir or "DIR"
        prepare = (f"prepare it once with `tfds build {name} --data_dir {folder} --file_format=array_record` "
                   f"(or tfds.data_source({name!r}, data_dir={folder!r}, download=True)), then pass "
                   f"--tfds-data-dir {folder}")
        try:
            # download=False: reading never downloads or builds a dataset (tens of GB for COCO).
            self._source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
            features = self._source.dataset_info.features
            if image_key in features.keys() and isinstance(features[image_key], tfds.features.Image):
                # The encoded bytes, decoded here with the allow-list: TFDS's own decoder opens
                # them with Pillow's full set of formats (Ghostscript included).
                self._source = tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                                                decoders={image_key: tfds.decode.SkipDecoding()})
        except (tfds.core.registered.DatasetNotFoundError, ValueError) as err:  # unknown name or split
            where = f" in {data_dir}" if data_dir else ""
            why = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ConfigError(f"cannot open TFDS dataset {spec!r}{where} ({why}); check the name, or "
                              f"{prepare}") from err
        except (FileNotFoundError, AssertionError, NotImplementedError, ImportError) as err:
            # Without prepared files TFDS constructs the dataset's builder code, which for most
            # datasets (COCO included) imports TensorFlow, or finds no array_record files
            # (NotImplementedError): what is missing is the data, not a reader.
            where = f"in {data_dir}" if data_dir else "in the default TFDS folder"
            raise ConfigError(f"TFDS dataset {name!r} is not prepared (as array_record) {where}; {prepare}") from err
        features = list(self._source.dataset_info.features.keys())
        if image_key not in features:
            raise ConfigError(f"TFDS dataset {spec!r} has no feature {image_key!r}; pass --tfds-image-key "
                              f"with one of: {', '.join(features)}")
        if len(self._source) == 0:
            raise InputImageError(f"TFDS dataset {spec!r} split {split!r} is empty")
        self.spec = spec
        self.split = split
        self.image_key = image_key
        # "jpeg" or "png" for encoded images, None when the feature stores arrays.
        self.encoding_format = getattr(self._source.dataset_info.features[image_key], "encoding_format", None)
        self.load_size = load_size
        self.crop = crop

    def __len__(self) -> int:
        return len(self._source)

    def record(self, index: int) -> bytes | np.ndarray:
        """The image feature of record ``index`` as stored (encoded bytes, or a uint8 array), not decoded."""
        value = self._source[index][self.image_key]
        return value if isinstance(value, bytes) else np.asarray(value)

    def __getitem__(self, index: int) -> np.ndarray:
        n = len(self._source)
        for k in range(n):
            i = (index + k) % n
            value = self.record(i)
            try:
                return decode_and_fit(value, self.load_size, self.crop)
            except _DECODE_ERRORS as err:
                # As for folders: an undecodable record is replaced by the next one.
                logger.warning("cannot decode record %d of %s (%s); using the next image instead",
                               i, self.spec, err)
        raise InputImageError(f"none of the {n} records of TFDS dataset {self.spec!r} could be decoded")

    def __repr__(self) -> str:
        return f"TfdsImageSource({self.spec!r}, {len(self)} records)"


class _CropTransform:
    """Picklable random-crop callable for ``MapDataset.random_map`` (the official ``_randomCrop``)."""

    def __init__(self, crop: int):
        self.crop = crop

    def __call__(self, element: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = element.shape[:2]
        top = int(rng.integers(0, h - self.crop + 1))
        left = int(rng.integers(0, w - self.crop + 1))
        return np.ascontiguousarray(element[top:top + self.crop, left:left + self.crop, :3])


class ShuffledEpochs:
    """Endless random-access view of ``source``: epoch ``e`` visits it in a permutation seeded by (seed, e).

    Index ``k`` is item ``perm_e[k mod n]`` with ``e = k div n``, so every epoch is reshuffled and any
    position of the endless stream can be read directly (what resuming needs). grain's own
    ``MapDataset.shuffle`` computes each index with a cycle-walking cipher that takes milliseconds
    per element on small datasets (a few style images); a cached permutation per epoch costs O(n)
    once per epoch and process instead.
    """

    def __init__(self, source: Any, seed: int):
        self.source = source
        self.seed = seed
        self._init_cache()

    def _init_cache(self) -> None:
        self._lock = threading.Lock()
        self._perms: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict:
        return {"source": self.source, "seed": self.seed}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_cache()

    def __len__(self) -> int:
        return sys.maxsize

    def permutation(self, epoch: int) -> np.ndarray:
        """The order in which epoch ``epoch`` visits the source."""
        with self._lock:
            perm = self._perms.get(epoch)
            if perm is None:
                perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.source))
                if len(self._perms) >= 2:  # consecutive epochs overlap only at their boundary
                    del self._perms[min(self._perms)]
                self._perms[epoch] = perm
            return perm

    def __getitem__(self, index: int):
        epoch, i = divmod(int(index), len(self.source))
        return self.source[int(self.permutation(epoch)[i])]


class _ProcessShare:
    """Process ``p``'s share of an unbatched stream (a grain ``MapDataset``, made by :func:`_process_share`).

    Element ``k`` (batched by ``b`` afterwards, so batch ``s`` holds elements ``s*b .. s*b+b-1``)
    is parent element ``(s * P + p) * b + j`` with ``s, j = divmod(k, b)``: the ``p``-th
    contiguous slice of the batch that one process reading ``b * P`` images per step would take.
    The crop RNG is applied before (keyed by the parent's index), so an image and its crop do not
    depend on which process reads it, and each process decodes only its own images.
    """

    def __init__(self, parent, batch_size: int, process_index: int, process_count: int):
        super().__init__(parent)
        self._b, self._p, self._n = batch_size, process_index, process_count
        self._length = len(parent) // process_count

    def __len__(self) -> int:
        return self._length

    def _parent_index(self, index: int) -> int:
        step, j = divmod(int(index), self._b)
        return (step * self._n + self._p) * self._b + j

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._parent[self._parent_index(index)]

    def _getitems(self, indices):
        return self._parent._getitems([self._parent_index(i) for i in indices])  # noqa: SLF001

    def __str__(self) -> str:
        return f"ProcessShareMapDataset(process {self._p} of {self._n}, {self._b} per step)"


def _process_share_class() -> type:
    """The grain ``MapDataset`` subclass of :class:`_ProcessShare`, made once grain is imported.

    It is a module attribute (``ProcessShareMapDataset``, found through the module ``__getattr__``),
    so grain worker processes can unpickle the dataset.
    """
    cls = globals().get("ProcessShareMapDataset")
    if cls is None:
        _grain()
        from grain._src.python.dataset import dataset  # MapDataset's base module, for the subclass

        cls = type("ProcessShareMapDataset", (_ProcessShare, dataset.MapDataset),
                   {"_MUTATES_ELEMENT_SPEC": False, "__module__": __name__, "__doc__": _ProcessShare.__doc__})
        globals()["ProcessShareMapDataset"] = cls
    return cls


def __getattr__(name: str):
    if name == "ProcessShareMapDataset":
        return _process_share_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _seeds(seed: int, stream: int) -> tuple[int, int]:
    """Two independent 32-bit seeds (shuffle, crop) for stream 0 (content) or 1 (style)."""
    state = np.random.SeedSequence([seed, stream]).generate_state(2)
    return int(state[0]), int(state[1])


def _grain():
    try:
        import grain
        from absl import flags
    except ImportError as err:
        raise ConfigError("training needs grain; install it with pip install 'nst_jax[train]'") from err
    # grain reads absl flags; outside an absl app they are unparsed and reading them raises.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    return grain


def image_stream(source: Any, *, batch_size: int, crop: int, seed: int, stream: int,
                 process_index: int = 0, process_count: int = 1):
    """Endless batched ``grain.MapDataset`` of uint8 crops; element ``k`` is the batch of step ``k``.

    Args:
      source: random-access source of uint8 HWC images (:class:`ImageFolderSource`,
        :class:`TfdsImageSource`, or any sequence of arrays with both sides >= ``crop``).
      batch_size: images per batch on this process.
      crop: side of the square crops.
      seed: user seed; ``stream`` (0 content, 1 style) makes the two streams independent.
      process_index, process_count: multi-host data sharding. The global batch of step ``k`` is
        the one-process batch of ``batch_size * process_count`` images at step ``k``, and process
        ``p`` reads only its contiguous ``p``-th slice of it (:class:`_ProcessShare`), so the
        global batch, in order, does not depend on the number of processes.

    Returns:
      ``MapDataset`` whose elements are (batch_size, crop, crop, 3) uint8 arrays.
    """
    grain = _grain()
    shuffle_seed, crop_seed = _seeds(seed, stream)
    ds = grain.MapDataset.source(ShuffledEpochs(source, shuffle_seed))
    # The crop RNG is seeded by (crop_seed, element index): crops differ between epochs and are
    # reproducible from (seed, step).
    ds = ds.random_map(_CropTransform(crop), seed=crop_seed)
    if process_count > 1:
        ds = _process_share_class()(ds, batch_size, process_index, process_count)
    return ds.batch(batch_size, drop_remainder=True)


def pair_batches(content: Any, style: Any, *, batch_size: int, crop: int, seed: int,
                 start_step: int = 0, num_workers: int = 0, num_threads: int = 4,
                 process_index: int = 0, process_count: int = 1):
    """Iterable of (content, style) uint8 batches starting at training step ``start_step``.

    Content and style are independent streams over sources of any sizes. With ``num_workers > 0``
    batches are produced in that many grain worker processes (spawned) and prefetched; within each
    process ``num_threads`` threads read batches ahead. The sequence of batches does not depend on
    ``num_workers`` or ``num_threads``.

    Returns:
      A ``grain.IterDataset``; ``iter()`` it and ``close()`` the iterator when done.
    """
    grain = _grain()
    from grain.experimental import ZipMapDataset

    pairs = ZipMapDataset([
        image_stream(content, batch_size=batch_size, crop=crop, seed=seed, stream=0,
                     process_index=process_index, process_count=process_count),
        image_stream(style, batch_size=batch_size, crop=crop, seed=seed, stream=1,
                     process_index=process_index, process_count=process_count),
    ])
    pairs = pairs[start_step:]
    read = grain.ReadOptions(num_threads=max(0, num_threads), prefetch_buffer_size=max(1, num_threads))
    it = pairs.to_iter_dataset(read)
    if num_workers > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=2),
                            worker_init_fn=_worker_init)
    return it


def _worker_init(worker_index: int, worker_count: int) -> None:
    """Runs in each grain worker: Ctrl-C reaches the whole process group, but only the main process
    should react (it saves a checkpoint and then shuts the workers down)."""
    del worker_index, worker_count
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def take(iterable, n: int) -> list:
    """First ``n`` elements of an iterable of batches, closing grain iterators afterwards."""
    it = iter(iterable)
    try:
        return [next(it) for _ in range(n)]
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


__all__ = [
    "FolderScan", "scan_image_folder", "fit_short_side", "decode_and_fit",
    "ImageFolderSource", "TfdsImageSource", "ShuffledEpochs", "parse_tfds_name", "image_stream", "pair_batches", "take",
]

