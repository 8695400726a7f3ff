"""Coarse-to-fine Gatys synthesis for high resolutions (Gatys et al. 2017 §6, report §V-B).

The first level runs the full optimization at a low resolution (``n ~ 600`` iterations); every later
level starts from the previous result upsampled (bicubic) to its size, with the content and style
images resampled *from the source images* at that size, and runs a few more iterations
(``n* ~ 100``). The coarse levels are cheap and fix the large-scale layout; the fine levels only add
detail, which also suppresses the low-level noise of single-scale synthesis at high resolution.

:func:`run_multiscale` is host-side (it resizes NumPy images with :func:`nst_jax.image.resize`) and
drives any runner with the contract of :func:`nst_jax.gatys.run` (e.g. ``nst_jax.tiling.run_tiled``
with its ``tile_size`` bound), so tiling applies at every level. Colour control is applied here, per
level, around the runner (:func:`nst_jax.gatys.prepare_inputs` before it, the driver's
:func:`~nst_jax.driver.finisher` after it), so any runner gets it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from nst_jax import driver, gatys, guides
from nst_jax import image as imageio
from nst_jax.errors import ConfigError, NonFiniteLossError

# Report §V-B: ~600 iterations at the first level, ~100 at each later one.
FIRST_LEVEL_ITERATIONS = 600
LATER_LEVEL_ITERATIONS = 100
# --multiscale halves the output size down to about this many pixels (height).
SMALLEST_AUTO_SIZE = 256

Runner = Callable[..., driver.RunResult]


def auto_sizes(size: int, smallest: int | None = None) -> tuple[int, ...]:
    """Level sizes for ``--multiscale``: ``size`` halved while the half stays >= ``smallest``.

    ``auto_sizes(1024) == (256, 512, 1024)``, ``auto_sizes(700) == (350, 700)``, and a size below
    ``2 * smallest`` is a single level. ``smallest`` defaults to :data:`SMALLEST_AUTO_SIZE`.
    """
    smallest = SMALLEST_AUTO_SIZE if smallest is None else smallest
    if size < 1:
        raise ConfigError(f"--size must be >= 1, got {size}")
    sizes = [int(size)]
    while sizes[0] // 2 >= smallest:
        sizes.insert(0, sizes[0] // 2)
    return tuple(sizes)


def check_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
    """Returns ``sizes`` as a tuple after checking that they are positive and strictly increasing.

    Raises:
      ConfigError: empty, non-positive or not increasing.
    """
    sizes = tuple(int(s) for s in sizes)
    if not sizes:
        raise ConfigError("--sizes needs at least one size, e.g. --sizes 512,1024")
    if any(s < 1 for s in sizes):
        raise ConfigError(f"--sizes must be positive, got {','.join(map(str, sizes))}")
    if any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise ConfigError(f"--sizes must increase from coarse to fine, got {','.join(map(str, sizes))}; "
                          f"e.g. --sizes {','.join(map(str, sorted(set(sizes))))}")
    return sizes


def level_iterations(levels: int, iterations: Sequence[int] | int | None = None,
                     flag: str = "--iterations") -> tuple[int, ...]:
    """Iterations per level: the report's 600 then 100s by default; one number applies to all.

    ``flag`` names the option in error messages (``--video-iterations`` for later video frames).

    Raises:
      ConfigError: a list whose length is neither 1 nor ``levels``, or a negative count.
    """
    if iterations is None:
        return (FIRST_LEVEL_ITERATIONS,) + (LATER_LEVEL_ITERATIONS,) * (levels - 1)
    its = (int(iterations),) if np.ndim(iterations) == 0 else tuple(int(i) for i in iterations)
    if any(i < 0 for i in its):
        raise ConfigError(f"{flag} must be >= 0, got {','.join(map(str, its))}")
    if len(its) == 1:
        return its * levels
    if len(its) != levels:
        raise ConfigError(f"{flag} has {len(its)} values for {levels} levels; give one number, "
                          "or one per --sizes entry")
    return its


@dataclasses.dataclass
class Level:
    """What one level did; ``as_dict`` is its entry in the CLI's metrics JSON."""

    size: int  # output height at this level
    iterations: int  # completed iterations
    final_loss: float
    seconds: float  # wall time of the level, compilation included
    losses: list[float]

    def as_dict(self) -> dict:
        return {"size": self.size, "iterations": self.iterations, "final_loss": self.final_loss,
                "seconds": self.seconds}


@dataclasses.dataclass
class MultiscaleResult:
    result: driver.RunResult  # the last level run (its image is the output)
    levels: list[Level]

    @property
    def interrupted(self) -> bool:
        return self.result.interrupted


def _resize_to(image: np.ndarray, height: int, width: int | None = None) -> np.ndarray:
    return imageio.resize(np.asarray(image, np.float32), height=height, width=width)


