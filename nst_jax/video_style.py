"""Stylizing videos: Gatys with optical-flow warm start and temporal loss, and batched AdaIN.

Gatys (Ruder, Dosovitskiy and Brox 2016, "Artistic style transfer for videos"): frame t starts from
the stylized frame t-1 warped by the optical flow (:mod:`nst_jax.flow`), and a temporal loss
``temporal_weight * 1/D sum_k c_k (x_k - w_k)^2`` (their eq. 7, D = H W C) pulls it toward that
warped frame where forward and backward flow agree (c = 1). The first frame gets the full
``config.iterations``, later ones ``video_iterations``. The per-frame step :func:`stylize_frame`
is pure and jittable; :func:`run_gatys` is the host loop over frames.

Example (research API)::

    targets = video_style.style_targets(params, frames[0], style, config)
    out0, _ = video_style.stylize_frame(None, None, frames[0], params, targets, weights, config)
    back, fwd = flow.flows(frames[0], frames[1])
    mask = flow.consistency_mask(back, fwd)
    out1, _ = video_style.stylize_frame(flow.warp(out0, back), mask, frames[1], params, targets,
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

from nst_jax import adain, flow, gatys, losses, solvers, vgg
from nst_jax.errors import ConfigError, check_choice

Array = jax.Array
VIDEO_MODES: tuple[str, ...] = ("temporal", "warm", "independent")


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


def _program_config(config: gatys.GatysConfig) -> gatys.GatysConfig:
    """``config`` without what the compiled per-frame programs do not depend on.

    Neither the iteration count (traced) nor the colour mode (applied outside the optimization)
    is part of a program, so configs that differ only there share one compilation.
    """
    return dataclasses.replace(config, iterations=0, color="none", color_space="ycbcr", color_transform="eig")


def frame_program(config: gatys.GatysConfig, first: bool):
    """The compiled :func:`stylize_frame` for ``config`` (cached; iterations and colour are not static).

    ``first=True``: ``(frame, params, targets, weights, iterations)``, started from ``config.init``;
    else ``(warped, mask, frame, params, targets, weights, temporal_weight, iterations)``.

    Both run ONE compiled optimization: the first frame is the later-frame program started from
    ``gatys.initial_image`` with an all-zero mask and temporal weight 0, which is exactly what
    :func:`stylize_frame` does for ``prev_warped=None`` (the same objective, start and solver), so a
    clip compiles the expensive solver loop once, not twice.
    """
    config = _program_config(config)
    step = _frame_program(config)
    if not first:
        return step
    start = _initial_program(config)

    def first_frame(frame, params, targets, weights, iterations):
        x0 = start(frame)
        return step(x0[0], jnp.zeros(frame.shape[1:3], jnp.float32), frame, params, targets, weights, 0.0,
                    iterations)

    return first_frame


@functools.lru_cache(maxsize=8)
def _frame_program(config: gatys.GatysConfig):
    return jax.jit(lambda warped, mask, frame, params, targets, weights, tw, iterations: stylize_frame(
        warped, mask, frame, params, targets, weights, config, temporal_weight=tw, iterations=iterations))


@functools.lru_cache(maxsize=8)
def _initial_program(config: gatys.GatysConfig):
    return jax.jit(lambda frame: gatys.initial_image(frame, config, jax.random.key(0)))


@functools.lru_cache(maxsize=8)
def _style_terms_program(config: gatys.GatysConfig):
    return jax.jit(lambda x, params, targets, weights: gatys.loss_terms(
        x, params, targets._replace(content=content_features(params, x, config)), weights, config))


def _style_terms(x, params, targets, weights, config):
    return _style_terms_program(_program_config(config))(x, params, targets, weights)


@jax.jit
def _mask_and_warp(prev: Array, back: Array, fwd: Array) -> tuple[Array, Array]:
    return flow.warp(prev, back), flow.consistency_mask(back, fwd)


_temporal_error = jax.jit(flow.temporal_error)


class VideoResult(NamedTuple):
    frames: int  # frames written
    seconds_per_frame: float  # median wall time per frame after the first (compiling) one
    temporal_error: float | None  # mean over frames t >= 1 of flow.temporal_error, None for 1 frame
    style_loss: float  # mean unweighted style loss over frames (Gatys), nan for AdaIN
    interrupted: bool
    first_frame_seconds: float


def run_gatys(params: vgg.Params, frames: Iterable[np.ndarray], style, config: gatys.GatysConfig,
              weights: gatys.LossWeights | None = None, *, video_iterations: int = 100,
              temporal_weight: float = 1e2, mode: str = "temporal", flow_method: str = "dis",
              blend_weights: Sequence[float] | None = None,
              on_frame: Callable[[int, np.ndarray], None] | None = None) -> VideoResult:
    """Host loop of Ruder et al. (2016) over ``frames`` ((H, W, 3) float arrays in [0, 1]).

    ``on_frame(index, image)`` receives each stylized frame (colour restored, clipped) as soon as
    it is done (the caller writes it). Ctrl-C (KeyboardInterrupt, also from ``on_frame``) stops
    after the current frame; the result says ``interrupted``.

    Args:
      mode: ``"temporal"`` (warm start + temporal loss), ``"warm"`` (warm start from the warped
        previous frame only) or ``"independent"`` (every frame from ``config.init``, full
        ``config.iterations``: the baseline).
      video_iterations: iterations of frames after the first (``temporal`` and ``warm``).
      temporal_weight: weight of the temporal loss relative to the Gatys objective.
    """
    check_choice("video mode", mode, VIDEO_MODES)
    if video_iterations < 0 or not np.isfinite(temporal_weight) or temporal_weight < 0:
        raise ConfigError(f"--video-iterations must be >= 0 and --temporal-weight finite and >= 0, got "
                          f"{video_iterations} and {temporal_weight}")
    weights = gatys.loss_weights(config) if weights is None else weights
    first_prog, next_prog = frame_program(config, True), frame_program(config, False)
    targets = None
    prev_frame = prev_x = prev_out = None
    seconds, errors, style_losses = [], [], []
    done, interrupted = 0, False
    try:
        for index, frame in enumerate(frames):
            t0 = time.perf_counter()
            original = jnp.asarray(frame, jnp.float32)[None]
            prepared, prepared_style, _ = gatys.prepare_inputs(original, style, config)
            if targets is None:
                # Deviation: colour modes that depend on the content (style recoloured to it,
                # luminance matched to it) use the first frame for the whole clip, so that the
                # style targets do not change from frame to frame.
                targets = style_targets(params, prepared, prepared_style, config, blend_weights)
            back = fwd = None
            if prev_frame is not None:
                back, fwd = flow.flows(prev_frame, np.asarray(frame), flow_method)
            if prev_x is None or mode == "independent":
                x, _ = first_prog(prepared, params, targets, weights, config.iterations)
            else:
                warped, mask = _mask_and_warp(prev_x[0], back, fwd)
                tw = temporal_weight if mode == "temporal" else 0.0
                x, _ = next_prog(warped, mask, prepared, params, targets, weights, tw, video_iterations)
            out = gatys.finish_output(x, original, config)[0]
            terms = _style_terms(x, params, targets, weights, config)
            style_losses.append(float(terms["style"]))
            if prev_out is not None:
                _, mask = _mask_and_warp(prev_out, back, fwd)
                errors.append(float(_temporal_error(out, prev_out, back, mask)))
            out_np = np.asarray(jax.device_get(out))
            seconds.append(time.perf_counter() - t0)
            if on_frame is not None:
                on_frame(index, out_np)
            done += 1
            prev_frame, prev_x, prev_out = np.asarray(frame), x, out
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
