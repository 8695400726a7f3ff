"""Stylizing whole image datasets with AdaIN: deterministic, batched, sharded over processes, resumable.

The use that made AdaIN popular in vision research is Stylized-ImageNet (Geirhos et al. 2019, ICLR:
every ImageNet training image with a random painting, alpha = 1), built with the per-image PyTorch
scripts of ``bethgelab/stylize-datasets``; this module keeps their options and output layout.

Determinism. Version ``k`` of content file ``c`` (its path relative to the content folder) gets
style ``styles[h(seed, c, k) mod len(styles)]``, with ``h`` a keyed BLAKE2b hash and ``styles`` the
sorted list of style files. The pairing therefore depends on the seed and the two file lists only:
not on devices, processes, batch size, or how often the run was interrupted (:func:`style_index`).

Batches. Content images are grouped by their exact size after resizing and stylized in batches, one
compiled program per size. Padding images of different sizes to one shape would change them: every
convolution of the encoder and decoder reflects at the image border, so a padded image's border
pixels see different neighbours however the statistics are masked. Images of one size are
independent along the batch axis (AdaIN statistics are per image), so a batch equals the images
done one at a time up to float rounding; a partial batch is filled with copies of its first image
(outputs dropped) up to a power-of-two multiple of the device count (:func:`padded_batch`).
Batches are split over all local devices (batch sharding).

Processes. Content file ``i`` (sorted order) belongs to process ``i mod N``. Each process writes
only its outputs and ``manifest.part-<index>.jsonl``; process 0 merges the parts into
``manifest.jsonl`` once all have finished. A rerun with the same settings skips every output that
is in a manifest and present on disk, and redoes the rest (outputs are written atomically, so a
file on disk is complete). The settings that decide the outputs are stored in
``stylize_settings.json``; a rerun with different ones is refused (``overwrite`` starts over).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nst_jax import adain, data, distributed, files, image, losses, memory
from nst_jax.errors import ConfigError, InputImageError, MemoryBudgetError, OutputPathError

Params = Mapping[str, Mapping[str, Any]]

FORMATS: tuple[str, ...] = ("same", "jpg", "png")
DEFAULT_EXTENSIONS: tuple[str, ...] = tuple(e.lstrip(".") for e in image.IMAGE_EXTENSIONS)
MANIFEST = "manifest.jsonl"
SETTINGS = "stylize_settings.json"
_PART = "manifest.part-{:05d}.jsonl"
_PART_GLOB = "manifest.part-*.jsonl"
_DATA_AXIS = "data"
_MAX_MANIFEST_LINE = 1 << 16  # an entry is a few paths; anything longer is damage


def _field(default: Any, help: str, group: str, **kw: Any) -> Any:  # noqa: A002 - argparse vocabulary
    return dataclasses.field(default=default, metadata={"help": help, "group": group, **kw})


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """Settings of a dataset stylization (flag names of ``bethgelab/stylize-datasets``).

    ``metadata`` describes each field as a flag of ``nst-stylize-dataset`` (:mod:`nst_jax.cli.dataset`).
    Unlike ``--size`` of ``nst-adain`` and ``nst-gatys`` (an output HEIGHT), ``content_size`` and
    ``style_size`` are SHORT SIDES, as in stylize-datasets, so its commands work unchanged.

    Attributes:
      content_dir: folder of content images (any depth; the output mirrors its tree).
      content_tfds: a TFDS dataset ``NAME[/CONFIG][:SPLIT]`` (prepared as array_record) instead of
        ``content_dir``; record ``i`` of split ``S`` is written as ``S/<i>.<ext>`` (``i`` zero-padded).
      tfds_data_dir: TFDS ``data_dir`` holding the prepared dataset.
      tfds_image_key: name of the image feature of the TFDS dataset.
      style_dir: folder of style images (any depth).
      output_dir: where the stylized tree, the manifest and the settings go.
      num_styles: stylized versions per content image, each with its own style.
      alpha: content-style trade-off in [0, 1] (AdaIN report eq. 11).
      content_size: content SHORT SIDE in pixels; 0 keeps the original size.
      style_size: style SHORT SIDE in pixels; 0 keeps the original size.
      extensions: file extensions (no dot, any case) taken from both folders.
      seed: decides the pairing (see :func:`style_index`).
      batch_size: images per compiled call on this process (rounded up to the local device count).
      format: output format: ``same`` as the content file, ``jpg`` or ``png``.
      quality: JPEG/WebP quality 1..100.
      preserve_color: recolour each style to its content's colours first (no style cache then).
      max_memory: GiB a batch may use (estimated); batches of large images are made smaller.
      overwrite: discard an earlier run's manifest and settings in ``output_dir`` and redo all.
      num_threads: decoding threads (grain) of this process; 0 decodes in the main thread.
    """

    content_dir: str | None = _field(None, "folder of content images, any depth; the output mirrors its tree",
                                     "data", metavar="DIR")
    style_dir: str | None = _field(None, "folder of style images, any depth", "data", metavar="DIR",
                                   required=True)
    output_dir: str | None = _field(None, "output folder: the content tree with stylized images, "
                                    f"{MANIFEST} and {SETTINGS}", "data",
                                    metavar="DIR", short="-o", required=True)
    content_tfds: str | None = _field(
        None, "TFDS dataset NAME[/CONFIG][:SPLIT] (prepared as array_record) instead of --content-dir; "
        "record I of split S is written as S/I.EXT (I zero-padded)", "data", metavar="NAME")
    tfds_data_dir: str | None = _field(None, "TFDS data_dir holding the prepared dataset", "data",
                                       metavar="DIR", default_help="TFDS's default")
    tfds_image_key: str = _field("image", "name of the image feature of the TFDS dataset", "data", metavar="KEY")
    extensions: tuple[str, ...] = _field(DEFAULT_EXTENSIONS, "file extensions taken from both folders",
                                         "data", metavar="EXT")
    format: str = _field("same", "output format; same keeps each content's", "data", choices=FORMATS)
    quality: int = _field(95, "JPEG/WebP quality, 1-100", "data", min=">0", metavar="Q")
    overwrite: bool = _field(False, "redo everything: forget the run found in --output-dir", "data")
    num_styles: int = _field(1, "stylized versions per content image, each with its own style; with N > 1 "
                             "files get a _K suffix", "style", min=">0", metavar="N")
    alpha: float = _field(1.0, "content-style trade-off, 0 (content) to 1 (style)", "style", metavar="A")
    content_size: int = _field(0, "content SHORT SIDE in pixels, aspect kept, 0 = original (as "
                               "stylize-datasets; not a height like --size of nst-adain)", "style", min=">=0",
                               metavar="PX")
    style_size: int = _field(512, "style SHORT SIDE in pixels, 0 = original (as stylize-datasets)", "style",
                             min=">=0", metavar="PX")
    seed: int = _field(0, "decides which style goes with which content (and nothing else)", "style", metavar="SEED")
    preserve_color: bool = _field(False, "keep each content's colours by recolouring its style first", "style")
    batch_size: int = _field(8, "images of one size per compiled call on each process (rounded up to a "
                             "multiple of the local device count)", "performance", min=">0", metavar="N")
    max_memory: float | None = _field(None, "GiB one device may use for a batch; larger images get smaller "
                                      "batches", "performance", min=">0", default_help="no limit", metavar="GIB")
    num_threads: int = _field(8, "decoding threads of each process; 0 decodes in the main thread",
                              "performance", flag="--threads", min=">=0", metavar="N")


def check_config(config: DatasetConfig) -> None:
    """Raises ConfigError for values out of range (one line, naming the flag)."""
    if config.num_styles < 1:
        raise ConfigError(f"--num-styles must be >= 1, got {config.num_styles}")
    if not 0.0 <= config.alpha <= 1.0:
        raise ConfigError(f"--alpha must be between 0 (content only) and 1 (full style), got {config.alpha}")
    for flag, size in (("--content-size", config.content_size), ("--style-size", config.style_size)):
        if size != 0 and size < adain.MIN_IMAGE_SIZE:
            raise ConfigError(f"{flag} must be 0 (keep) or >= {adain.MIN_IMAGE_SIZE} px, got {size}")
    if config.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {config.batch_size}")
    if config.format not in FORMATS:
        raise ConfigError(f'unknown --format "{config.format}"; valid choices: {", ".join(FORMATS)}')
    if not 1 <= config.quality <= 100:
        raise ConfigError(f"--quality must be between 1 and 100, got {config.quality}")
    if not config.extensions:
        raise ConfigError("--extensions is empty; give e.g. jpg,jpeg,png")
    if (config.content_dir is None) == (config.content_tfds is None):
        raise ConfigError("pass exactly one of --content-dir DIR and --content-tfds NAME")
    if config.style_dir is None or config.output_dir is None:
        raise ConfigError("--style-dir and --output-dir are required")
    if config.num_threads < 0:
        raise ConfigError(f"--threads must be >= 0, got {config.num_threads}")
    if config.max_memory is not None and not config.max_memory > 0:
        raise ConfigError(f"--max-memory must be > 0 GiB, got {config.max_memory}")


# ----------------------------------------------------------------------------------------------
# Pure planning: file lists, pairing, shares, output names


def list_files(root: str | os.PathLike, extensions: Iterable[str], what: str) -> tuple[str, ...]:
    """Relative POSIX paths of the files under ``root`` with one of ``extensions``, sorted.

    Hidden files and folders (name starting with ".") are skipped, as are symlinked folders (a link
    cycle would never end).

    Raises:
      InputImageError: ``root`` is missing, not a folder, or holds no such file.
    """
    root = Path(root)
    if not root.exists():
        raise InputImageError(f"{what} folder not found: {root}; check the path")
    if not root.is_dir():
        raise InputImageError(f"{what} path is not a folder: {root}; pass the folder that holds the images")
    exts = {"." + e.lower().lstrip(".") for e in extensions}
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(folder).relative_to(root)
        found += [(rel / f).as_posix() for f in names
                  if not f.startswith(".") and Path(f).suffix.lower() in exts]
    if not found:
        raise InputImageError(f"no {'/'.join(sorted(e[1:] for e in exts))} files in the {what} folder {root}; "
                              "add images or change --extensions")
    return tuple(sorted(found))


def style_index(seed: int, content: str, k: int, num_styles: int) -> int:
    """Index of the style for version ``k`` of ``content``: a keyed hash, uniform over the styles.

    A function of its arguments only (64-bit BLAKE2b; the modulo bias is below 2**-40 for any
    realistic number of styles), so any process can compute any pairing without coordination.
    """
    digest = hashlib.blake2b(f"{content}\0{k}".encode(), digest_size=8,
                             key=str(int(seed)).encode()).digest()
    return int.from_bytes(digest, "little") % num_styles


def output_name(content: str, k: int, num_styles: int, fmt: str) -> str:
    """Relative output path: the content's path and stem; with several versions a ``_k`` suffix.

    ``fmt`` ``same`` keeps the content's extension when Pillow can write it (else ``.png``).
    """
    path = Path(content)
    ext = path.suffix.lower() if fmt == "same" else "." + fmt
    if ext not in image.SAVE_EXTENSIONS:
        ext = ".png"
    stem = path.stem if num_styles == 1 else f"{path.stem}_{k}"
    return (path.parent / (stem + ext)).as_posix()


class Task(NamedTuple):
    """One output: version ``k`` of content file ``content`` with style file ``style``."""

    content: str
    k: int
    style: str
    output: str


def plan(contents: Sequence[str], styles: Sequence[str], *, num_styles: int, seed: int,
         fmt: str) -> list[list[Task]]:
    """The tasks of every content file (outer list parallel to ``contents``).

    Raises:
      ConfigError: two content files would be written to the same output (e.g. ``a.jpg`` and
        ``a.png`` with ``--format png``).
    """
    tasks = [[Task(c, k, styles[style_index(seed, c, k, len(styles))], output_name(c, k, num_styles, fmt))
              for k in range(num_styles)] for c in contents]
    seen: dict[str, str] = {}
    for group in tasks:
        for t in group:
            other = seen.setdefault(t.output, t.content)
            if other != t.content:
                raise ConfigError(f"{other} and {t.content} would both be written to {t.output}; use "
                                  "--format same or rename one of them")
    return tasks


def share(n: int, info: distributed.ProcessInfo) -> range:
    """Indices of the content files that process ``info.index`` of ``info.count`` stylizes."""
    return range(info.index, n, info.count)


# ----------------------------------------------------------------------------------------------
# Folders, settings, manifests


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_folders(config: DatasetConfig) -> None:
    """Refuses an output folder that overlaps the content or style folder (either way round).

    Raises:
      OutputPathError: the content or style folder is the output folder, inside it, or holds it.
    """
    out = Path(config.output_dir).resolve()
    for flag, folder in (("--content-dir", config.content_dir), ("--style-dir", config.style_dir)):
        if folder is None:
            continue
        src = Path(folder).resolve()
        if _inside(src, out) or _inside(out, src):
            raise OutputPathError(f"{flag} {folder} and --output-dir {config.output_dir} overlap: outputs would "
                                  "become inputs of the next run; choose an --output-dir outside it")
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"--output-dir {config.output_dir} is a file; choose a folder")


def _digest(items: Iterable[str]) -> str:
    h = hashlib.sha256()
    for item in items:
        h.update(item.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def params_digest(params: Params) -> str:
    """A short hash of a params pytree (names, shapes and values)."""
    h = hashlib.sha256()
    for layer in sorted(params):
        for leaf in sorted(params[layer]):
            arr = np.asarray(params[layer][leaf])
            h.update(f"{layer}/{leaf}{arr.shape}{arr.dtype}".encode())
            h.update(arr.tobytes())
    return h.hexdigest()[:16]


def settings(config: DatasetConfig, styles: Sequence[str], vgg_params: Params, decoder_params: Params) -> dict:
    """Everything that decides what an output holds; equal settings give equal outputs."""
    return {
        "num_styles": config.num_styles, "alpha": config.alpha, "seed": config.seed,
        "content_size": config.content_size, "style_size": config.style_size, "format": config.format,
        "quality": config.quality, "preserve_color": config.preserve_color,
        "styles": f"{len(styles)} files, {_digest(styles)}",
        "vgg": params_digest(vgg_params), "decoder": params_digest(decoder_params),
    }


def check_settings(output_dir: Path, current: dict) -> None:
    """Refuses to continue a run made with other settings, naming each difference.

    Raises:
      ConfigError: ``stylize_settings.json`` holds other values (or cannot be read).
    """
    path = output_dir / SETTINGS
    if not path.is_file():
        if (output_dir / MANIFEST).exists() or any(output_dir.glob(_PART_GLOB)):
            raise ConfigError(f"{output_dir} holds a manifest but no {SETTINGS}; pass --overwrite to redo it")
        return
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read {path} ({err}); pass --overwrite to start over") from None
    if not isinstance(stored, dict):
        raise ConfigError(f"{path} is not a settings object; pass --overwrite to start over")
    differ = [f"{k} {stored.get(k)!r} -> {v!r}" for k, v in current.items() if stored.get(k) != v]
    if differ:
        raise ConfigError(f"{output_dir} holds a run with other settings ({'; '.join(differ)}); use the same "
                          "settings to resume, another --output-dir, or --overwrite to redo it")


def read_manifest(path: Path) -> list[dict]:
    """Entries of one manifest file; a damaged line (a run killed mid-write) is ignored."""
    entries = []
    try:
        with path.open("rb") as f:
            for line in f:
                if len(line) > _MAX_MANIFEST_LINE:
                    continue
                try:
                    entry = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("output"), str):
                    entries.append(entry)
    except FileNotFoundError:
        pass
    return entries


def _manifests(output_dir: Path) -> list[Path]:
    return [output_dir / MANIFEST] + sorted(output_dir.glob(_PART_GLOB))


def finished(output_dir: Path) -> dict[str, dict]:
    """Outputs recorded in any manifest of ``output_dir`` whose file exists, keyed by output path."""
    done = {}
    for path in _manifests(output_dir):
        for entry in read_manifest(path):
            if (output_dir / entry["output"]).is_file():
                done[entry["output"]] = entry
    return done


def merge_manifests(output_dir: Path) -> int:
    """Writes the union of all manifests as ``manifest.jsonl`` (sorted by output) and drops the parts.

    Returns:
      The number of entries in the merged manifest.
    """
    merged = finished(output_dir)
    text = "".join(json.dumps(merged[k], sort_keys=True) + "\n" for k in sorted(merged))
    files.atomic_write_text(output_dir / MANIFEST, text)
    for part in output_dir.glob(_PART_GLOB):
        part.unlink()
    return len(merged)


def _same_task(entry: dict | None, task: Task) -> bool:
    return entry is not None and (entry.get("content"), entry.get("style"), entry.get("k")) == \
        (task.content, task.style, task.k)


def _clear(output_dir: Path) -> None:
    for path in _manifests(output_dir) + [output_dir / SETTINGS]:
        path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# The compiled computation


def _stylize_batch(vgg_params: Params, decoder_params: Params, content: jax.Array, style_mean: jax.Array,
                   style_std: jax.Array, alpha: jax.Array) -> jax.Array:
    """AdaIN (report eq. 8, 11) with precomputed style statistics (B, 1, 1, C); uint8 out.

    The same computation as :func:`nst_jax.adain.stylize` in its plain mode, taking the style's
    mean and std instead of its image so that they are computed once per style.
    """
    c_feat = adain.encode(vgg_params, content)[adain.ENCODER_LAYER]
    c_mean, c_std = losses.mean_std(c_feat)
    t = (c_feat - c_mean) / c_std * style_std + style_mean
    feat = alpha * t + (1.0 - alpha) * c_feat
    h, w = content.shape[1:3]
    out = jnp.clip(adain.decode(decoder_params, feat)[:, :h, :w, :], 0.0, 1.0)
    return jnp.round(out * 255.0).astype(jnp.uint8)


def _style_stats(vgg_params: Params, style: jax.Array) -> tuple[jax.Array, jax.Array]:
    return losses.mean_std(adain.encode(vgg_params, style)[adain.ENCODER_LAYER])


def _recolored_stats(vgg_params: Params, content: jax.Array, style: jax.Array) -> tuple[jax.Array, jax.Array]:
    return _style_stats(vgg_params, adain.preserve_color(content, style))


_stylize_jit = jax.jit(_stylize_batch)
_style_stats_jit = jax.jit(_style_stats)
_recolored_stats_jit = jax.jit(_recolored_stats)


def batch_size_for(hw: tuple[int, int], config: DatasetConfig, vgg_params: Params, decoder_params: Params,
                   num_devices: int) -> int:
    """Images per compiled call for images of size ``hw``: ``batch_size`` within ``max_memory``.

    Rounded up to a multiple of ``num_devices`` so the batch splits evenly over the devices.

    Raises:
      MemoryBudgetError: one image of this size alone exceeds ``max_memory``.
    """
    batch = config.batch_size
    if config.max_memory is not None:
        budget = config.max_memory * 2**30 * num_devices
        one = memory.adain_bytes(hw, [], vgg_params, decoder_params)
        if one > config.max_memory * 2**30:
            raise MemoryBudgetError(f"one {hw[1]}x{hw[0]} px image needs about {one / 2**30:.2f} GiB, more "
                                    f"than --max-memory {config.max_memory:g}; lower --content-size")
        batch = max(1, min(batch, int(budget // one)))
    return -(-batch // num_devices) * num_devices


def padded_batch(n: int, size: int, num_devices: int) -> int:
    """The batch that ``n`` images of one size are stylized in: ``size`` when full, else the smallest
    power-of-two multiple of ``num_devices`` that holds them (capped at ``size``)."""
    batch = num_devices
    while batch < n:
        batch *= 2
    return min(batch, size)


# ----------------------------------------------------------------------------------------------
# Decoding (grain)


class _DecodedContent(NamedTuple):
    index: int
    pixels: np.ndarray  # (H, W, 3) uint8, or (0, 0, 3) when ``error`` is set
    error: str


class FolderReader:
    """Reads content ``i`` of a folder: the bytes of ``root / names[i]``. Picklable."""

    def __init__(self, root: str, names: Sequence[str]):
        self.root = root
        self.names = tuple(names)

    def __call__(self, i: int) -> bytes:
        return (Path(self.root) / self.names[i]).read_bytes()


class TfdsReader:
    """Reads content ``i`` of a TFDS split: the image feature of record ``i``, not decoded."""

    def __init__(self, source: data.TfdsImageSource):
        self.source = source

    def __call__(self, i: int) -> bytes | np.ndarray:
        return self.source.record(i)


_TFDS_EXTENSIONS = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png"}


def tfds_names(split: str, count: int, encoding_format: str | None) -> tuple[str, ...]:
    """Relative names of the records of a TFDS split: ``<split>/<index>.<ext>``, index zero-padded.

    The padding makes the sorted names the record order; the extension follows the feature's
    encoding (``.png`` when the images are stored as arrays), so ``--format same`` keeps it.
    """
    width = len(str(max(count - 1, 0)))
    ext = _TFDS_EXTENSIONS.get((encoding_format or "").lower(), ".png")
    folder = split.replace("/", "_").replace("[", "(").replace("]", ")")
    return tuple(f"{folder}/{i:0{width}d}{ext}" for i in range(count))


def open_contents(config: DatasetConfig) -> tuple[tuple[str, ...], Callable[[int], bytes | np.ndarray]]:
    """The content names (sorted; they key the pairing and the outputs) and a reader of content ``i``.

    Raises:
      InputImageError: the content folder is missing or empty, or the TFDS split is empty.
      ConfigError: the TFDS dataset cannot be opened (see :class:`nst_jax.data.TfdsImageSource`).
    """
    if config.content_tfds is None:
        names = list_files(config.content_dir, config.extensions, "content")
        return names, FolderReader(config.content_dir, names)
    source = data.TfdsImageSource(config.content_tfds, config.content_size, 0, data_dir=config.tfds_data_dir,
                                  image_key=config.tfds_image_key)
    return tfds_names(source.split, len(source), source.encoding_format), TfdsReader(source)


class ContentSource:
    """Random-access source for grain: item ``j`` is content ``indices[j]`` decoded and resized.

    Failures are returned, not raised, so one bad file never stops the run.
    """

    def __init__(self, read: Callable[[int], bytes | np.ndarray], indices: Sequence[int], content_size: int):
        self.read = read
        self.indices = tuple(indices)
        self.content_size = content_size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> _DecodedContent:
        i = self.indices[j]
        empty = np.zeros((0, 0, 3), np.uint8)
        try:
            pixels = data.decode_and_fit(self.read(i), self.content_size, 0)
        except data._DECODE_ERRORS as err:  # noqa: SLF001 - the pipeline's shared list of decode failures
            why = "not an image of a readable format" if "BytesIO" in str(err) else _one_line(err)
            return _DecodedContent(i, empty, f"unreadable ({why})")
        if min(pixels.shape[:2]) < adain.MIN_IMAGE_SIZE:
            return _DecodedContent(i, empty, f"too small ({pixels.shape[1]}x{pixels.shape[0]} px; AdaIN needs "
                                             f"{adain.MIN_IMAGE_SIZE} px per side)")
        return _DecodedContent(i, pixels, "")


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def decoded(source: ContentSource, num_threads: int) -> Iterator[_DecodedContent]:
    """Decoded contents in order, read ahead by ``num_threads`` grain threads."""
    if num_threads <= 0:
        yield from (source[j] for j in range(len(source)))
        return
    grain = data._grain()  # noqa: SLF001 - the one place that imports grain and sets up its flags
    ds = grain.MapDataset.source(source).to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads))
    it = iter(ds)
    try:
        yield from it
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def load_style(path: Path, style_size: int) -> np.ndarray:
    """A style image as (1, H, W, 3) float32, short side ``style_size`` (0 keeps)."""
    pixels = image.load_image(path, "style image")
    if style_size:
        pixels = image.resize(pixels, short_side=style_size)
    return pixels[None]


# ----------------------------------------------------------------------------------------------
# The run


@dataclasses.dataclass
class Progress:
    """Counts so far, given to the progress callback after every batch."""

    done: int = 0          # written in this run
    skipped: int = 0       # finished by an earlier run
    failed: int = 0        # outputs not made (their content or style could not be used)
    total: int = 0         # outputs of this process
    seconds: float = 0.0


@dataclasses.dataclass
class Summary:
    """What a run did on this process."""

    progress: Progress
    failures: list[tuple[str, str]]  # (file, reason)
    interrupted: bool
    merged: int | None  # entries in manifest.jsonl when this process merged, else None
    decode_seconds: float = 0.0
    stylize_seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.progress.done / self.progress.seconds if self.progress.seconds > 0 else 0.0


class _Writer:
    """Saves a batch's images and then appends their manifest entries (flushed and synced)."""

    def __init__(self, config: DatasetConfig, info: distributed.ProcessInfo):
        self.config = config
        self.out = Path(config.output_dir)
        self.part = self.out / _PART.format(info.index)
        self.made: set[Path] = set()

    def write(self, items: Sequence[tuple[Task, np.ndarray]]) -> None:
        lines = []
        for task, pixels in items:
            path = self.out / task.output
            if path.parent not in self.made:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.made.add(path.parent)
            image.save_image(path, pixels.astype(np.float32) / 255.0, quality=self.config.quality)
            lines.append(json.dumps({"content": task.content, "style": task.style, "k": task.k,
                                     "alpha": self.config.alpha, "seed": self.config.seed,
                                     "output": task.output}, sort_keys=True) + "\n")
        with self.part.open("a", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())


