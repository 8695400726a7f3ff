"""``nst-adain`` (also ``python -m nst_jax.adain``): AdaIN style transfer (Huang & Belongie 2017) from the shell.

Every content image is stylized with every style image (or with all styles blended, or split by a
mask) and written to a file or a folder; a folder with several results also gets ``grid.png``. The
flags are generated (:func:`nst_jax.cli.build_parser`) from :class:`nst_jax.adain.AdainConfig` and
:class:`AdainOptions`. ``--size`` and ``--style-size`` are image HEIGHTS, as for ``nst-gatys``.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from nst_jax import adain, cli, compile_cache, memory, weights
from nst_jax.cli import video as cli_video
from nst_jax import image as image_io
from nst_jax.adain import ENCODER_LAYER, MIN_IMAGE_SIZE, AdainConfig, Params
from nst_jax.errors import ConfigError, InputImageError, MemoryBudgetError, OutputPathError, normalized_weights

PROG = "nst-adain"
GRID_NAME = "grid.png"
GRID_CELL = 256  # largest height in pixels of one cell of grid.png
DEFAULT_OUTPUT = "output"

option = cli.option


@dataclasses.dataclass(frozen=True)
class AdainOptions:
    """What only the command line has: files, modes, weights paths, the memory budget."""

    content: str | None = option(None, "content image file or folder", group="images",
                                 default_help="the built-in photo")
    style: tuple[str, ...] | None = option(None, "style image file(s) or folder(s)", group="images", split=False,
                                           default_help="the built-in painting")
    output: str | None = option(
        None, "output image file (one result) or folder; a folder gets CONTENT_stylized_STYLE.png per pair, "
        "CONTENT_stylized_A-0.25_B-0.75.png for blended styles (normalized weights), "
        f"CONTENT_stylized_A_B_mask-MASK.png with --mask, and {GRID_NAME} when there are several results",
        group="images", short="-o", metavar="PATH", default_help=f"folder '{DEFAULT_OUTPUT}'")
    style_interpolation_weights: tuple[float, ...] | None = option(
        None, "blend all styles into one image per content, one weight >= 0 per style (normalized to sum 1)",
        group="style", min=">=0")
    mask: str | None = option(None, "foreground mask image: white takes the first style, black the second; "
                              "needs exactly two styles", group="style", metavar="PATH")
    vgg: str | None = option(None, "vgg_normalised encoder .pth or .npz", group="system", metavar="PATH",
                             default_help="cached or downloaded")
    decoder: str | None = option(None, "decoder .pth or .npz saved by nst_jax", group="system", metavar="PATH",
                                 default_help="cached or downloaded")
    max_memory: float | None = option(None, "memory budget in GiB: larger jobs are refused before they start",
                                      group="system", min=">0", default_help="the device's memory")
    no_progress: bool = option(False, "no progress bar", group="system")


GROUPS = (("images", "images"), ("style", "style"), ("system", "system"))


def build_parser() -> cli.ArgumentParser:
    """The ``nst-adain`` parser, generated from :class:`AdainOptions` and :class:`AdainConfig`."""
    return cli.build_parser(
        PROG, "Arbitrary style transfer with AdaIN (Huang & Belongie 2017): every content image is stylized "
              "with every style image in one forward pass.",
        [(AdainOptions, ()), (AdainConfig, ()), (cli_video.AdainVideoOptions, ())],
        groups=GROUPS + (cli_video.GROUP,))


@dataclasses.dataclass(frozen=True)
class Job:
    """One output image: a content, its style(s) and where the result goes."""

    content: pathlib.Path
    styles: tuple[pathlib.Path, ...]  # one style, or all of them for interpolation / mask
    output: pathlib.Path


def _expand(paths: Sequence[str], what: str) -> list[pathlib.Path]:
    found: list[pathlib.Path] = []
    for raw in paths:
        path = pathlib.Path(raw)
        if path.is_dir():
            images = image_io.list_images(path)
            if not images:
                raise InputImageError(f"no images in the {what} folder {path}; add "
                                      f"{', '.join(image_io.IMAGE_EXTENSIONS)} files or pass a file")
            found += images
        elif not path.exists():
            raise InputImageError(f"{what} not found: {path}; check the path")
        else:
            found.append(path)
    return found


def _unique(path: pathlib.Path, taken: set[pathlib.Path]) -> pathlib.Path:
    # Contents from nested folders can share a file name; never let one output overwrite another.
    candidate, n = path, 2
    while candidate in taken:
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
        n += 1
    taken.add(candidate)
    return candidate


def output_name(content: pathlib.Path, styles: Sequence[pathlib.Path], *,
                interpolation_weights: Sequence[float] | None = None, mask: str | None = None) -> str:
    """The file name of one result in an output folder; it encodes the mode, so modes never collide.

    ``c_stylized_s.png`` (one style), ``c_stylized_a-0.25_b-0.75.png`` (styles blended with these
    normalized weights), ``c_stylized_a_b_mask-m.png`` (styles split by the mask ``m``).
    """
    if interpolation_weights is not None:
        styles_part = "_".join(f"{s.stem}-{w:.4g}" for s, w in zip(styles, interpolation_weights))
    else:
        styles_part = "_".join(s.stem for s in styles)
    mask_part = f"_mask-{pathlib.Path(mask).stem}" if mask is not None else ""
    return f"{content.stem}_stylized_{styles_part}{mask_part}.png"


def _plan(contents, styles, output: str | None, *, interpolation_weights: Sequence[float] | None = None,
          mask: str | None = None) -> tuple[list[Job], pathlib.Path | None]:
    """Returns the jobs and the folder for grid.png (None for a single file)."""
    combined = interpolation_weights is not None or mask is not None
    groups = [tuple(styles)] if combined else [(s,) for s in styles]
    n = len(contents) * len(groups)
    out = pathlib.Path(output) if output is not None else pathlib.Path(DEFAULT_OUTPUT)
    if out.suffix and not out.is_dir():
        if n != 1:
            raise ConfigError(f"--output {out} is one file but {n} images will be written; pass a folder")
        image_io.check_output_path(out)
        return [Job(contents[0], groups[0], out)], None
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"--output {out} exists and is not a folder; pass a folder or an "
                              "image file name")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputPathError(f"cannot create the output folder {out} ({err.strerror}); choose "
                              "another --output") from None
    taken: set[pathlib.Path] = set()
    jobs = [Job(c, g, _unique(out / output_name(c, g, interpolation_weights=interpolation_weights, mask=mask),
                              taken))
            for c in contents for g in groups]
    image_io.check_output_path(jobs[0].output)  # writable, before any work
    return jobs, out


def _check_outputs(jobs: Sequence[Job], grid_dir: pathlib.Path | None, contents: Sequence[pathlib.Path],
                   styles: Sequence[pathlib.Path], mask: str | None) -> None:
    """Refuses a run where an output (or grid.png) would land on a content, style or mask file."""
    outputs = [("--output", job.output) for job in jobs]
    if grid_dir is not None and len(jobs) > 1:
        outputs.append(("--output (its grid)", grid_dir / GRID_NAME))
    cli.refuse_overwriting_inputs(outputs, [("content image", c) for c in contents]
                                  + [("style image", s) for s in styles] + [("mask image", mask)])


def _download_progress(what: str, enabled: bool):
    bar = None

    def progress(done: int, total: int | None) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {what}",
                       disable=None if enabled else True, file=sys.stderr)
        bar.update(done - bar.n)
        if total is not None and done >= total:
            bar.close()

    return progress


def _load_weights(vgg_path: str | None, decoder_path: str | None, progress: bool) -> tuple[Params, Params]:
    # An explicit path never touches the network; otherwise the cache, else a download whose
    # failure message names the URL, the cache folder and what to pass instead.
    vgg_params = weights.resolve_weights("adain_vgg", vgg_path, progress=_download_progress("encoder", progress))
    decoder_params = weights.resolve_weights("adain_decoder", decoder_path,
                                             progress=_download_progress("decoder", progress))
    adain.check_compatible(vgg_params, decoder_params)
    return vgg_params, decoder_params


def _target_hw(hw: tuple[int, int], height: int) -> tuple[int, int]:
    """The size an image of ``hw`` is resized to for ``--size``/``--style-size`` (a height; 0 keeps)."""
    return hw if height == 0 else image_io.size_for_height(hw[0], hw[1], height)


def _sized(img: np.ndarray, height: int) -> np.ndarray:
    return img if height == 0 else image_io.resize(img, height=height)


def _decode_hw(path: pathlib.Path, height: int) -> tuple[int, int] | None:
    """The size an input is resized to (from its header), so a JPEG can be decoded near it."""
    return None if height == 0 else _target_hw(image_io.image_size(path), height)


def _largest_content_hw(config: AdainConfig, jobs: Sequence[Job]) -> tuple[int, int] | None:
    sizes = [_decode_hw(c, config.size) for c in dict.fromkeys(job.content for job in jobs)]
    if not sizes or None in sizes:
        return None
    return max(h for h, _ in sizes), max(w for _, w in sizes)


def _thumb(img: np.ndarray, height: int = GRID_CELL) -> np.ndarray:
    return image_io.resize(img, height=min(height, img.shape[0]))


def _side_by_side(tiles: Sequence[np.ndarray], gutter: int = 4) -> np.ndarray:
    """Tiles scaled to one height and joined left to right on white (the header of a blended column)."""
    height = min(t.shape[0] for t in tiles)
    tiles = [image_io.resize(t, height=height) for t in tiles]
    out = np.ones((height, sum(t.shape[1] for t in tiles) + gutter * (len(tiles) - 1), 3), np.float32)
    x = 0
    for t in tiles:
        out[:, x:x + t.shape[1]] = t
        x += t.shape[1] + gutter
    return out


def _grid(rows: list[np.ndarray], cols: list[np.ndarray], cells: dict[tuple[int, int], np.ndarray],
          gutter: int = 4) -> np.ndarray:
    """Contents as rows and styles as columns, headed by the originals, on white.

    Every tile is scaled to the tallest result's height (at most GRID_CELL); columns take the
    width of their widest tile.
    """
    height = max(t.shape[0] for t in cells.values())
    rows = [image_io.resize(r, height=height) for r in rows]
    cols = [image_io.resize(c, height=height) for c in cols]
    cells = {k: image_io.resize(t, height=height) for k, t in cells.items()}
    col_w = [max(r.shape[1] for r in rows)] + [
        max([c.shape[1]] + [cells[(i, j)].shape[1] for i in range(len(rows)) if (i, j) in cells])
        for j, c in enumerate(cols)]
    out = np.ones((gutter + (len(rows) + 1) * (height + gutter), gutter + sum(col_w) + gutter * len(col_w),
                   3), np.float32)

    def put(i: int, j: int, tile: np.ndarray) -> None:
        y = gutter + i * (height + gutter)
        x = gutter + sum(col_w[:j]) + gutter * j
        out[y:y + tile.shape[0], x:x + tile.shape[1]] = tile

    for j, c in enumerate(cols):
        put(0, j + 1, c)
    for i, r in enumerate(rows):
        put(i + 1, 0, r)
    for (i, j), tile in cells.items():
        put(i + 1, j + 1, tile)
    return out


def run(config: AdainConfig, jobs: Sequence[Job], grid_dir: pathlib.Path | None, vgg_params: Params,
        decoder_params: Params, *, interpolation_weights: Sequence[float] | None = None,
        mask: np.ndarray | None = None, progress: bool | None = None,
        done: list[pathlib.Path] | None = None) -> list[pathlib.Path]:
    """Stylizes every job and writes its image (and grid.png); returns the paths written.

    Jobs are expected in content-major order (as :func:`_plan` makes them): each content image is
    loaded once, style images are kept in memory for all contents.

    Args:
      config: sizes, alpha and colour settings.
      jobs: what to write, from the planning step.
      grid_dir: folder for grid.png, or None for no grid.
      vgg_params, decoder_params: the encoder and decoder.
      interpolation_weights: one weight per style of each job (style interpolation).
      mask: (H, W) foreground mask in [0, 1] (spatial control; two styles per job).
      progress: show a tqdm bar; None shows it when stderr is a terminal.
      done: receives each path as soon as it is written, so a caller interrupted with Ctrl-C knows
        what finished.
    """
    written = done if done is not None else []
    styles_in: dict[pathlib.Path, np.ndarray] = {}
    content_thumbs: dict[pathlib.Path, np.ndarray] = {}
    style_thumbs: dict[pathlib.Path, np.ndarray] = {}
    cells: dict[tuple[pathlib.Path, tuple[pathlib.Path, ...]], np.ndarray] = {}
    weights_arr = None if interpolation_weights is None else jnp.asarray(interpolation_weights, jnp.float32)
    mask_arr = None if mask is None else jnp.asarray(mask, jnp.float32)
    current: tuple[pathlib.Path | None, np.ndarray | None] = (None, None)
    with tqdm(total=len(jobs), unit="image", disable=None if progress is None else not progress,
              file=sys.stderr) as bar:
        for job in jobs:
            if current[0] != job.content:
                content = _sized(image_io.load_image(job.content, "content image",
                                                     min_size=_decode_hw(job.content, config.size)),
                                 config.size)
                image_io.check_min_size(content, MIN_IMAGE_SIZE, "content image", ENCODER_LAYER, "--size")
                current = (job.content, content)
                if grid_dir is not None:
                    content_thumbs[job.content] = _thumb(content)
            content = current[1]
            styles = []
            for path in job.styles:
                if path not in styles_in:
                    # Sampled at --style-size, or at every content's size, and as a grid thumbnail.
                    need = (_decode_hw(path, config.style_size) if config.style_size is not None
                            else _largest_content_hw(config, jobs))
                    if need is not None and grid_dir is not None:
                        need = (max(need[0], GRID_CELL), need[1])
                    original = image_io.load_image(path, "style image", min_size=need)
                    if grid_dir is not None:
                        style_thumbs[path] = _thumb(original)
                    # Keep the resized style when its size does not depend on the content.
                    styles_in[path] = (original if config.style_size is None
                                       else _sized(original, config.style_size))
                style = styles_in[path]
                if config.style_size is None:  # the report resizes the style to the content (Sec. VI-C)
                    style = image_io.resize(style, height=content.shape[0], width=content.shape[1])
                image_io.check_min_size(style, MIN_IMAGE_SIZE, f"style image {path.name}", ENCODER_LAYER,
                                        "--style-size")
                styles.append(jnp.asarray(style)[None])
            # adain.stylize_jit is looked up per call: tests replace it.
            result = adain.stylize_jit(vgg_params, decoder_params, jnp.asarray(content)[None], styles,
                                       config.alpha, interpolation_weights=weights_arr, content_mask=mask_arr,
                                       preserve_color=config.preserve_color, color_mode=config.color_transform)
            result = np.asarray(result[0])
            image_io.save_image(job.output, result)
            written.append(job.output)
            if grid_dir is not None:
                cells[(job.content, job.styles)] = _thumb(result)
            bar.update(1)
    if grid_dir is not None and len(jobs) > 1:
        # Columns are the style groups: one style each, or the blended / masked styles side by side.
        contents = list(content_thumbs)
        columns = list(dict.fromkeys(group for _, group in cells))
        headers = [style_thumbs[g[0]] if len(g) == 1 else _side_by_side([style_thumbs[s] for s in g])
                   for g in columns]
        grid = _grid([content_thumbs[c] for c in contents], headers,
                     {(contents.index(c), columns.index(g)): t for (c, g), t in cells.items()})
        written.append(image_io.save_image(grid_dir / GRID_NAME, grid))
    return written


def check_memory(config: AdainConfig, jobs: Sequence[Job], vgg_params: Params, decoder_params: Params,
                 budget_bytes: int) -> None:
    """Refuses, before any stylization, a job whose memory estimate exceeds the budget.

    Reads the image sizes with :func:`nst_jax.image.image_size` (headers, not pixels, for most
    formats), so missing and non-image inputs are reported here too, before any work.

    Raises:
      MemoryBudgetError: the largest job needs more than ``budget_bytes``.
      InputImageError: an input is missing or not an image.
    """
    headers: dict[pathlib.Path, tuple[int, int]] = {}

    def size_of(path: pathlib.Path, what: str) -> tuple[int, int]:
        if path not in headers:
            headers[path] = image_io.image_size(path, what)
        return headers[path]

    worst = (0, None, (0, 0))
    for job in jobs:
        content_hw = _target_hw(size_of(job.content, "content image"), config.size)
        style_hws = []
        for s in job.styles:
            hw = size_of(s, "style image")
            # Without --style-size the style is resized to the content (run() does the same).
            style_hws.append(content_hw if config.style_size is None else _target_hw(hw, config.style_size))
        need = memory.adain_bytes(content_hw, style_hws, vgg_params, decoder_params)
        worst = max(worst, (need, job.content, content_hw), key=lambda t: t[0])
    need, path, (h, w) = worst
    if need > budget_bytes:
        raise MemoryBudgetError(
            f"stylizing {path.name} at {w}x{h} px needs about {need / 2**30:.1f} GiB but "
            f"{budget_bytes / 2**30:.1f} GiB are available; lower --size (and --style-size), or "
            "raise --max-memory if you know better")


def _memory_budget(max_memory: float | None) -> int:
    if max_memory is not None:
        return int(max_memory * 2**30)
    return memory.available_bytes()


def _load_mask(path: str) -> np.ndarray:
    rgb = image_io.load_image(path, "mask image")
    return rgb.mean(axis=-1)  # gray; stylize takes >= 0.5 as foreground


def _main(argv: Sequence[str] | None, done: list[pathlib.Path]) -> int:
    parser = build_parser()
    parser.set_defaults(size=None)  # tells a given --size from the default: a clip keeps its own height
    args = parser.parse_args(argv)
    compile_cache.enable()  # before the first compile; the library itself never sets it
    config = cli.from_args(AdainConfig, args, size=AdainConfig.size if args.size is None else args.size)
    styles = _expand(args.style, "style image") if args.style else [image_io.default_style_path()]
    wts = args.style_interpolation_weights
    if wts is not None and args.mask is not None:
        raise ConfigError("--style-interpolation-weights and --mask cannot be combined; pass one of them")
    if wts is not None:
        if len(wts) != len(styles):
            raise ConfigError(f"got {len(wts)} --style-interpolation-weights for {len(styles)} "
                              "style images; give one weight per style")
        wts = list(normalized_weights(wts, "--style-interpolation-weights"))  # as the official scripts do
    mask = None
    if args.mask is not None:
        if len(styles) != 2:
            raise ConfigError(f"--mask needs exactly two style images (foreground, background), "
                              f"got {len(styles)}")
        mask = _load_mask(args.mask)
    if cli_video.is_video_input(args):
        if mask is not None:
            raise ConfigError("--mask cannot be used with a video --content; drop it")
        vgg_params, decoder_params = _load_weights(args.vgg, args.decoder, not args.no_progress)
        return cli_video.adain(args, config, vgg_params, decoder_params, styles, wts, size=args.size)
    contents = (_expand([args.content], "content image") if args.content
                else [image_io.default_content_path()])
    jobs, grid_dir = _plan(contents, styles, args.output, interpolation_weights=wts, mask=args.mask)
    _check_outputs(jobs, grid_dir, contents, styles, args.mask)
    show = not args.no_progress
    vgg_params, decoder_params = _load_weights(args.vgg, args.decoder, show)
    check_memory(config, jobs, vgg_params, decoder_params, _memory_budget(args.max_memory))
    run(config, jobs, grid_dir, vgg_params, decoder_params, interpolation_weights=wts, mask=mask,
        progress=None if show else False, done=done)
    where = done[0].parent if done else ""
    print(f"wrote {len(done)} image(s) to {where}" if len(done) != 1 else f"wrote {done[0]}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``nst-adain``; returns the exit status (0, 2 on user errors, 130 when interrupted).

    On Ctrl-C the images already written are kept (and counted on stderr).
    """
    done: list[pathlib.Path] = []
    return cli.run_main(lambda a: _main(a, done), argv,
                        interrupted=lambda: f"interrupted: {len(done)} image(s) were written and kept",
                        weights_message=cli.weights_flags({"adain_vgg": "--vgg", "adain_decoder": "--decoder"}))


def console() -> None:
    """The ``nst-adain`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    console()
