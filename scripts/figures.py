"""Renders comparison grids like the figures of the report (§V-C) as PNG files.

* ``color_controls.png`` (report Fig. 3): content, style, then no colour control, histogram matching,
  luminance-only transfer and histogram matching from the style.
* ``optimizers.png`` (report Figs. 4 and 6): L-BFGS against Adam at several learning rates, all at the
  same number of iterations.
* ``style_layers.png`` (report Fig. 5): the style loss on relu1_1 only, then relu1_1 and relu2_1, ...,
  up to all five default style layers.
* ``loss_curves.png``: the total loss per iteration of the optimizer runs (log scale).
* ``video_consistency.png`` (``--figures video``, needs the video extra): a pan across the content
  image stylized frame by frame independently and with Ruder et al.'s (2016) warm start and
  temporal loss, each row above its temporal error maps: |out_t - warp(out_{t-1})| on pixels where
  the optical flow is consistent (black: masked out or no error; brighter: more flicker; x4).

Usage::

    python scripts/figures.py --weights vgg19.pth --size 256 --iterations 300 --output-dir figures
    python scripts/figures.py --weights vgg19.pth --size 128 --figures video --video-frames 6

The optimizer and layer defaults are those of ``nst-gatys`` (:class:`nst_jax.gatys.GatysConfig`).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from nst_jax import cli, color, flow, gatys, plot, vgg, weights  # noqa: E402
from nst_jax import image as imageio  # noqa: E402
from nst_jax.errors import ConfigError, check_choice  # noqa: E402

FIGURES: tuple[str, ...] = ("color", "optimizers", "layers", "curves", "video")
# The video figure is drawn on request: it needs the video extra (OpenCV's optical flow).
DEFAULT_FIGURES: tuple[str, ...] = ("color", "optimizers", "layers", "curves")
VIDEO_ERROR_GAIN = 4.0  # error maps are |difference| x 4, so that small flicker shows
_LABEL_HEIGHT = 22
_GAP = 6


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def grid(images: list[np.ndarray], labels: list[str], title: str = "") -> Image.Image:
    """One row of ``(H, W, 3)`` [0, 1] images (heights may differ) with a label above each.

    Each column is as wide as its image or its label, whichever is wider, so no label is cut off.
    """
    height = max(im.shape[0] for im in images)
    tiles = [Image.fromarray(np.round(np.clip(im, 0, 1) * 255).astype(np.uint8)) for im in images]
    tiles = [t if t.height == height else t.resize((round(t.width * height / t.height), height),
                                                   Image.Resampling.BICUBIC) for t in tiles]
    font = _font(14)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    columns = [max(t.width, int(np.ceil(measure.textlength(label, font=font))) + 2)
               for t, label in zip(tiles, labels)]
    top = _LABEL_HEIGHT * (2 if title else 1)
    width = max(sum(columns) + _GAP * (len(tiles) + 1), int(np.ceil(measure.textlength(title, font=font))) + 2 * _GAP)
    canvas = Image.new("RGB", (width, height + top + _GAP), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((width / 2, 4), title, fill=(30, 30, 30), font=font, anchor="mt")
    x = _GAP
    for tile, label, column in zip(tiles, labels, columns):
        draw.text((x + column / 2, top - 4), label, fill=(30, 30, 30), font=font, anchor="mb")
        canvas.paste(tile, (x + (column - tile.width) // 2, top))
        x += column + _GAP
    return canvas


def _save(path: Path, picture: Image.Image) -> Path:
    imageio.save_image(path, np.asarray(picture, np.float32) / 255.0)
    return path


def pan_frames(still: np.ndarray, n: int) -> list[np.ndarray]:
    """``n`` frames panning left to right across ``still``: full height, shifted by ``step`` px each.

    The step, ``max(2, height // 32)`` px, is a clearly visible motion at any size.
    """
    step = max(2, still.shape[0] // 32)
    width = still.shape[1] - step * (n - 1)
    if width < 1:
        raise ConfigError(f"--video-frames {n} pans {step * (n - 1)} px across a content image "
                          f"{still.shape[1]} px wide; use fewer frames or a wider image")
    return [still[:, step * t:step * t + width] for t in range(n)]


def error_maps(outputs: list[np.ndarray], frames: list[np.ndarray]) -> list[np.ndarray]:
    """Gray maps of |out_t - warp(out_{t-1})| where the flow is consistent, x VIDEO_ERROR_GAIN (frame 0: black).

    The error of Ruder et al. (2016) and of ``flow.temporal_error``, per pixel, with the flow of
    the input frames.
    """
    maps = [np.zeros_like(outputs[0])]
    for t in range(1, len(outputs)):
        back, fwd = flow.flows(frames[t - 1], frames[t])
        warped = np.asarray(flow.warp(jnp.asarray(outputs[t - 1]), jnp.asarray(back)))
        mask = np.asarray(flow.consistency_mask(jnp.asarray(back), jnp.asarray(fwd)))
        err = np.mean(np.abs(outputs[t] - warped), axis=-1) * mask
        maps.append(np.repeat(np.clip(VIDEO_ERROR_GAIN * err, 0, 1)[..., None], 3, axis=-1))
    return maps


class VideoFigure(NamedTuple):
    picture: Image.Image
    panels: dict[str, list[np.ndarray]]  # "input", "independent", "independent error", "temporal", ...
    temporal_error: dict[str, float]  # per mode, as run_gatys measures it


VIDEO_MODES = (("independent", "independent frames"), ("temporal", "warm start + temporal loss"))


def video_figure(params, frames: list[np.ndarray], style: np.ndarray, config: gatys.GatysConfig, *,
                 video_iterations: int, temporal_weight: float) -> VideoFigure:
    """Independent vs temporally consistent Gatys frames (Ruder et al. 2016), each above its error maps."""
    from nst_jax import video_style  # here: it imports flax, which the other figures do not need

    n = len(frames)
    rows = [grid(list(frames), [f"frame {t}" for t in range(n)], "input (pan)")]
    panels, errors = {"input": list(frames)}, {}
    for mode, title in VIDEO_MODES:
        t0 = time.perf_counter()
        outs: list[np.ndarray] = []
        r = video_style.run_gatys(params, frames, jnp.asarray(style)[None], config, mode=mode,
                                  video_iterations=video_iterations, temporal_weight=temporal_weight,
                                  on_frame=lambda i, img: outs.append(np.asarray(img)))
        print(f"  {mode}: temporal error {r.temporal_error:.4g} in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
        maps = error_maps(outs, frames)
        panels[mode], panels[f"{mode} error"], errors[mode] = outs, maps, r.temporal_error
        rows.append(grid(outs, [f"t={t}" for t in range(n)], f"{title}: temporal error {r.temporal_error:.4f}"))
        rows.append(grid(maps, ["" for _ in outs], f"error map x{VIDEO_ERROR_GAIN:g}"))
    picture = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), (255, 255, 255))
    y = 0
    for row in rows:
        picture.paste(row, (0, y))
        y += row.height
    return VideoFigure(picture, panels, errors)


@dataclasses.dataclass(frozen=True)
class FigureOptions:
    """The script's own flags; the optimizer and layers come from GatysConfig."""

    weights: str | None = cli.option(None, "VGG-19 weights", metavar="PATH", default_help="download once and cache")
    content: str | None = cli.option(None, "content image", metavar="PATH", default_help="the built-in photo")
    style: str | None = cli.option(None, "style image", metavar="PATH", default_help="the built-in painting")
    size: int = cli.option(256, "image HEIGHT in pixels", min=">0")
    iterations: int = cli.option(300, "iterations of every run", min=">0")
    adam_learning_rates: tuple[float, ...] = cli.option((0.005, 0.02, 0.1), "Adam step sizes compared with L-BFGS",
                                                        min=">0")
    figures: tuple[str, ...] = cli.option(DEFAULT_FIGURES, "which figures to draw", choices=FIGURES)
    output_dir: str = cli.option("figures", "where the PNG files go", metavar="PATH")
    video_frames: int = cli.option(5, "frames of the video figure (a pan across the content image)", min=">0")
    video_iterations: int = cli.option(100, "video figure: iterations of each frame after the first (the first "
                                       "and every independent frame get --iterations)", min=">0")
    temporal_weight: float = cli.option(100.0, "video figure: weight of the temporal loss", min=">0")


_FROM_CONFIG = ("optimizer", "content_layers", "style_layers")


def build_parser() -> cli.ArgumentParser:
    """The figures parser: :class:`FigureOptions` plus the optimizer and layers of GatysConfig."""
    skip = [f.name for f in dataclasses.fields(gatys.GatysConfig) if f.name not in _FROM_CONFIG]
    return cli.build_parser("figures.py", __doc__.split("\n\n")[0],
                            [(FigureOptions, ()), (gatys.GatysConfig, skip)])


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for name in args.figures:
        check_choice("figure", name, FIGURES, "--figures")
    content = imageio.resize(imageio.load_image(args.content or imageio.default_content_path(),
                                                what="content image"), height=args.size)
    style = imageio.resize(imageio.load_image(args.style or imageio.default_style_path(),
                                              what="style image"), height=args.size)
    base = gatys.GatysConfig(iterations=args.iterations, optimizer=args.optimizer,
                             content_layers=args.content_layers, style_layers=args.style_layers)
    min_side = vgg.min_image_size(base.layers)
    deepest = max(base.layers, key=vgg.LAYERS.index)
    imageio.check_min_size(content, min_side, "content image", layer=deepest)
    imageio.check_min_size(style, min_side, "style image", layer=deepest)
    frames = pan_frames(content, args.video_frames) if "video" in args.figures else None
    if frames is not None:
        imageio.check_min_size(frames[0], min_side, "video frame", layer=deepest, flag="--video-frames")
    params = weights.resolve_weights("vgg19", args.weights)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    def stylize(config: gatys.GatysConfig) -> gatys.RunResult:
        t0 = time.perf_counter()
        result = gatys.run(params, content[None], style[None], config, chunk=min(args.iterations, 50))
        print(f"  {config.optimizer} color={config.color} layers={len(config.style_layers)} "
              f"lr={config.lr:g}: loss {result.terms['total']:.4g} in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
        return result

    written = []
    if "color" in args.figures:
        print("colour controls", file=sys.stderr)
        images, labels = [content, style], ["content", "style"]
        for mode in color.COLOR_MODES:
            images.append(stylize(dataclasses.replace(base, color=mode)).image)
            labels.append(mode)
        written.append(_save(out / "color_controls.png", grid(images, labels, "colour control")))

    curves = {}
    if "optimizers" in args.figures or "curves" in args.figures:
        print("optimizers", file=sys.stderr)
        lbfgs = base.optimizer if base.optimizer != "adam" else gatys.GatysConfig().optimizer
        runs = [("L-BFGS", dataclasses.replace(base, optimizer=lbfgs, learning_rate=None))]
        runs += [(f"Adam {lr:g}", dataclasses.replace(base, optimizer="adam", learning_rate=lr))
                 for lr in args.adam_learning_rates]
        images, labels = [], []
        for label, config in runs:
            result = stylize(config)
            images.append(result.image)
            labels.append(label)
            curves[label] = (list(range(len(result.losses))), result.losses)
        if "optimizers" in args.figures:
            written.append(_save(out / "optimizers.png", grid(
                images, labels, f"optimizers, {args.iterations} iterations each")))
    if "curves" in args.figures:
        picture = plot.line_plot(curves, title="total loss", x_label="iteration", y_label="loss", log_y=True)
        written.append(_save(out / "loss_curves.png", picture))

    if "layers" in args.figures:
        print("style layers", file=sys.stderr)
        images, labels = [], []
        layers = base.style_layers
        for k in range(1, len(layers) + 1):
            images.append(stylize(dataclasses.replace(base, style_layers=layers[:k])).image)
            labels.append(layers[0] if k == 1 else f"{layers[0]}..{layers[k - 1]}")
        written.append(_save(out / "style_layers.png", grid(images, labels, "style layers")))

    if "video" in args.figures:
        print("video: independent frames vs warm start + temporal loss", file=sys.stderr)
        fig = video_figure(params, frames, style, base, video_iterations=args.video_iterations,
                           temporal_weight=args.temporal_weight)
        written.append(_save(out / "video_consistency.png", fig.picture))
    for path in written:
        print(path)
    return 0


def main(argv=None) -> int:
    """Runs the script; returns the exit status (0, 2 on user errors, 130 when interrupted)."""
    return cli.run_main(_main, argv, weights_message=cli.weights_flags({"vgg19": "--weights"}))


if __name__ == "__main__":
    sys.exit(main())
