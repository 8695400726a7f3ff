"""Video halves of ``nst-gatys`` and ``nst-adain``: a clip as ``--content``.

The commands detect a clip by its extension (:func:`nst_jax.video.is_video_file`; a folder stays a
folder of still images for ``nst-adain``) and hand over here. An output without extension is a folder
of numbered PNG frames. Frames are read one at a time, stylized (:mod:`nst_jax.video_style`), and written as
they are done, with the input's timestamps and audio; a progress bar counts frames; Ctrl-C finishes
the video written so far and exits 130.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys

import jax.numpy as jnp
from tqdm import tqdm

from nst_jax import cli, files, flow, video
from nst_jax import image as imageio

option = cli.option
GROUP = ("video", "video (when --content is a clip: .mp4, .mov, .mkv, .webm, .avi, ...)")


@dataclasses.dataclass(frozen=True)
class GatysVideoOptions:
    """Flags of ``nst-gatys`` for videos (Ruder et al. 2016)."""

    temporal_weight: float = option(100.0, "weight of the temporal loss toward the previous stylized frame warped "
                                    "by the optical flow (0: warm start only)", group="video", min=">=0")
    video_iterations: int = option(100, "iterations of each frame after the first (which gets --iterations)",
                                   group="video", min=">=0")
    flow: str = option("dis", "optical flow method", group="video", choices=flow.FLOW_METHODS)


@dataclasses.dataclass(frozen=True)
class AdainVideoOptions:
    """Flags of ``nst-adain`` for videos."""

    temporal_smoothing: float = option(0.0, "blend each frame with the previous output warped by the optical flow "
                                       "where the flow is consistent, 0 (off) to <1", group="video", min=">=0")
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


def gatys(args, config, loss_weights, params) -> int:
    """Runs ``nst-gatys`` on a clip; ``args`` are the parsed flags (GatysOptions + GatysVideoOptions)."""
    from nst_jax import video_style  # here, not at import: it pulls in adain (flax) for every nst-gatys start
    video.check_output(args.output, source=args.content)
    info = video.probe(args.content)
    height = args.size or info.height
    styles = [_style(p, max(1, round(height * args.style_scale))) for p in (args.style or [None])]
    run = functools.partial(video_style.run_gatys, params, style=styles if len(styles) > 1 else styles[0],
                            config=config, weights=loss_weights, video_iterations=args.video_iterations,
                            temporal_weight=args.temporal_weight, flow_method=args.flow,
                            blend_weights=args.style_blend_weights)
    bar, progress = _bar(args, info)
    try:
        metrics = video_style.stylize_file(args.content, args.output, run, height=height, progress=progress)
    finally:
        bar.close()
    return _finish(args, metrics, args.output)


def adain(args, config, vgg_params, decoder_params, styles, interpolation_weights) -> int:
    """Runs ``nst-adain`` on a clip; ``styles`` are the style image paths."""
    from nst_jax import video_style
    output = args.output or "stylized.mp4"
    video.check_output(output, source=args.content)
    info = video.probe(args.content)
    height = config.size or info.height
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
