"""``nst-gatys`` (also ``python -m nst_jax.gatys``): Gatys et al. (2016, 2017) style transfer from the shell.

The flags are generated (:func:`nst_jax.cli.build_parser`) from :class:`nst_jax.gatys.GatysConfig`
(the optimization's settings) and :class:`GatysOptions` (paths, sizes, loss weights, budgets);
the defaults of the loss weights and of ``--chunk`` are read from the library functions that own
them (:func:`nst_jax.gatys.loss_weights`, :func:`nst_jax.gatys.run`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
from tqdm import tqdm

from nst_jax import cli, compile_cache, files, gatys, guides, memory, multiscale, tiling, vgg
from nst_jax.cli import video as cli_video
from nst_jax import image as imageio
from nst_jax import weights as weights_mod
from nst_jax.errors import (
    ConfigError,
    InputImageError,
    MemoryBudgetError,
    NonFiniteLossError,
    OutputPathError,
    normalized_weights,
)
from nst_jax.gatys import GatysConfig

PROG = "nst-gatys"
DEFAULT_SIZE = 512
# Defaults owned by the library: the loss weights from loss_weights' signature.
_WEIGHTS = inspect.signature(gatys.loss_weights).parameters
_CHUNK = gatys.DEFAULT_CHUNK
_ITERATIONS = (f"{GatysConfig().iterations} at the first level, {multiscale.LATER_LEVEL_ITERATIONS} at later "
               "ones")


def _hex_color(text: str) -> tuple[float, float, float]:
    """Parses ``ff0000`` (``#`` optional) into an RGB triple in [0, 1] (an argparse type)."""
    item = text.strip().lstrip("#")
    if len(item) != 6 or any(ch not in "0123456789abcdefABCDEF" for ch in item):
        raise argparse.ArgumentTypeError(f"--mask-colors expects RRGGBB hex colours like ff0000, got {text!r}")
    return tuple(int(item[i:i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]


option = cli.option


@dataclasses.dataclass(frozen=True)
class GatysOptions:
    """What only the command line has: files, sizes, loss weights, budgets (GatysConfig has the rest)."""

    content: str | None = option(None, "content image", group="images", default_help="the built-in photo")
    style: tuple[str, ...] | None = option(None, "style image(s)", group="images", split=False,
                                           default_help="the built-in painting")
    output: str = option("stylized.png", "output image (.png, .jpg, .webp, .tif)", group="images", short="-o",
                         metavar="PATH")
    size: int | None = option(None, "output HEIGHT in pixels (aspect ratio kept); the style gets the same height "
                              "times --style-scale", group="images", min=">0", default_help=str(DEFAULT_SIZE))
    style_scale: float = option(1.0, "style height relative to --size", group="images", min=">0")
    bits: int = option(8, "bits per channel of a PNG output", group="images", choices=(8, 16))
    save_every: int = option(0, "also save the image every N iterations as OUTPUT_iterNNNNN.ext, e.g. "
                             "stylized_iter00010.png (0: never)", group="images", min=">=0")
    metrics_json: str | None = option(None, "write losses, timings and the config as JSON here", group="images",
                                      metavar="PATH")

    content_weight: float = option(_WEIGHTS["content"].default, "alpha, weight of the content loss", group="loss",
                                   min=">=0")
    style_weight: float = option(_WEIGHTS["style"].default, "beta, weight of the style loss", group="loss",
                                 min=">=0")
    tv_weight: float = option(_WEIGHTS["tv"].default, "weight of a total-variation smoothness loss", group="loss",
                              min=">=0")
    style_layer_weights: tuple[float, ...] | None = option(
        None, "one weight per style layer", group="loss", min=">=0", default_help="1/number of layers")
    style_blend_weights: tuple[float, ...] | None = option(
        None, "one weight per --style image", group="loss", min=">=0", default_help="equal")

    content_mask: tuple[str, ...] | None = option(
        None, "where each --style goes on the output: ONE label image over the content (gray levels, white = "
        "first style ... black = last; for two styles a threshold at mid-gray; or colours with --mask-colors), "
        "or one grayscale mask per style (white = this style)", group="space", split=False)
    mask_colors: tuple[tuple[float, float, float], ...] | None = option(
        None, "label colours (RRGGBB), one per style, for a colour-coded --content-mask", group="space",
        type=_hex_color, metavar="RRGGBB")
    style_mask: tuple[str, ...] | None = option(
        None, "one grayscale mask per --style image: only its white part defines that style", group="space",
        split=False)

    sizes: tuple[int, ...] | None = option(
        None, "output heights of successive levels, e.g. 512,1024; each level starts from the previous result "
        "upsampled, with content and style resampled from the source files", group="scale", min=">0")
    multiscale: bool = option(False, "choose the levels from --size: halve it down to about 256 "
                              "(1024 -> 256,512,1024)", group="scale")

    iterations: tuple[int, ...] | None = option(
        None, "iterations, one number for every level or one per --sizes level", group="optimization",
        min=">=0", default_help=_ITERATIONS)
    init_image: str | None = option(None, "starting image for --init image", group="optimization", metavar="PATH")
    seed: int = option(0, "seed of the init noise", group="optimization")
    chunk: int = option(_CHUNK, "iterations per compiled call between progress updates", group="optimization",
                        min=">0")

    weights: str | None = option(None, "VGG-19 weights (.pth from torchvision or converted .npz)", group="system",
                                 metavar="PATH", default_help="download once and cache")
    tile_size: int | None = option(
        None, "run VGG on tiles of this many pixels (a multiple of 16 for the default layers) so memory no "
        "longer grows with the image; the loss stays that of the whole image", group="system", min=">0")
    tile_halo: int | None = option(None, "context pixels around each tile", group="system", min=">=0",
                                   default_help="the receptive field, exact")
    max_memory: float | None = option(None, "memory budget in GiB for the size check", group="system", min=">0",
                                      default_help="the device's memory")
    no_progress: bool = option(False, "no progress bar", group="system")
    web: bool = option(False, "also serve a live view of the run (image and loss curve) on 127.0.0.1 "
                       "(needs the app extra)", group="system")
    port: int = option(7860, "port of the --web live view (0: any free port)", group="system", min=">=0")


GROUPS = (("images", "images"), ("loss", "loss"), ("color", "colour control (Gatys et al. 2017)"),
          ("space", "spatial control (Gatys et al. 2017)"), ("scale", "scale: coarse to fine (Gatys et al. 2017)"),
          ("optimization", "optimization"), ("system", "system"))


def build_parser() -> cli.ArgumentParser:
    """The ``nst-gatys`` parser, generated from :class:`GatysOptions` and :class:`GatysConfig`."""
    return cli.build_parser(
        PROG,
        "Gatys et al. (2016) neural style transfer: optimize an image so its VGG-19 features match a content "
        "photo and its Gram matrices match a style painting, with the perceptual controls of Gatys et al. "
        "(2017): colour, space (per-region styles) and scale (coarse to fine). With no --content/--style the "
        "built-in example images are used.",
        [(GatysOptions, ()), (GatysConfig, ("iterations",)), (cli_video.GatysVideoOptions, ())],
        groups=GROUPS + (cli_video.GROUP,))


class _Plan(NamedTuple):
    """The CLI's inputs at source resolution (each level resamples them)."""

    content: np.ndarray  # (H0, W0, 3) source
    styles: list[np.ndarray]  # (Hs, Ws, 3) sources
    init: np.ndarray | None
    content_masks: np.ndarray | None  # (K, H0, W0)
    style_masks: list[np.ndarray] | None  # (Hs, Ws) per style


def _check_level_flags(args) -> None:
    if args.sizes is not None and args.size is not None:
        raise ConfigError("give either --size or --sizes, not both (the last of --sizes is the output height)")
    if args.sizes is not None and args.multiscale:
        raise ConfigError("--multiscale picks the levels from --size; drop it when giving --sizes")


def _levels(args, default_size: int = DEFAULT_SIZE) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(level heights, iterations per level) from --size, --sizes, --multiscale and --iterations;
    ``default_size`` is the height without --size (a clip's own height for videos)."""
    _check_level_flags(args)
    size = default_size if args.size is None else args.size
    if args.sizes is not None:
        sizes = multiscale.check_sizes(args.sizes)
    elif args.multiscale:
        sizes = multiscale.auto_sizes(size)
    else:
        sizes = (size,)
    return sizes, multiscale.level_iterations(len(sizes), args.iterations)


def _level_shape(source: np.ndarray, height: int) -> tuple[int, int]:
    return imageio.size_for_height(source.shape[0], source.shape[1], height)


def _check_aspect(mask: np.ndarray, image: np.ndarray, what: str) -> None:
    (mh, mw), (h, w) = mask.shape[:2], image.shape[:2]
    if abs(mw / mh - w / h) > 0.02 * (w / h):
        raise InputImageError(f"{what} is {mw}x{mh} but its image is {w}x{h}; give a mask with the "
                              "image's aspect ratio")


def _load_inputs(args, config: GatysConfig, sizes: Sequence[int]) -> _Plan:
    content_path = args.content or imageio.default_content_path()
    style_paths = args.style or [imageio.default_style_path()]
    # Every input is checked (missing, not a regular file, not an image, too many pixels, too
    # small) from its header before any is decoded.
    inputs = [("content image", content_path)] + [("style image", p) for p in style_paths]
    if config.init == "image" and args.init_image:
        inputs.append(("init image", args.init_image))
    inputs += [("content mask", p) for p in args.content_mask or ()]
    inputs += [("style mask", p) for p in args.style_mask or ()]
    headers = [imageio.image_size(path, what) for what, path in inputs]
    min_side = vgg.min_image_size(config.layers)
    deepest = max(config.layers, key=vgg.LAYERS.index)
    # The smallest level is the one that must fit the network.
    flag = "--sizes" if len(sizes) > 1 else "--size"
    h, w = _level_shape(np.empty(headers[0] + (0,)), sizes[0])
    imageio.check_min_size(np.empty((h, w, 0)), min_side, "content image", layer=deepest, flag=flag)
    for hw in headers[1:1 + len(style_paths)]:
        sh, sw = _level_shape(np.empty(hw + (0,)), max(int(round(sizes[0] * args.style_scale)), 1))
        imageio.check_min_size(np.empty((sh, sw, 0)), min_side, "style image", layer=deepest,
                               flag="--style-scale")
    # JPEGs are decoded at a reduced scale where that keeps the largest size sampled from them
    # (the last level, the style at --style-scale); every size is still computed from the headers.
    size_of = dict(zip((path for _, path in inputs), headers))
    out_hw = _level_shape(np.empty(headers[0] + (0,)), sizes[-1])
    style_height = max(int(round(sizes[-1] * args.style_scale)), 1)

    def style_hw(path) -> tuple[int, int]:
        return _level_shape(np.empty(size_of[path] + (0,)), style_height)

    content = imageio.load_image(content_path, what="content image", min_size=out_hw)
    styles = [imageio.load_image(path, what="style image", min_size=style_hw(path)) for path in style_paths]
    init = None
    if config.init == "image":
        if not args.init_image:
            raise ConfigError("--init image needs --init-image PATH")
        init = imageio.load_image(args.init_image, what="init image", min_size=out_hw)

    content_masks = None
    if args.mask_colors is not None and not args.content_mask:
        raise ConfigError("--mask-colors needs --content-mask LABEL_IMAGE")
    if args.content_mask:
        images = [imageio.load_image(p, what="content mask", min_size=out_hw) for p in args.content_mask]
        for m in images:
            _check_aspect(m, content, "the content mask")
        if len(images) == 1:
            masks = guides.regions_from_labels(images[0], len(styles), args.mask_colors)
        elif len(images) == len(styles):
            if args.mask_colors is not None:
                raise ConfigError("--mask-colors reads ONE colour-coded --content-mask; drop it with one mask per style")
            first = images[0].shape[:2]
            masks = guides.masks_from_images([imageio.resize(m, *first) for m in images])
        else:
            raise ConfigError(f"--content-mask has {len(images)} images for {len(styles)} styles; give one "
                              "label image or one mask per style")
        content_masks = np.asarray(guides.resize_masks(masks, *content.shape[:2]))
    style_masks = None
    if args.style_mask:
        if len(args.style_mask) != len(styles):
            raise ConfigError(f"--style-mask has {len(args.style_mask)} masks for {len(styles)} style images; "
                              "give one per style")
        style_masks = []
        for path, style_path, style in zip(args.style_mask, style_paths, styles):
            m = imageio.load_image(path, what="style mask", min_size=style_hw(style_path))
            _check_aspect(m, style, "a style mask")
            style_masks.append(np.asarray(guides.masks_from_images([imageio.resize(m, *style.shape[:2])]))[0])
    return _Plan(content, styles, init, content_masks, style_masks)


def _snapshot_path(output, iteration: int):
    out = Path(output)
    return out.with_name(f"{out.stem}_iter{iteration:05d}{out.suffix}")


def _last_good_path(output):
    """Where a failed run saves its last good image: beside ``--output``, never over it."""
    out = Path(output)
    return out.with_name(f"{out.stem}.last-good{out.suffix}")


def _check_style_scale(style_scale: float, size: int) -> None:
    """Refuses a --style-scale whose style height no image can have, before any image is sized.

    A style height above :func:`image.max_pixels` is more pixels than the readers accept even for a
    one-pixel-wide image; smaller heights are left to the memory check, which knows the aspect ratio.
    """
    limit = int(imageio.max_pixels())
    if not np.isfinite(style_scale) or not style_scale > 0:
        raise ConfigError(f"--style-scale must be a finite number > 0, got {style_scale}")
    if size * style_scale > limit:
        raise ConfigError(f"--style-scale {style_scale:g} makes the style {size * style_scale:.3g} px high, more "
                          f"pixels than any image may have ({limit / 1e6:.0f} megapixels); lower --style-scale "
                          "(1 gives the style the height of --size)")


def _check_outputs(args) -> None:
    """Refuses an --output, its last-good name or --metrics-json that would replace an input file."""
    inputs = ([("content image", args.content)] + [("style image", s) for s in args.style or []]
              + [("content mask", m) for m in args.content_mask or []]
              + [("style mask", m) for m in args.style_mask or []] + [("init image", args.init_image)])
    outputs = [("--output", args.output), ("--output (its last-good name)", _last_good_path(args.output))]
    cli.refuse_overwriting_inputs(outputs, inputs)
    if args.metrics_json:
        cli.refuse_overwriting_inputs([("--metrics-json", args.metrics_json)],
                                      inputs + [("output image", args.output)])


def _runner(args, config: GatysConfig):
    """gatys.run, or tiling.run_tiled with the tile geometry bound when --tile-size is given."""
    if args.tile_size is None:
        if args.tile_halo is not None:
            raise ConfigError("--tile-halo needs --tile-size")
        return gatys.run  # looked up per call: tests replace it
    if args.content_mask or args.style_mask:
        raise ConfigError("spatial control (--content-mask/--style-mask) does not work with --tile-size; "
                          "drop one of them")
    # Check the geometry now, before any image work.
    tiling.tile_grid((1, args.tile_size, args.tile_size, 3), config.layers, args.tile_size, args.tile_halo)
    return functools.partial(tiling.run_tiled, tile_size=args.tile_size, halo=args.tile_halo)


def _check_metrics_path(path) -> None:
    """Refuses a --metrics-json path that cannot be written, before any long job starts."""

    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"--metrics-json is a folder: {path}; give a file name such as {path / 'metrics.json'}")
    parent = path.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise OutputPathError(f"--metrics-json folder {what}: {parent}; create it or choose another --metrics-json")
    if not os.access(parent, os.W_OK):
        raise OutputPathError(f"--metrics-json folder is not writable: {parent}; fix its permissions or "
                              "choose another --metrics-json")


def _memory_needed(args, config: GatysConfig, height: int, width: int, params, backward: bool = True) -> int:
    """Estimated bytes of optimizing (or, ``backward=False``, of one forward pass over) an image."""
    return memory.gatys_bytes(height, width, params, config, backward=backward, tile_size=args.tile_size,
                              tile_halo=args.tile_halo)


def _check_memory(args, config: GatysConfig, plan: _Plan, size: int, params) -> None:
    """Refuses a job whose largest level (output or a style image) would not fit in memory."""
    budget = int(args.max_memory * 2**30) if args.max_memory else memory.available_bytes()
    height, width = _level_shape(plan.content, size)
    need = _memory_needed(args, config, height, width, params)
    if need > budget:
        raise MemoryBudgetError(
            f"a {width}x{height} image needs about {need / 2**30:.1f} GiB but "
            f"{budget / 2**30:.1f} GiB are available; lower --size, add --remat, --tile-size or --dtype "
            "bfloat16, or raise --max-memory if you know better"
        )
    # The style images only go forward, once, for their Gram matrices.
    style_height = max(int(round(size * args.style_scale)), 1)
    for style in plan.styles:
        sh, sw = _level_shape(style, style_height)
        need = _memory_needed(args, config, sh, sw, params, backward=False)
        if need > budget:
            raise MemoryBudgetError(
                f"a {sw}x{sh} style image (--style-scale {args.style_scale:g}) needs about "
                f"{need / 2**30:.1f} GiB but {budget / 2**30:.1f} GiB are available; lower --style-scale "
                "or --size, or raise --max-memory if you know better"
            )


def _metrics(args, config: GatysConfig, lw, ms, sizes, level_its) -> dict:
    """The --metrics-json document: the last level's losses and timings, every level, the settings."""
    result = ms.result
    terms = result.terms
    evaluations = result.evaluations
    return {
        # Top-level numbers describe the last level, whose image is the output. The raw terms
        # (content_loss, ...) are unweighted; the *_weighted ones add up to final_loss.
        "losses": result.losses,
        "final_loss": terms["total"],
        "content_loss": terms["content"],
        "style_loss": terms["style"],
        "tv_loss": terms["tv"],
        "content_weighted": terms["content_weighted"],
        "style_weighted": terms["style_weighted"],
        "tv_weighted": terms["tv_weighted"],
        "seconds_per_iteration": result.seconds_per_iteration,
        "compile_seconds": result.compile_seconds,
        "program_source": result.program_source,  # "exported": no tracing (the program store)
        "iterations": result.iterations,
        "evaluations": evaluations,
        "evaluations_per_iteration": evaluations / result.iterations if result.iterations else None,
        "interrupted": result.interrupted,
        "levels": [level.as_dict() for level in ms.levels],
        "total_iterations": sum(level.iterations for level in ms.levels),
        "total_seconds": sum(level.seconds for level in ms.levels),
        "config": {**dataclasses.asdict(dataclasses.replace(config, iterations=level_its[-1])),
                   "content_weight": args.content_weight,
                   "style_weight": args.style_weight, "tv_weight": args.tv_weight,
                   "style_layer_weights": [float(w) for w in lw.style_layers],
                   "size": sizes[-1], "sizes": list(sizes), "level_iterations": list(level_its),
                   "seed": args.seed, "backend": jax.default_backend(),
                   "tile_size": args.tile_size, "tile_halo": args.tile_halo,
                   "content": str(args.content or "built-in"),
                   "style": [str(s) for s in (args.style or ["built-in"])],
                   "content_mask": [str(m) for m in (args.content_mask or [])],
                   "style_mask": [str(m) for m in (args.style_mask or [])]},
    }


def _live_view(args, total: int):
    """The --web live view, serving from now on (its address goes to stderr), or None."""
    if args.web:
        from nst_jax.cli.app import import_app

        _, live, _ = import_app()
        view = live.LiveView(port=args.port, total=total, title=PROG)
        print(f"live view: {view.url}", file=sys.stderr)
        return view
    if args.port != GatysOptions.port:
        raise ConfigError("--port is the port of --web; add --web or drop --port")
    return None


def _close_view(view, status: str, message: str) -> None:
    if view is not None:
        view.finish(status, message)
        view.close()


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    compile_cache.enable()  # before the first compile; the library itself never sets it
    if cli_video.is_video_input(args):
        return _video_main(args)
    sizes, level_its = _levels(args)
    config = cli.from_args(GatysConfig, args, iterations=level_its[0])
    lw = gatys.loss_weights(config, args.content_weight, args.style_weight, args.style_layer_weights,
                            args.tv_weight)
    runner = _runner(args, config)
    imageio.check_output_path(args.output, bits=args.bits)
    if args.metrics_json:
        _check_metrics_path(args.metrics_json)
    _check_outputs(args)
    _check_style_scale(args.style_scale, max(sizes))
    plan = _load_inputs(args, config, sizes)
    n_styles = len(plan.styles)
    if args.style_blend_weights is not None and len(args.style_blend_weights) != n_styles:
        raise ConfigError(f"--style-blend-weights has {len(args.style_blend_weights)} values for "
                          f"{n_styles} style images; give one per style")
    if args.style_blend_weights is not None:  # refused now, not after the weights are loaded
        normalized_weights(args.style_blend_weights, "--style-blend-weights")
    if args.style_blend_weights is not None and plan.content_masks is not None:
        raise ConfigError("--style-blend-weights cannot be combined with --content-mask (each region "
                          "takes one style); drop one of them")
    params = weights_mod.resolve_weights("vgg19", args.weights)

    _check_memory(args, config, plan, sizes[-1], params)

    total = sum(level_its)
    offsets = [sum(level_its[:i]) for i in range(len(level_its))]
    bar = tqdm(total=total, disable=args.no_progress, unit="it", dynamic_ncols=True,
               desc="stylizing", file=sys.stderr)

    view = _live_view(args, total)

    def callback(level: int, progress: gatys.Progress, get_image):
        done = offsets[level] + progress.iteration
        bar.update(done - bar.n)
        bar.set_postfix(loss=f"{progress.loss:.4g}", **({"size": sizes[level]} if len(sizes) > 1 else {}))
        if view is not None:
            view.publish(done, get_image(), {"total": progress.loss})
        if not args.save_every or done >= total:
            return
        if progress.iteration % args.save_every == 0:  # the driver stops at every multiple
            imageio.save_image(_snapshot_path(args.output, done), get_image(), bits=args.bits)

    outcome = ("error", "the run failed")  # what the live view shows at the end
    try:
        ms = multiscale.run_multiscale(
            params, plan.content, plan.styles, config, lw, sizes=sizes, iterations=level_its,
            style_scale=args.style_scale, key=jax.random.key(args.seed), init=plan.init,
            blend_weights=args.style_blend_weights, content_masks=plan.content_masks,
            style_masks=plan.style_masks, chunk=args.chunk, callback=callback, runner=runner,
            snapshot_every=args.save_every)
        done = ms.result.iterations
        outcome = ("stopped", f"interrupted at iteration {done}") if ms.result.interrupted else (
            "done", f"done: {done} iterations")
    except NonFiniteLossError as err:
        bar.close()
        outcome = ("error", str(err))
        # A failed run never changes an existing output: its last good image goes beside it.
        saved = imageio.save_image(_last_good_path(args.output), err.image, bits=args.bits)
        raise NonFiniteLossError(f"{err}; that image was saved as {saved} ({args.output} was not "
                                 "written)") from None
    finally:
        _close_view(view, *outcome)
    bar.close()
    result = ms.result
    if args.metrics_json:
        metrics = _metrics(args, config, lw, ms, sizes, level_its)
        # Before the image: a failed metrics write (disk full) then leaves both files as they were.
        files.atomic_write_text(args.metrics_json, json.dumps(metrics, indent=1))
    imageio.save_image(args.output, result.image, bits=args.bits)
    if result.interrupted:
        print(f"interrupted at iteration {result.iterations} of the {sizes[len(ms.levels) - 1]}-pixel level; "
              f"saved {args.output}", file=sys.stderr)
        return cli.EXIT_INTERRUPTED
    print(f"saved {args.output} (loss {result.terms['total']:.4g} after {result.iterations} iterations"
          f"{f' at {sizes[-1]} px, {len(sizes)} levels' if len(sizes) > 1 else ''})", file=sys.stderr)
    return 0


def _video_main(args) -> int:
    """``nst-gatys`` on a clip: every frame runs the levels of a still image (cli/video.py)."""
    unsupported = [f for f, v in (("--content-mask", args.content_mask), ("--style-mask", args.style_mask),
                                  ("--tile-size", args.tile_size), ("--save-every", args.save_every),
                                  ("--init-image", args.init_image), ("--web", args.web)) if v]
    if unsupported:
        raise ConfigError(f"{', '.join(unsupported)} cannot be used with a video --content; drop it")
    if args.init == "image":
        raise ConfigError("--init image cannot be used with a video --content (later frames start from the "
                          "previous one); use --init content or noise")
    # The flag rules before any work; with --multiscale and no --size the levels need the clip's height.
    _check_level_flags(args)
    if args.sizes is not None:
        multiscale.level_iterations(len(multiscale.check_sizes(args.sizes)), args.iterations)
        if args.video_iterations is not None:
            multiscale.level_iterations(len(args.sizes), args.video_iterations, "--video-iterations")
    _check_style_scale(args.style_scale, max(args.sizes or (args.size or 1,)))
    if args.metrics_json:
        _check_metrics_path(args.metrics_json)
    if args.style_blend_weights is not None:
        if len(args.style_blend_weights) != len(args.style or [None]):
            raise ConfigError(f"--style-blend-weights has {len(args.style_blend_weights)} values for "
                              f"{len(args.style or [None])} style images; give one per style")
        normalized_weights(args.style_blend_weights, "--style-blend-weights")
    config = cli.from_args(GatysConfig, args, iterations=0)
    lw = gatys.loss_weights(config, args.content_weight, args.style_weight, args.style_layer_weights,
                            args.tv_weight)
    params = weights_mod.resolve_weights("vgg19", args.weights)
    return cli_video.gatys(args, config, lw, params, functools.partial(_levels, args))


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``nst-gatys``; returns the exit status (0, 2 on user errors, 130 when interrupted)."""
    return cli.run_main(_main, argv, weights_message=cli.weights_flags({"vgg19": "--weights"}))


def console() -> None:
    """The ``nst-gatys`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    console()
