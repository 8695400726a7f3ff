"""Video halves of ``nst-gatys`` and ``nst-adain``: a clip as ``--content``.

The commands detect a clip by its extension (:func:`nst_jax.video.is_video_file`); a folder of
numbered frames is a clip only with ``--video`` (:func:`is_video_input`: without it a folder stays a
folder of still images for ``nst-adain``), and hand over here. An output without extension is a folder
of numbered PNG frames. Frames are read one at a time, stylized (:mod:`nst_jax.video_style`), and written as
they are done, with the input's timestamps and audio; a progress bar counts frames; Ctrl-C finishes
the video written so far and exits 130.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from tqdm import tqdm

from nst_jax import cli, files, flow, memory, multiscale, video
from nst_jax import image as imageio
from nst_jax.errors import ConfigError, MemoryBudgetError

option = cli.option
# The library's defaults (nst_jax.video_style), without importing it (it pulls in flax) at every start.
DEFAULT_TEMPORAL_WEIGHT = 100.0
DEFAULT_VIDEO_ITERATIONS = 100
GROUP = ("video", "video (when --content is a clip: .mp4, .mov, .mkv, .webm, .avi, ...)")


FRAMES_HELP = (f"--content is a folder of numbered frames (e.g. frame_0001.png, ordered by the last digits "
               f"in each name) forming one clip at {video.DEFAULT_FOLDER_FPS} fps; without this flag a folder "
               "is a set of still images (nst-adain). A clip file (.mp4, ...) needs no flag")


def is_video_input(args) -> bool:
    """The rule both commands use: a clip file by its extension, a folder of frames only with --video."""
    if not args.content:
        return False
    if getattr(args, "video", False):
        if not (video.is_video_file(args.content) or Path(args.content).is_dir()):
            raise ConfigError(f"--video needs --content to be a folder of numbered frames or a clip, got "
                              f"{args.content}; drop --video for a still image")
        return True
    return video.is_video_file(args.content)


@dataclasses.dataclass(frozen=True)
class GatysVideoOptions:
    """Flags of ``nst-gatys`` for videos (Ruder et al. 2016)."""

    temporal_weight: float = option(DEFAULT_TEMPORAL_WEIGHT, "weight of the temporal loss toward the previous "
                                    "stylized frame warped by the optical flow (0: warm start only)", group="video",
                                    min=">=0")
    video_iterations: tuple[int, ...] | None = option(
        None, "iterations of each frame after the first (which gets --iterations): one number for every "
        "--sizes level (coarse levels cost a fraction of the finest, and start from the warped previous frame) "
        "or one per level", group="video", min=">=0", default_help=str(DEFAULT_VIDEO_ITERATIONS))
    flow: str = option("dis", "optical flow method", group="video", choices=flow.FLOW_METHODS)
    video: bool = option(False, FRAMES_HELP, group="video")


@dataclasses.dataclass(frozen=True)
class AdainVideoOptions:
    """Flags of ``nst-adain`` for videos."""

    temporal_smoothing: float = option(0.0, "blend each frame with the previous output warped by the optical flow "
                                       "where the flow is consistent, 0 (off) to <1", group="video", min=">=0")
    video: bool = option(False, FRAMES_HELP, group="video")
    batch: int = option(8, "frames stylized per compiled call", group="video", min=">0")
    metrics_json: str | None = option(None, "write frames, fps, seconds_per_frame and temporal_error as JSON "
                                      "here (videos)", group="video", metavar="PATH")


def _bar(args, info: video.VideoInfo):
    bar = tqdm(total=info.frames, disable=args.no_progress, unit="frame", dynamic_ncols=True,
               desc="stylizing", file=sys.stderr)

    def progress(done: int, total) -> None:
        bar.update(done - bar.n)

    return bar, progress


def _finish(args, metrics: dict, output) -> int:
    if getattr(args, "metrics_json", None):
        files.atomic_write_text(args.metrics_json, json.dumps(metrics, indent=1))
    if metrics["interrupted"]:
        print(f"interrupted: {metrics['frames']} frame(s) written to {output}", file=sys.stderr)
        return cli.EXIT_INTERRUPTED
    print(f"saved {output} ({metrics['frames']} frames, {metrics['seconds_per_frame']:.3g} s/frame)",
          file=sys.stderr)
    return 0


def _style(path, height: int):
    img = imageio.load_image(path or imageio.default_style_path(), "style image")
    return jnp.asarray(imageio.resize(img, height=height))[None]


def _frame_shapes(content, size: int | None) -> list[tuple[int, int]]:
    """(height, width) the frames may have after ``--size``, from the header, both orientations.

    Rotation metadata is only known after decoding a frame, so both are counted (the check errs on
    the safe side for a rotated phone clip resized by --size).
    """
    h, w = video.header_size(content)
    return [(size, max(1, round(size * ww / hh))) if size else (hh, ww) for hh, ww in {(h, w), (w, h)}]


def _budget(args) -> int:
    return int(args.max_memory * 2**30) if getattr(args, "max_memory", None) else memory.available_bytes()


def _refuse(need: int, budget: int, shape: tuple[int, int], what: str, fix: str) -> None:
    if need > budget:
        h, w = shape
        raise MemoryBudgetError(f"{what} at {w}x{h} px need about {need / 2**30:.1f} GiB but "
                                f"{budget / 2**30:.1f} GiB are available; {fix}, or raise --max-memory if "
                                "you know better")


def check_gatys_memory(args, config, params, size: int | None = None) -> None:
    """Refuses a clip whose frames (at ``size``, the finest level's height; None: the clip's) or
    style images (their height times --style-scale, one forward pass) would not fit, from the
    headers, before any frame is decoded."""
    budget = _budget(args)
    need, shape = max((memory.gatys_bytes(h, w, params, config), (h, w)) for h, w in
                      _frame_shapes(args.content, size))
    _refuse(need, budget, shape, "frames", "lower --size, add --remat or --dtype bfloat16")
    for path in args.style or [imageio.default_style_path()]:
        sh, sw = imageio.image_size(path, "style image")
        for height in {max(1, round(h * args.style_scale)) for h, _ in _frame_shapes(args.content, size)}:
            need = memory.gatys_bytes(height, max(1, round(height * sw / sh)), params, config, backward=False)
            _refuse(need, budget, (height, max(1, round(height * sw / sh))),
                    f"a style image (--style-scale {args.style_scale:g})", "lower --style-scale or --size")


def check_adain_memory(args, config, vgg_params, decoder_params, styles, size: int | None,
                       clip_hw: tuple[int, int] | None = None) -> memory.VideoHeight:
    """The frame height of an AdaIN clip (:func:`nst_jax.memory.adain_video_height`), counting ``--batch``.

    ``clip_hw=None``: from the container header, before any frame is decoded (both orientations);
    else from the upright size. Raises MemoryBudgetError when a given ``size`` does not fit.
    """
    return memory.adain_video_height(
        video.header_size(args.content) if clip_hw is None else clip_hw, size, _budget(args),
        [imageio.image_size(p, "style image") for p in styles], config.style_size, vgg_params, decoder_params,
        args.batch, rotation_known=clip_hw is not None)


def gatys(args, config, loss_weights, params, levels) -> int:
    """Runs ``nst-gatys`` on a clip; ``args`` are the parsed flags (GatysOptions + GatysVideoOptions).

    ``levels(height)`` gives ``(sizes, iterations)`` of the first frame for a clip ``height`` pixels
    high (the still-image rules of ``--size``, ``--sizes``, ``--multiscale`` and ``--iterations``).
    """
    from nst_jax import video_style  # here, not at import: it pulls in adain (flax) for every nst-gatys start
    video.check_output(args.output, source=args.content)
    check_gatys_memory(args, config, params, args.sizes[-1] if args.sizes else args.size)
    info = video.probe(args.content)
    sizes, first_its = levels(info.height)
    later_its = multiscale.level_iterations(len(sizes), DEFAULT_VIDEO_ITERATIONS if args.video_iterations is None
                                            else args.video_iterations, "--video-iterations")
    height = sizes[-1]
    styles = [_style(p, max(1, round(height * args.style_scale))) for p in (args.style or [None])]
    run = functools.partial(video_style.run_gatys, params, style=styles, config=config, weights=loss_weights,
                            video_iterations=later_its, temporal_weight=args.temporal_weight, flow_method=args.flow,
                            blend_weights=args.style_blend_weights, sizes=sizes, iterations=first_its,
                            style_scale=args.style_scale, key=jax.random.key(args.seed), chunk=args.chunk)
    bar, progress = _bar(args, info)
    try:
        metrics = video_style.stylize_file(args.content, args.output, run, height=height, progress=progress)
    finally:
        bar.close()
    return _finish(args, metrics, args.output)


def adain(args, config, vgg_params, decoder_params, styles, interpolation_weights, size: int | None) -> int:
    """Runs ``nst-adain`` on a clip; ``styles`` are the style image paths, ``size`` is ``--size`` or None.

    Without ``--size`` the frames keep the clip's upright height, lowered to the largest height
    whose batches fit the memory budget (one line on stderr says so); a given ``--size`` that does
    not fit is refused from the container header, before any frame is decoded.
    """
    from nst_jax import video_style
    output = args.output or "stylized.mp4"
    video.check_output(output, source=args.content)
    if size is not None:
        check_adain_memory(args, config, vgg_params, decoder_params, styles, size)
    info = video.probe(args.content)
    height = size
    if size is None:
        fit = check_adain_memory(args, config, vgg_params, decoder_params, styles, None, (info.height, info.width))
        if fit.lowered_from is not None:
            h, w = fit.shape
            print(f"note: stylizing at {w}x{h} px, not the clip's {info.width}x{info.height}: batches of "
                  f"{args.batch} frames at full size need about {fit.lowered_need_bytes / 2**30:.1f} GiB but "
                  f"{_budget(args) / 2**30:.1f} GiB are available; choose the height with --size (or lower --batch)",
                  file=sys.stderr)
        height = fit.height
    height = height or info.height
    style_height = config.style_size or height
    imgs = [_style(p, style_height) for p in styles]
    run = functools.partial(video_style.run_adain, vgg_params, decoder_params, styles=imgs, alpha=config.alpha,
                            smoothing=args.temporal_smoothing, batch=args.batch,
                            interpolation_weights=interpolation_weights, preserve_color=config.preserve_color,
                            color_mode=config.color_transform, measure=bool(getattr(args, "metrics_json", None)))
    bar, progress = _bar(args, info)
    try:
        metrics = video_style.stylize_file(args.content, output, run, height=height, progress=progress)
    finally:
        bar.close()
    return _finish(args, metrics, output)