def run(config: DatasetConfig, vgg_params: Params, decoder_params: Params, *,
        info: distributed.ProcessInfo = distributed.ProcessInfo(),
        progress: Callable[[Progress], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        merge_timeout_s: float = 24 * 3600.0) -> Summary:
    """Stylizes this process's share of ``config.content_dir`` into ``config.output_dir``.

    Args:
      config: the settings (checked here).
      vgg_params, decoder_params: AdaIN encoder and decoder (:func:`nst_jax.adain.check_compatible`).
      info: this process among all (from :func:`nst_jax.distributed.initialize`).
      progress: called after every batch with the counts so far.
      should_stop: polled after every batch; when true the run stops there, its manifest complete.
      merge_timeout_s: how long process 0 waits for the others before merging the manifests.

    Returns:
      A :class:`Summary`.

    Raises:
      InputImageError: a folder is missing or holds no image.
      OutputPathError: the output folder overlaps an input folder or cannot be written.
      ConfigError: bad settings, or an output folder holding a run with other settings.
    """
    t_start = time.perf_counter()
    check_config(config)
    adain.check_compatible(vgg_params, decoder_params)
    check_folders(config)
    contents, read = open_contents(config)
    styles = list_files(config.style_dir, config.extensions, "style")
    tasks = plan(contents, styles, num_styles=config.num_styles, seed=config.seed, fmt=config.format)
    current = settings(config, styles, vgg_params, decoder_params)
    # Processes that see other files or flags would split the work inconsistently.
    distributed.agree("settings", json.dumps(current, sort_keys=True), info, flag="settings")
    distributed.agree("contents", _digest(contents), info, flag="content file list")
    out = Path(config.output_dir)
    if config.overwrite:
        if info.is_main and out.is_dir():
            _clear(out)
        distributed.barrier("cleared", info, timeout_s=600)
    else:
        check_settings(out, current)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputPathError(f"cannot create --output-dir {out} ({err.strerror or err}); choose another") from None
    if info.is_main:
        files.atomic_write_text(out / SETTINGS, json.dumps(current, indent=1, sort_keys=True) + "\n")

    done = {} if config.overwrite else finished(out)
    mine = share(len(contents), info)
    todo: dict[int, list[Task]] = {}
    stats = Progress()
    for i in mine:
        stats.total += len(tasks[i])
        # An output counts as finished only for the same pair: another content folder (or TFDS
        # split) written into this folder earlier is redone, not mistaken for this run's image.
        left = [t for t in tasks[i] if not _same_task(done.get(t.output), t)]
        stats.skipped += len(tasks[i]) - len(left)
        if left:
            todo[i] = left

    devices = jax.local_devices()
    mesh = Mesh(np.array(devices), (_DATA_AXIS,))
    replicated = NamedSharding(mesh, PartitionSpec())
    batched = NamedSharding(mesh, PartitionSpec(_DATA_AXIS))
    vgg_dev = jax.device_put(vgg_params, replicated)
    dec_dev = jax.device_put(decoder_params, replicated)
    alpha = jax.device_put(jnp.float32(config.alpha), replicated)
    style_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    style_pixels: dict[str, np.ndarray] = {}
    failures: list[tuple[str, str]] = []
    bad_styles: dict[str, str] = {}
    writer = _Writer(config, info)
    summary = Summary(stats, failures, interrupted=False, merged=None)

    def style_image(name: str) -> np.ndarray:
        if name not in style_pixels:
            style_pixels[name] = load_style(Path(config.style_dir) / name, config.style_size)
        return style_pixels[name]

    def stats_for(task: Task, content: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if config.preserve_color:
            m, s = _recolored_stats_jit(vgg_dev, jnp.asarray(content[None], jnp.float32) / 255.0,
                                        style_image(task.style))
            return np.asarray(m[0]), np.asarray(s[0])
        if task.style not in style_cache:
            m, s = _style_stats_jit(vgg_dev, style_image(task.style))
            style_cache[task.style] = (np.asarray(m[0]), np.asarray(s[0]))
        return style_cache[task.style]

    def reported_and_stopped() -> bool:
        """Reports progress; True (and the summary marked interrupted) when a stop was asked for."""
        stats.seconds = time.perf_counter() - t_start
        if progress is not None:
            progress(stats)
        summary.interrupted = bool(should_stop())
        return summary.interrupted

    def flush(items: list[tuple[Task, np.ndarray]]) -> None:
        usable, means, stds = [], [], []
        for task, pixels in items:
            if task.style in bad_styles:
                failures.append((task.content, bad_styles[task.style]))
                stats.failed += 1
                continue
            try:
                m, s = stats_for(task, pixels)
            except InputImageError as err:
                bad_styles[task.style] = f"style {task.style}: {err}"
                failures.append((task.content, bad_styles[task.style]))
                stats.failed += 1
                continue
            usable.append((task, pixels))
            means.append(m)
            stds.append(s)
        if not usable:
            return
        hw = usable[0][1].shape[:2]
        size = batch_size_for(hw, config, vgg_params, decoder_params, len(devices))
        for lo in range(0, len(usable), size):
            chunk = slice(lo, lo + size)
            n = len(usable[chunk])
            # Pad with copies of the first image (their outputs are dropped) to a padded_batch():
            # at most twice the work, and at most log2(size) programs per image size.
            fill = [0] * (padded_batch(n, size, len(devices)) - n)
            content = np.stack([p for _, p in usable[chunk]] + [usable[lo][1]] * len(fill))
            mean = np.stack(means[chunk] + [means[lo]] * len(fill))
            std = np.stack(stds[chunk] + [stds[lo]] * len(fill))
            t0 = time.perf_counter()
            result = _stylize_jit(vgg_dev, dec_dev,
                                  jax.device_put(content.astype(np.float32) / 255.0, batched),
                                  jax.device_put(mean, batched), jax.device_put(std, batched), alpha)
            result = np.asarray(result)[:n]
            summary.stylize_seconds += time.perf_counter() - t0
            writer.write(list(zip([t for t, _ in usable[chunk]], result)))
            stats.done += n

    pending: dict[tuple[int, int], list[tuple[Task, np.ndarray]]] = {}
    # Bounds the images held while waiting for their size's batch to fill: the fullest waiting
    # size is stylized early (as a padded batch) when more than this many are held.
    cap = max(4 * config.batch_size, 64)
    held = 0
    order = sorted(todo)
    source = ContentSource(read, order, config.content_size)
    stream = decoded(source, config.num_threads)
    try:
        t_decode = time.perf_counter()
        for item in stream:
            summary.decode_seconds += time.perf_counter() - t_decode
            group = todo[item.index]
            if item.error:
                failures.append((contents[item.index], item.error))
                stats.failed += len(group)
            else:
                key = item.pixels.shape[:2]
                bucket = pending.setdefault(key, [])
                bucket += [(t, item.pixels) for t in group]
                held += len(group)
                ready = key if len(bucket) >= config.batch_size else (
                    max(pending, key=lambda k: len(pending[k])) if held > cap else None)
                if ready is not None:
                    items = pending.pop(ready)
                    held -= len(items)
                    flush(items)
            if reported_and_stopped():
                break
            t_decode = time.perf_counter()
        if not summary.interrupted:
            for key in sorted(pending):
                flush(pending[key])
                if reported_and_stopped():
                    break
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    stats.seconds = time.perf_counter() - t_start
    if not summary.interrupted:
        distributed.barrier("finished", info, timeout_s=merge_timeout_s)
        if info.is_main:
            summary.merged = merge_manifests(out)
    return summary


__all__ = [
    "DEFAULT_EXTENSIONS", "FORMATS", "MANIFEST", "SETTINGS", "ContentSource", "DatasetConfig", "FolderReader",
    "Progress", "Summary", "Task", "TfdsReader", "batch_size_for", "check_config", "check_folders",
    "check_settings", "decoded", "finished", "list_files", "load_style", "merge_manifests", "open_contents",
    "output_name", "padded_batch", "params_digest", "plan", "read_manifest", "run", "settings", "share",
    "style_index", "tfds_names",
]


if __name__ == "__main__":
    from nst_jax.cli.dataset import console

    console()
