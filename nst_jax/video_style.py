"""Stylizing videos: Gatys with optical-flow warm start and temporal loss, and batched AdaIN.

Gatys (Ruder, Dosovitskiy and Brox 2016, "Artistic style transfer for videos"): frame t starts from
the stylized frame t-1 warped by the optical flow (:mod:`nst_jax.flow`), and a temporal loss
``temporal_weight * 1/D sum_k c_k (x_k - w_k)^2`` (their eq. 7, D = H W C) pulls it toward that
warped frame where forward and backward flow agree (c = 1). The first frame gets the full
``config.iterations``, later ones ``video_iterations``. The per-frame step :func:`stylize_frame`
is pure and jittable; :func:`run_gatys` is the host loop over frames: every frame runs the
coarse-to-fine loop of :mod:`nst_jax.multiscale` (one level by default) with :func:`run_frame`, the
driver-stepped frame, as its runner, so colour control and coarse to fine work per frame as for a
still image.

Example (research API)::

    targets = video_style.style_targets(params, frames[0], style, config)
    out0, _ = video_style.stylize_frame(None, None, frames[0], params, targets, weights, config)
    back, fwd = flow.flows(frames[0], frames[1])
    mask = flow.consistency_mask(back, fwd)
    out1, _ = video_style.stylize_frame(flow.warp(out0[0], back, "lanczos3"), mask, frames[1], params, targets,
                                        weights, config, temporal_weight=1e2, iterations=100)

AdaIN (Huang and Belongie 2017) frames are stylized in batches by one compiled program per frame
size, the style statistics computed once (:func:`adain_frames`); ``smoothing`` blends each output
with the previous output warped by the optical flow where the flow is consistent
(:func:`blend_with_previous`). Smoothing the content's relu4_1 mean and std over time instead was
measured first and does not reduce flicker: AdaIN's flicker is local, not in those statistics.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import adain, driver, flow, gatys, losses, multiscale, solvers, vgg
from nst_jax.errors import ConfigError, check_choice

Array = jax.Array
VIDEO_MODES: tuple[str, ...] = ("temporal", "warm", "independent")
DEFAULT_TEMPORAL_WEIGHT = 100.0
DEFAULT_VIDEO_ITERATIONS = 100


def _make_solver(fun, config: gatys.GatysConfig) -> solvers.Solver:
    return solvers.make_solver(fun, optimizer=config.optimizer, learning_rate=config.learning_rate,
                               history_size=config.history_size, iterations=max(config.iterations, 1))


# ----------------------------------------------------------------------------------------------
# Gatys video (Ruder et al. 2016)


def style_targets(params: vgg.Params, frame: Array, style, config: gatys.GatysConfig,
                  blend_weights: Sequence[float] | None = None) -> gatys.Targets:
    """Targets of the first frame; their style Gram matrices serve every frame of the clip.

    ``frame`` and ``style`` are the images the optimizer sees (after ``gatys.prepare_inputs``).
    """
    return gatys.compute_targets(params, frame, style, config, blend_weights)


def content_features(params: vgg.Params, frame: Array, config: gatys.GatysConfig) -> dict[str, Array]:
    dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else None
    return vgg.features(params, frame, config.content_layers, pooling=config.pooling, remat=config.remat,
                        dtype=dtype)


def temporal_loss(image: Array, warped: Array, mask: Array) -> Array:
    """Ruder et al. (2016) eq. 7: 1/D sum_k c_k (x_k - w_k)^2, D = H W C; mask (H, W) broadcast over C."""
    return jnp.mean(mask[..., None] * (image - warped) ** 2)


def frame_objective(image, params, targets, weights, warped, mask, temporal_weight, config) -> Array:
    """Gatys objective (``gatys.objective``) plus ``temporal_weight * temporal_loss``."""
    return (gatys.objective(image, params, targets, weights, config)
            + temporal_weight * temporal_loss(image[0], warped, mask))


def stylize_frame(prev_warped: Array | None, mask: Array | None, frame: Array, params: vgg.Params,
                  targets: gatys.Targets, weights: gatys.LossWeights, config: gatys.GatysConfig, *,
                  temporal_weight: float | Array = 0.0, iterations: int | Array | None = None,
                  key: Array | None = None) -> tuple[Array, Array]:
    """Optimizes one frame (pure, jittable with ``config`` static).

    Args:
      prev_warped: (H, W, 3) previous stylized frame warped onto this one (the start and the
        temporal target), or None for the first frame (start from ``gatys.initial_image``).
      mask: (H, W) consistency weights (:func:`nst_jax.flow.consistency_mask`), or None (all 0).
      frame: (1, H, W, 3) content frame as the optimizer sees it (colour-prepared).
      targets: from :func:`style_targets`; only its style Gram matrices are used.
      temporal_weight: weight of :func:`temporal_loss` (traced: changing it does not recompile).
      iterations: solver iterations (traced; default ``config.iterations``).

    Returns:
      ``(image, loss)``: the optimized (1, H, W, 3) image (not clipped) and the final objective.
    """
    targets = targets._replace(content=content_features(params, frame, config))
    h, w = frame.shape[1:3]
    if prev_warped is None:
        x = gatys.initial_image(frame, config, jax.random.key(0) if key is None else key)
        prev_warped, mask = x[0], jnp.zeros((h, w), jnp.float32)
    else:
        x = prev_warped[None].astype(jnp.float32)
        mask = jnp.zeros((h, w), jnp.float32) if mask is None else mask
    n = config.iterations if iterations is None else iterations
    args = (params, targets, weights, prev_warped, mask, jnp.asarray(temporal_weight, jnp.float32))
    solver = _make_solver(functools.partial(frame_objective, config=config), config)
    state = solver.init(x, *args)
    x, state = jax.lax.fori_loop(0, n, lambda _, c: solver.update(*c, *args), (x, state))
    return x, frame_objective(x, *args, config)


# ----------------------------------------------------------------------------------------------
# The host side: one frame through the driver, every frame through the coarse-to-fine loop.


def frame_terms(image, params, targets, weights, warped, mask, temporal_weight, config) -> dict[str, Array]:
    """:func:`nst_jax.gatys.loss_terms` plus ``temporal`` (:func:`temporal_loss`, unweighted) and
    ``temporal_weighted``, with ``total`` including it (the value :func:`frame_objective` minimizes)."""
    terms = gatys.loss_terms(image, params, targets, weights, config)
    t = temporal_loss(image[0], warped, mask)
    tw = temporal_weight * t
    return {**terms, "temporal": t, "temporal_weighted": tw, "total": terms["total"] + tw}


def _program_config(config: gatys.GatysConfig) -> gatys.GatysConfig:
    """``config`` without the fields no compiled frame program depends on: the start (``init``,
    ``init_noise``: the image is made outside) and, through :func:`nst_jax.driver.program_key`, the
    iteration count and colour control. The first frame and the later ones share one program."""
    default = gatys.GatysConfig()
    return driver.program_key(dataclasses.replace(config, init=default.init, init_noise=default.init_noise))[0]


def _build_program(config: gatys.GatysConfig, chunk: int) -> driver.Program:
    solver = gatys.solver_for(functools.partial(frame_objective, config=config), config)
    return driver.build_program(solver, functools.partial(frame_terms, config=config), chunk)


@functools.lru_cache(maxsize=8)
def _content_program(config: gatys.GatysConfig):
    return jax.jit(lambda params, frame: content_features(params, frame, config))


@functools.lru_cache(maxsize=8)
def _targets_program(config: gatys.GatysConfig, blend: tuple[float, ...] | None):
    return jax.jit(lambda params, frame, styles: style_targets(params, frame, list(styles), config, blend))


def _resized(image: np.ndarray, h: int, w: int) -> np.ndarray:
    from nst_jax import image as imageio

    return imageio.resize(np.asarray(image, np.float32), height=h, width=w)


def run_frame(params: vgg.Params, content: Array, style, config: gatys.GatysConfig = gatys.GatysConfig(),
              weights: gatys.LossWeights | None = None, *, key: Array | None = None, init: Array | None = None,
              blend_weights: Sequence[float] | None = None, chunk: int = gatys.DEFAULT_CHUNK,
              callback: Callable | None = None, snapshot_every: int = 0, warped: np.ndarray | None = None,
              mask: np.ndarray | None = None, temporal_weight: float = 0.0,
              style_grams: dict | None = None) -> driver.RunResult:
    """:func:`nst_jax.gatys.run` for one frame: the Gatys objective plus ``temporal_weight`` times
    :func:`temporal_loss` toward ``warped`` on ``mask``, stepped by the driver (:func:`nst_jax.driver.drive`).

    It has the runner contract of :func:`nst_jax.multiscale.run_multiscale`, which calls it once per
    level with the keywords below bound (``functools.partial``); every level resizes ``warped`` and
    ``mask`` to its own size.

    Args:
      content, style, config, weights, key, init, blend_weights, chunk, callback, snapshot_every: as
        for :func:`nst_jax.gatys.run`.
      warped: (H, W, 3) previous stylized frame warped onto this one, in the optimizer's colour space
        (:func:`nst_jax.gatys.prepare_image`), at any size (resized bicubically to the content's);
        None: no temporal loss.
      mask: (H, W) consistency weights in [0, 1] of ``warped`` (:func:`nst_jax.flow.consistency_mask`),
        resized the same way (so a coarse level weights a pixel by the consistent share of its area).
      temporal_weight: the temporal loss weight (traced: changing it does not recompile).
      style_grams: a cache of the style Gram matrices by frame size, shared by the frames of a clip:
        the first frame fills it from its ``style`` (its colour preparation, see :func:`run_gatys`),
        later frames reuse them. None: computed from ``style`` every call.

    Returns:
      :class:`nst_jax.driver.RunResult`; its ``terms`` add ``temporal`` and ``temporal_weighted``.
    """
    if weights is None:
        weights = gatys.loss_weights(config)
    if key is None:
        key = jax.random.key(0)
    original = content
    content, style, init = gatys.prepare_inputs(content, style, config, init)
    h, w = content.shape[1:3]
    program_config = _program_config(config)
    grams = None if style_grams is None else style_grams.get((h, w))
    if grams is None:
        styles = tuple(style) if isinstance(style, (list, tuple)) else (style,)
        blend = None if blend_weights is None else tuple(float(b) for b in blend_weights)
        grams = _targets_program(program_config, blend)(params, content, styles).style_grams
        if style_grams is not None:
            style_grams[(h, w)] = grams
    targets = gatys.Targets(_content_program(program_config)(params, content), grams)
    if warped is None:
        warped_l, mask_l, temporal_weight = np.zeros((h, w, 3), np.float32), np.zeros((h, w), np.float32), 0.0
    else:
        warped_l = _resized(warped, h, w)
        ones = np.ones((h, w), np.float32)
        mask_l = ones if mask is None else _resized(np.asarray(mask, np.float32)[..., None], h, w)[..., 0]
    x = gatys.initial_image(content, config, key, init)
    prog = driver.program(driver.program_key(program_config, "gatys-video", chunk),
                          lambda c: _build_program(c, chunk))
    args = (params, targets, weights, jnp.asarray(warped_l), jnp.asarray(mask_l),
            jnp.asarray(temporal_weight, jnp.float32))
    return driver.drive(prog, x, args, iterations=config.iterations, chunk=chunk, snapshot_every=snapshot_every,
                        callback=callback,
                        finish=driver.finisher(original, color=config.color, color_space=config.color_space))


@jax.jit
def _mask_and_warp(prev: Array, back: Array, fwd: Array) -> tuple[Array, Array]:
    return flow.warp(prev, back), flow.consistency_mask(back, fwd)


# The previous output is warped onto frame t with Lanczos-3 sampling by default, not bilinear (Ruder
# et al.'s code): a bilinear warp at fractional flow (a zoom, a sub-pixel pan, flow noise on a still
# scene) blurs the stylized texture, and the temporal loss then holds each frame at that blur
# (measured: 1.26x the style loss of independent frames on the zoom clip with bilinear, 1.12x with
# Lanczos-3; README, Video).
DEFAULT_INTERPOLATION = "lanczos3"


@functools.partial(jax.jit, static_argnames="interpolation")
def _target_and_mask(prev: Array, back: Array, fwd: Array,
                     interpolation: str = DEFAULT_INTERPOLATION) -> tuple[Array, Array]:
    """The previous output warped onto this frame (the start and temporal target) and the mask."""
    warped = flow.warp(prev, back, interpolation)
    return jnp.clip(warped, 0.0, 1.0), flow.consistency_mask(back, fwd)


_temporal_error = jax.jit(flow.temporal_error)  # Ruder et al.'s measure with its bilinear warp


class VideoResult(NamedTuple):
    frames: int  # frames written
    seconds_per_frame: float  # median wall time per frame after the first (compiling) one
    temporal_error: float | None  # mean over frames t >= 1 of flow.temporal_error, None for 1 frame
    style_loss: float  # mean unweighted style loss over frames (Gatys, finest level), nan for AdaIN
    interrupted: bool
    first_frame_seconds: float


def video_sizes(sizes: Sequence[int] | None, height: int) -> tuple[int, ...]:
    """The level heights of a clip whose frames are ``height`` pixels high: ``(height,)`` without
    ``sizes``, else ``sizes`` checked (:func:`nst_jax.multiscale.check_sizes`) and ending at ``height``.

    Raises:
      ConfigError: bad sizes, or the last one is not the frame height.
    """
    if sizes is None:
        return (int(height),)
    sizes = multiscale.check_sizes(sizes)
    if sizes[-1] != height:
        raise ConfigError(f"the last of --sizes ({sizes[-1]}) must be the frame height ({height}); the frames "
                          "are decoded at the finest level's size")
    return sizes


def run_gatys(params: vgg.Params, frames: Iterable[np.ndarray], style, config: gatys.GatysConfig,
              weights: gatys.LossWeights | None = None, *,
              video_iterations: int | Sequence[int] = DEFAULT_VIDEO_ITERATIONS,
              temporal_weight: float = DEFAULT_TEMPORAL_WEIGHT, mode: str = "temporal", flow_method: str = "dis",
              blend_weights: Sequence[float] | None = None,
              on_frame: Callable[[int, np.ndarray], None] | None = None,
              sizes: Sequence[int] | None = None, iterations: int | Sequence[int] | None = None,
              style_scale: float | None = None, key: Array | None = None,
              chunk: int = gatys.DEFAULT_CHUNK, interpolation: str = DEFAULT_INTERPOLATION) -> VideoResult:
    """Host loop of Ruder et al. (2016) over ``frames`` ((H, W, 3) float arrays in [0, 1]).

    Every frame runs :func:`nst_jax.multiscale.run_multiscale` (one level without ``sizes``) with
    :func:`run_frame` as the runner, so colour control and coarse to fine work as for a still image.
    The first frame starts from ``config.init``; frame t >= 1 starts its coarsest level from frame
    t-1's output warped by the backward flow (computed once per frame pair, at the frame size, and
    resized to the level), every level's temporal loss pulls toward that warped frame on the
    consistency mask resized to the level, and every finer level starts from the coarser result
    upsampled. Deviation: colour modes that depend on the content (style recoloured to it, luminance
    matched to it) take the style's Gram matrices from the first frame for the whole clip, so that
    the style targets do not change from frame to frame.

    ``on_frame(index, image)`` receives each stylized frame (colour restored, clipped) as soon as
    it is done (the caller writes it). Ctrl-C (KeyboardInterrupt, also from ``on_frame``) stops
    after the last finished frame; the result says ``interrupted``.

    Args:
      mode: ``"temporal"`` (warm start + temporal loss), ``"warm"`` (warm start from the warped
        previous frame only) or ``"independent"`` (every frame from ``config.init`` with the first
        frame's iterations: the baseline).
      video_iterations: iterations of frames after the first (``temporal`` and ``warm``): one number
        for every level or one per level.
      temporal_weight: weight of the temporal loss relative to the Gatys objective.
      sizes: level heights, coarse to fine, the last one the frames' height (:func:`video_sizes`).
      iterations: iterations of the first frame, one number for every level or one per level;
        default ``config.iterations`` at every level.
      style_scale: style height relative to each level's height (as ``nst-gatys --style-scale``);
        default: every style keeps its own height at the finest level and is scaled with the frame
        at coarser ones.
      key: PRNG key of the first frame's init noise (default ``jax.random.key(0)``).
      chunk: iterations per compiled call (:func:`nst_jax.driver.drive`).
      interpolation: how the previous output is warped onto the frame (:func:`nst_jax.flow.warp`):
        ``"lanczos3"`` keeps the stylized texture sharp at fractional flow; ``"bilinear"`` (Ruder et
        al.'s code) blurs it, and the temporal loss then holds the frame at the blur. The reported
        ``temporal_error`` uses the bilinear warp of Ruder et al.'s measure either way.
    """
    check_choice("video mode", mode, VIDEO_MODES)
    check_choice("interpolation", interpolation, flow.INTERPOLATIONS)
    if not np.isfinite(temporal_weight) or temporal_weight < 0:
        raise ConfigError(f"--temporal-weight must be finite and >= 0, got {temporal_weight}")
    weights = gatys.loss_weights(config) if weights is None else weights
    key = jax.random.key(0) if key is None else key
    styles = [np.asarray(s, np.float32).reshape(np.shape(s)[-3:]) for s in
              (style if isinstance(style, (list, tuple)) else [style])]
    n_levels = 1 if sizes is None else len(multiscale.check_sizes(sizes))
    first_its = multiscale.level_iterations(n_levels, config.iterations if iterations is None else iterations)
    later_its = multiscale.level_iterations(n_levels, video_iterations, "--video-iterations")
    style_grams: dict = {}  # filled by the first frame's levels
    levels = scales = None
    prev_frame = prev_out = None
    seconds, errors, style_losses = [], [], []
    done, interrupted = 0, False
    try:
        for index, frame in enumerate(frames):
            t0 = time.perf_counter()
            frame = np.asarray(frame, np.float32)
            if levels is None:
                levels = video_sizes(sizes, frame.shape[0])
                scales = ([s.shape[0] / levels[-1] for s in styles] if style_scale is None
                          else [style_scale] * len(styles))
            level_config, its, init, warped, mask = config, first_its, None, None, None
            if prev_out is not None:
                back, fwd = flow.flows(prev_frame, frame, flow_method)
                warped_out, mask = _target_and_mask(jnp.asarray(prev_out), back, fwd, interpolation)
                if mode != "independent":
                    # The start (and the temporal target) in the optimizer's colour space.
                    warped = np.asarray(gatys.prepare_image(warped_out, config))
                    level_config, its, init = dataclasses.replace(config, init="image"), later_its, warped
            tw = temporal_weight if mode == "temporal" and warped is not None else 0.0
            runner = functools.partial(run_frame, warped=warped if tw > 0 else None,
                                       mask=None if mask is None else np.asarray(mask), temporal_weight=tw,
                                       style_grams=style_grams)
            ms = multiscale.run_multiscale(params, frame, styles, level_config, weights, sizes=levels,
                                           iterations=its, style_scale=scales, key=key, init=init,
                                           blend_weights=blend_weights, chunk=chunk, runner=runner)
            if ms.interrupted:  # Ctrl-C inside the optimization: this frame is not finished
                interrupted = True
                break
            out = ms.result.image
            style_losses.append(ms.result.terms["style"])
            if prev_out is not None:
                errors.append(float(_temporal_error(out, prev_out, back, mask)))
            seconds.append(time.perf_counter() - t0)
            if on_frame is not None:
                on_frame(index, out)
            done += 1
            prev_frame, prev_out = frame, out
    except KeyboardInterrupt:
        interrupted = True
    return VideoResult(done, float(np.median(seconds[1:])) if len(seconds) > 1 else float("nan"),
                       float(np.mean(errors)) if errors else None,
                       float(np.mean(style_losses)) if style_losses else float("nan"), interrupted,
                       seconds[0] if seconds else float("nan"))


# ----------------------------------------------------------------------------------------------
# AdaIN video


class StyleStats(NamedTuple):
    mean: Array  # (1, 1, 1, C) relu4_1 mean of the (interpolated) style
    std: Array


def style_stats(vgg_params: vgg.Params, styles: Sequence[Array],
                interpolation_weights: Sequence[float] | None = None) -> StyleStats:
    """The style's relu4_1 mean and std, computed once per clip (weighted over several styles).

    AdaIN is affine in the style statistics, so interpolating the statistics equals
    ``adain.stylize``'s interpolation of AdaIN outputs.
    """
    stats = [losses.mean_std(adain.encode(vgg_params, s)[adain.ENCODER_LAYER]) for s in styles]
    w = np.full(len(stats), 1.0 / len(stats)) if interpolation_weights is None else np.asarray(
        interpolation_weights, np.float32)
    if w.shape != (len(stats),):
        raise ConfigError(f"got {w.size} interpolation weights for {len(stats)} styles; give one per style")
    mean = sum(float(wk) * m[:1] for wk, (m, _) in zip(w, stats))
    std = sum(float(wk) * s[:1] for wk, (_, s) in zip(w, stats))
    return StyleStats(mean, std)


def adain_frames(vgg_params: vgg.Params, decoder_params: vgg.Params, frames: Array, style: StyleStats,
                 alpha: float | Array = 1.0) -> Array:
    """Stylizes a batch of frames (B, H, W, 3) with AdaIN (report eqs. 8, 11); pure and jittable.

    Each frame is normalized with its own relu4_1 statistics and given the precomputed ``style``
    statistics; equal to ``adain.stylize`` with the same style, without re-encoding the style.
    """
    feat = adain.encode(vgg_params, frames)[adain.ENCODER_LAYER]
    mean, std = losses.mean_std(feat)
    t = (feat - mean) / std * style.std + style.mean  # report eq. 8
    alpha = jnp.asarray(alpha, jnp.float32)
    t = alpha * t + (1.0 - alpha) * feat  # report eq. 11
    h, w = frames.shape[1:3]
    return jnp.clip(adain.decode(decoder_params, t)[:, :h, :w, :], 0.0, 1.0)


adain_frames_jit = jax.jit(adain_frames)


@jax.jit
def blend_with_previous(out: Array, prev_out: Array, backward: Array, forward: Array,
                        smoothing: float | Array) -> Array:
    """Temporal smoothing: ``(1 - s c) out + s c warp(prev_out)`` with c the consistency mask.

    ``prev_out`` is the previous *smoothed* output, so this is an exponential moving average along
    the optical flow; pixels where the flow is inconsistent (occlusions, motion boundaries) keep
    the frame's own stylization.
    """
    warped, mask = _mask_and_warp(prev_out, backward, forward)
    m = jnp.asarray(smoothing, jnp.float32) * mask[..., None]
    return (1.0 - m) * out + m * warped


def _shard(batch: np.ndarray):
    devices = jax.local_devices()
    if len(devices) < 2 or batch.shape[0] % len(devices):
        return batch
    mesh = jax.sharding.Mesh(np.asarray(devices), ("frames",))
    return jax.device_put(batch, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("frames")))


def run_adain(vgg_params: vgg.Params, decoder_params: vgg.Params, frames: Iterable[np.ndarray],
              styles: Sequence[Array], *, alpha: float = 1.0, smoothing: float = 0.0, batch: int = 8,
              interpolation_weights: Sequence[float] | None = None, preserve_color: bool = False,
              color_mode: str = "eig", on_frame: Callable[[int, np.ndarray], None] | None = None,
              flow_method: str = "dis", measure: bool = False) -> VideoResult:
    """Stylizes ``frames`` in batches of ``batch`` (the last batch padded, so one program per size).

    With several local devices the batch is sharded over them (``NamedSharding`` along frames)
    when it divides evenly. ``smoothing`` > 0 blends each output with the previous one warped by
    the optical flow (:func:`blend_with_previous`). ``preserve_color`` recolours the style to the
    FIRST frame's colours (deviation from still images: recolouring per frame would change the style
    statistics from frame to frame). ``measure`` computes ``temporal_error`` (else None; it costs
    two flows per frame, which smoothing computes anyway). Ctrl-C stops after the frames handed to
    ``on_frame``.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ConfigError(f"--temporal-smoothing must be in [0, 1), got {smoothing}")
    if batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {batch}")
    adain.check_compatible(vgg_params, decoder_params)
    stats = None
    pending: list[np.ndarray] = []
    seconds, errors = [], []
    done, interrupted = 0, False
    prev_in = prev_out = None

    def flush():
        nonlocal done, prev_in, prev_out
        n = len(pending)
        block = np.stack(pending + [pending[-1]] * (batch - n)).astype(np.float32)
        t0 = time.perf_counter()
        out = np.asarray(jax.device_get(adain_frames_jit(vgg_params, decoder_params, _shard(block), stats,
                                                         float(alpha))))[:n]
        seconds.append((time.perf_counter() - t0) / n)
        for k in range(n):
            img = out[k]
            if (smoothing > 0 or measure) and prev_in is not None:
                back, fwd = flow.flows(prev_in, pending[k], flow_method)
                if smoothing > 0:
                    img = np.asarray(blend_with_previous(img, prev_out, back, fwd, float(smoothing)))
                if measure:
                    _, mask = _mask_and_warp(prev_out, back, fwd)
                    errors.append(float(_temporal_error(img, prev_out, back, mask)))
            if on_frame is not None:
                on_frame(done, img)
            done += 1
            prev_in, prev_out = pending[k], img
        pending.clear()

    try:
        for frame in frames:
            if stats is None:
                first = jnp.asarray(frame, jnp.float32)[None]
                styles_in = [adain.preserve_color(first, s, color_mode) for s in styles] if preserve_color \
                    else list(styles)
                stats = style_stats(vgg_params, styles_in, interpolation_weights)
            pending.append(np.asarray(frame, np.float32))
            if len(pending) == batch:
                flush()
        if pending:
            flush()
    except KeyboardInterrupt:
        interrupted = True
    return VideoResult(done, float(np.median(seconds[1:])) if len(seconds) > 1 else
                       (seconds[0] if seconds else float("nan")),
                       float(np.mean(errors)) if errors else None, float("nan"), interrupted,
                       seconds[0] if seconds else float("nan"))


# ----------------------------------------------------------------------------------------------
# Files in, file out (what the command lines call)


def _sized_frames(info, height: int | None, fps):
    from nst_jax import video

    target = None if height is None or height == info.height else height
    for f in video.read_frames(info.path, height=target, fps=fps):
        yield f


def stylize_file(source, output, stylize: Callable[..., VideoResult], *, height: int | None = None,
                 fps=None, progress: Callable[[int, int | None], None] | None = None) -> dict:
    """Reads ``source``, runs ``stylize(frames, on_frame=...)`` and writes ``output`` with the audio.

    ``stylize`` is :func:`run_gatys` or :func:`run_adain` with everything but ``frames`` and
    ``on_frame`` bound (``functools.partial``). Frames are written as they come, with their input
    timestamps; Ctrl-C (KeyboardInterrupt in ``stylize`` or ``progress``) finishes the video written
    so far. ``progress(done, total)`` is called after each frame (the CLI draws its bar there).

    Returns:
      metrics: ``frames``, ``fps`` (float), ``seconds_per_frame``, ``temporal_error`` (None unless
      measured), ``interrupted``, and ``style_loss`` for Gatys.

    Raises:
      InputImageError / OutputPathError / ConfigError: see :mod:`nst_jax.video`.
    """
    from nst_jax import video

    video.check_output(output, source=source)
    info = video.probe(source)
    times = []
    frames_in = _sized_frames(info, height, fps)

    def images():
        for f in frames_in:
            times.append(f.time)
            yield f.image

    rate = info.fps if fps is None or not info.is_folder else fps
    with video.VideoWriter(output, rate, audio_from=None if info.is_folder else source) as writer:
        def on_frame(i, img):
            writer.write(img, times[i])
            if progress is not None:
                progress(i + 1, info.frames)

        result = stylize(images(), on_frame=on_frame)
    # Frames in the file: a frame written before an interrupt in ``progress`` counts.
    metrics = {"frames": writer.frames, "fps": float(rate), "seconds_per_frame": result.seconds_per_frame,
               "first_frame_seconds": result.first_frame_seconds, "temporal_error": result.temporal_error,
               "interrupted": result.interrupted}
    if np.isfinite(result.style_loss):
        metrics["style_loss"] = result.style_loss
    return metrics