def run_multiscale(
    params,
    content: np.ndarray,
    styles: Sequence[np.ndarray],
    config: gatys.GatysConfig = gatys.GatysConfig(),
    weights: gatys.LossWeights | None = None,
    *,
    sizes: Sequence[int],
    iterations: Sequence[int] | int | None = None,
    style_scale: float | Sequence[float] = 1.0,
    key: jax.Array | None = None,
    init: np.ndarray | None = None,
    blend_weights: Sequence[float] | None = None,
    content_masks: np.ndarray | None = None,
    style_masks: Sequence[np.ndarray | None] | None = None,
    chunk: int = 10,
    callback: Callable[[int, driver.Progress, Callable[[], np.ndarray]], None] | None = None,
    runner: Runner = gatys.run,
    snapshot_every: int = 0,
) -> MultiscaleResult:
    """Stylizes from coarse to fine, each level starting from the previous one's result.

    Args:
      params: VGG-19 params.
      content: the SOURCE content image ``(H0, W0, 3)`` in [0, 1] (full resolution).
      styles: the source style images ``(Hs, Ws, 3)``.
      config: static settings; ``iterations`` and ``init`` are set per level.
      weights: loss weights (shared by all levels).
      sizes: output height of each level, increasing; the last is the output's.
      iterations: per level (see :func:`level_iterations`).
      style_scale: style height relative to the level's size, one number or one per style.
      key: PRNG key of the init noise (only the first level adds noise; later ones start from the
        previous result).
      init: source starting image for ``config.init == "image"`` (first level only).
      blend_weights: one weight per style.
      content_masks: ``(K, H0, W0)`` guides over the source content (spatial control), resampled
        to each level's size.
      style_masks: one ``(Hs, Ws)`` mask or None per source style image.
      chunk: iterations per compiled call.
      callback: ``callback(level_index, progress, get_image)`` after every chunk of every level;
        ``progress.iteration`` counts within the level.
      runner: :func:`nst_jax.gatys.run` or a function with its contract (e.g. tiled).
      snapshot_every: passed to the runner: the callback also sees every multiple of it (per level).

    Returns:
      :class:`MultiscaleResult`; its ``result.image`` has the last level's size. On Ctrl-C the
      level in progress stops and the result is that level's image (``interrupted`` is True).

    Raises:
      ConfigError: bad sizes or iteration counts.
      NonFiniteLossError: as :func:`nst_jax.gatys.run`, with ``err.image`` colour-restored and
        ``err.level`` the index of the failing level.
    """
    sizes = check_sizes(sizes)
    its = level_iterations(len(sizes), iterations)
    if weights is None:
        weights = gatys.loss_weights(config)
    if key is None:
        key = jax.random.key(0)
    content = np.asarray(content, np.float32)
    scales = np.broadcast_to(np.asarray(style_scale, np.float64), (len(styles),)).tolist()
    # The runner sees colour-prepared images; colour is handled here so any runner gets it.
    plain = dataclasses.replace(config, color="none")
    levels: list[Level] = []
    previous: np.ndarray | None = None
    result: driver.RunResult | None = None
    for index, (size, n) in enumerate(zip(sizes, its)):
        t0 = time.perf_counter()
        level_content = _resize_to(content, size)
        h, w = level_content.shape[:2]
        level_styles = [_resize_to(s, max(int(round(size * scale)), 1))[None] for s, scale in zip(styles, scales)]
        level_style_masks = None
        if style_masks is not None:
            level_style_masks = [None if m is None else np.asarray(guides.resize_masks(
                np.asarray(m, np.float32)[None], *s.shape[1:3]))[0] for m, s in zip(style_masks, level_styles)]
        level_masks = None if content_masks is None else guides.resize_masks(content_masks, h, w)
        if previous is None:
            level_config = dataclasses.replace(plain, iterations=n)
            start = None if init is None else _resize_to(init, h, w)[None]
        else:
            # Report §V-B: the upscaled previous result initializes the next level.
            level_config = dataclasses.replace(plain, iterations=n, init="image")
            start = _resize_to(previous, h, w)[None]
        original = level_content[None]
        prep_content, prep_styles, start = gatys.prepare_inputs(original, level_styles, config, start)

        finish = driver.finisher(original, color=config.color, color_space=config.color_space)

        try:
            result = runner(params, prep_content, prep_styles, level_config, weights,
                            key=key, init=start, blend_weights=blend_weights,
                            chunk=chunk, callback=_level_callback(callback, index, finish), snapshot_every=snapshot_every,
                            **_mask_kwargs(level_masks, level_style_masks))
        except NonFiniteLossError as err:
            err.image = finish(err.image)
            err.level = index
            raise
        result.image = finish(result.image)
        levels.append(Level(size, result.iterations, result.terms["total"], time.perf_counter() - t0,
                            result.losses))
        previous = result.image
        if result.interrupted:
            break
    return MultiscaleResult(result, levels)


def _level_callback(callback, index: int, finish):
    """The runner's callback for level ``index``: ``callback(index, progress, get_image)`` with images
    colour-restored by ``finish``; None without a callback."""
    if callback is None:
        return None
    return lambda progress, get_image: callback(index, progress, lambda: finish(get_image()))


def _mask_kwargs(content_masks, style_masks) -> dict:
    # Only gatys.run knows spatial control; other runners are called without the keywords.
    out = {}
    if content_masks is not None:
        out["content_masks"] = content_masks
    if style_masks is not None and any(m is not None for m in style_masks):
        out["style_masks"] = style_masks
    return out
