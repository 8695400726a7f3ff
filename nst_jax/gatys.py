"""Gatys et al. (2016) style transfer by optimizing the pixels of an image.

The core is pure and jittable:

* :func:`compute_targets` precomputes the content features and the style Gram matrices once;
* :func:`objective` is the total loss of report eq. 4, ``alpha * L_c + beta * sum_l w_l * L_s``;
* the solvers (jaxopt L-BFGS, optax L-BFGS, Adam) come from :mod:`nst_jax.solvers`;
* :func:`stylize` runs a whole optimization inside one compiled program (``lax.scan``), so it can be
  ``jax.vmap``-ed over loss weights or seeds for hyper-parameter sweeps (:func:`sweep`).

Perceptual controls of Gatys et al. (2017), report §V:

* colour (``GatysConfig.color``): :func:`prepare_inputs` recolours or converts the images before
  the optimization and :func:`finish_output` restores the content's chroma after it (both are
  applied by :func:`stylize` and :func:`run`; see :mod:`nst_jax.color`);
* space: per-region styles with guided Gram matrices (``content_masks`` of :func:`compute_targets`,
  see :mod:`nst_jax.guides`);
* scale: coarse-to-fine synthesis lives in :mod:`nst_jax.multiscale`.

:func:`run` steps the same solver from the host in jitted chunks (:func:`nst_jax.driver.drive`) so a
caller can report progress, save intermediate images and stop cleanly on Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import color as colormod
from nst_jax import driver, guides, losses, solvers, vgg
from nst_jax.driver import Progress, RunResult  # noqa: F401 (the run's types, public here too)
from nst_jax.errors import ConfigError, InputImageError, NonFiniteLossError, check_choice, normalized_weights

Array = jax.Array

OPTIMIZERS: tuple[str, ...] = solvers.OPTIMIZERS
INITS: tuple[str, ...] = ("content", "noise", "image")
# The report names layers by conv block (conv4_2 means the conv followed by its ReLU, "All
# convolutional layers terminate with a ReLU"); the features it compares are the rectified ones.
DEFAULT_CONTENT_LAYERS: tuple[str, ...] = ("relu4_2",)
DEFAULT_STYLE_LAYERS: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


@dataclasses.dataclass(frozen=True)
class GatysConfig:
    """Static settings of one optimization (hashable; changing one recompiles).

    Loss weights are *not* here: they are traced arguments (:class:`LossWeights`) so that a sweep
    over them is one compiled program.
    """

    content_layers: tuple[str, ...] = DEFAULT_CONTENT_LAYERS
    style_layers: tuple[str, ...] = DEFAULT_STYLE_LAYERS
    iterations: int = 600
    optimizer: str = "optax-lbfgs"  # measured faster than jaxopt on CPU (README, Performance)
    learning_rate: float | None = None  # None: 1.0 for L-BFGS (report), 0.02 for Adam
    history_size: int = 10
    pooling: str = "max"
    init: str = "content"
    init_noise: float = 0.1
    remat: bool = False
    compute_dtype: str = "float32"
    # Colour control (Gatys et al. 2017, report §V-A), applied around the optimization.
    color: str = "none"  # one of color.COLOR_MODES
    color_space: str = "ycbcr"  # luminance mode: which Y/chroma split (color.COLOR_SPACES)
    color_transform: str = "eig"  # histogram modes: which A with A Σs Aᵀ = Σc (color.COLOR_TRANSFORMS)

    def __post_init__(self):
        vgg.check_layers(self.content_layers, flag="--content-layers")
        vgg.check_layers(self.style_layers, flag="--style-layers")
        check_choice("optimizer", self.optimizer, OPTIMIZERS, "--optimizer")
        check_choice("init", self.init, INITS, "--init")
        check_choice("pooling", self.pooling, vgg.POOLINGS, "--pooling")
        check_choice("compute dtype", self.compute_dtype, ("float32", "bfloat16"), "--dtype")
        check_choice("colour mode", self.color, colormod.COLOR_MODES, "--color")
        check_choice("colour space", self.color_space, colormod.COLOR_SPACES, "--color-space")
        check_choice("colour transform", self.color_transform, colormod.COLOR_TRANSFORMS, "--color-transform")
        if self.iterations < 0:
            raise ConfigError(f"--iterations must be >= 0, got {self.iterations}")
        if self.history_size < 1:
            raise ConfigError(f"--history-size must be >= 1, got {self.history_size}")
        if self.init_noise < 0:
            raise ConfigError(f"--init-noise must be >= 0, got {self.init_noise}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ConfigError(f"--learning-rate must be > 0, got {self.learning_rate}")

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.content_layers + self.style_layers))

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return solvers.default_learning_rate(self.optimizer)


class LossWeights(NamedTuple):
    """Traced loss weights: alpha (content), beta (style), per-layer omega, and TV."""

    content: Array
    style: Array
    style_layers: Array  # (len(style_layers),)
    tv: Array


def loss_weights(
    config: GatysConfig,
    content: float = 1e-2,
    style: float = 1.0,
    style_layers: Sequence[float] | None = None,
    tv: float = 0.0,
) -> LossWeights:
    """Builds :class:`LossWeights`; defaults are the report's alpha = 1e-2, beta = 1, omega = 1/5.

    Concrete values are checked; traced ones (inside ``jax.vmap``, as in
    ``jax.vmap(lambda a: loss_weights(config, content=a))(alphas)``) cannot be and are not.
    """
    n = len(config.style_layers)
    if style_layers is None:
        style_layers = [1.0 / n] * n
    if len(style_layers) != n:
        raise ConfigError(
            f"--style-layer-weights has {len(style_layers)} values for {n} style layers; give one per layer"
        )
    for name, v in (("--content-weight", content), ("--style-weight", style), ("--tv-weight", tv)):
        if _concrete(v) and not (np.isfinite(v) and v >= 0):
            raise ConfigError(f"{name} must be a finite number >= 0, got {v}")
    if _concrete(style_layers) and any(not (np.isfinite(w) and w >= 0) for w in style_layers):
        raise ConfigError(f"--style-layer-weights must be finite and >= 0, got {list(style_layers)}")
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    return LossWeights(f32(content), f32(style), f32(style_layers), f32(tv))


def _concrete(value) -> bool:
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(value))


def stack_weights(weights: Sequence[LossWeights]) -> LossWeights:
    """Stacks several :class:`LossWeights` into one batch (leading axis) for :func:`sweep`."""
    if not weights:
        raise ConfigError("stack_weights needs at least one LossWeights")
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *weights)


class Targets(NamedTuple):
    """What the generated image is compared with; computed once per content/style pair.

    Without spatial control ``style_grams`` holds one (blended) Gram matrix per layer and
    ``region_masks`` is None. With spatial control (``content_masks`` of :func:`compute_targets`)
    ``style_grams`` holds one Gram matrix per style/region, ``(K, C, C)``, and ``region_masks`` the
    guides at each style layer's resolution, ``(K, H_l, W_l)``; the style loss is then the guided
    loss of :func:`nst_jax.guides.guided_layer_loss`.
    """

    content: dict[str, Array]  # layer -> features of the content image
    style_grams: dict[str, Array]  # layer -> (1, C, C) or (K, C, C) Gram normalized by positions
    region_masks: dict[str, Array] | None = None  # layer -> (K, H_l, W_l) guides over the output


def _features(params, image, layers, config: GatysConfig):
    dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else None
    return vgg.features(params, image, layers, pooling=config.pooling, remat=config.remat, dtype=dtype)


def _style_gram(params, style: Array, mask: Array | None, config: GatysConfig) -> dict[str, Array]:
    """Normalized Gram matrices of one style image, restricted to ``mask`` (over the style) if given."""
    feats = _features(params, style, config.style_layers, config)
    if mask is None:
        return {n: losses.gram(feats[n], normalize=True) for n in config.style_layers}
    mask = jnp.asarray(mask, jnp.float32)
    if mask.shape != style.shape[1:3]:
        raise InputImageError(f"a style mask is {mask.shape[1]}x{mask.shape[0]} but its style image is "
                              f"{style.shape[2]}x{style.shape[1]}; resize the mask to its style image")
    per_layer = guides.layer_masks(mask[None], config.style_layers)
    return {n: losses.masked_gram(feats[n], per_layer[n]) for n in config.style_layers}


def compute_targets(
    params: vgg.Params,
    content: Array,
    styles: Sequence[Array] | Array,
    config: GatysConfig,
    blend_weights: Sequence[float] | None = None,
    *,
    content_masks: Array | None = None,
    style_masks: Sequence[Array | None] | None = None,
) -> Targets:
    """Precomputes content features and (blended or per-region) style Gram matrices.

    Args:
      params: VGG-19 params.
      content: (1, H, W, 3) content image in [0, 1].
      styles: one (1, Hs, Ws, 3) style image, or a sequence of them (sizes may differ).
      config: layers and pooling.
      blend_weights: one weight per style (normalized to sum to 1); the targets are the weighted sum
        of the styles' normalized Gram matrices, as in neural-style's ``-style_blend_weights``.
        Not used with ``content_masks``.
      content_masks: spatial control (Gatys et al. 2017): ``(K, H, W)`` guides over the content
        frame, one per style; region ``r`` of the output takes style ``r``
        (see :mod:`nst_jax.guides`).
      style_masks: one ``(Hs, Ws)`` mask (or None) per style image: only the masked part of that
        style image defines its Gram matrices.

    Raises:
      ConfigError: blend weights or masks do not match the styles.
      InputImageError: a mask does not have its image's size.
    """
    if not isinstance(styles, (list, tuple)):
        styles = [styles]
    if style_masks is None:
        style_masks = [None] * len(styles)
    if len(style_masks) != len(styles):
        raise ConfigError(f"--style-mask has {len(style_masks)} masks for {len(styles)} style images; "
                          "give one per style")
    if content_masks is not None and blend_weights is not None:
        raise ConfigError("--style-blend-weights cannot be combined with --content-mask (each region "
                          "takes one style); drop one of them")
    if content_masks is None:
        if blend_weights is None:
            blend_weights = [1.0] * len(styles)
        if len(blend_weights) != len(styles):
            raise ConfigError(
                f"--style-blend-weights has {len(blend_weights)} values for {len(styles)} style images; "
                "give one per style"
            )
        blend_weights = normalized_weights(blend_weights, "--style-blend-weights")
    content_feats = _features(params, content, config.content_layers, config)
    per_style = [_style_gram(params, s, m, config) for s, m in zip(styles, style_masks)]
    if content_masks is not None:
        content_masks = jnp.asarray(content_masks, jnp.float32)
        if content_masks.ndim != 3 or content_masks.shape[0] != len(styles):
            raise ConfigError(f"spatial control needs one content mask per style ({len(styles)}), got masks "
                              f"of shape {tuple(content_masks.shape)}")
        if content_masks.shape[1:] != content.shape[1:3]:
            raise InputImageError(f"the content masks are {content_masks.shape[2]}x{content_masks.shape[1]} "
                                  f"but the content is {content.shape[2]}x{content.shape[1]}; resize the masks")
        grams = {n: jnp.concatenate([g[n] for g in per_style]) for n in config.style_layers}
        return Targets(content_feats, grams, guides.layer_masks(content_masks, config.style_layers))
    grams = {name: 0.0 for name in config.style_layers}
    for g, w in zip(per_style, blend_weights):
        for name in config.style_layers:
            grams[name] = grams[name] + w * g[name]
    return Targets(content_feats, grams)


def loss_terms(
    image: Array, params: vgg.Params, targets: Targets, weights: LossWeights, config: GatysConfig
) -> dict[str, Array]:
    """Unweighted content, style and TV losses, their weighted contributions and the total (eqs. 1, 3, 4).

    See :func:`weighted_terms` for the keys. With ``targets.region_masks`` the style loss of each layer is the guided loss of Gatys et al.
    (2017) (:func:`nst_jax.guides.guided_layer_loss`), which equals eq. 3 for one full mask.
    """
    feats = _features(params, image, config.layers, config)
    content = sum(losses.content_loss(targets.content[n], feats[n]) for n in config.content_layers)
    if targets.region_masks is None:
        per_layer = [losses.style_layer_loss(targets.style_grams[n], feats[n]) for n in config.style_layers]
    else:
        per_layer = [guides.guided_layer_loss(targets.style_grams[n], feats[n], targets.region_masks[n])
                     for n in config.style_layers]
    style = jnp.sum(weights.style_layers * jnp.stack(per_layer))
    return weighted_terms(content, style, losses.tv_loss(image), weights)


def weighted_terms(content: Array, style: Array, tv: Array, weights: LossWeights) -> dict[str, Array]:
    """The loss terms of eq. 4 by name: raw ``content``, ``style``, ``tv``; ``content_weighted`` =
    alpha * content, ``style_weighted`` = beta * style, ``tv_weighted``; ``total``, their sum."""
    cw, sw, tw = weights.content * content, weights.style * style, weights.tv * tv
    return {"total": cw + sw + tw, "content": content, "style": style, "tv": tv,
            "content_weighted": cw, "style_weighted": sw, "tv_weighted": tw}


def objective(image, params, targets, weights, config: GatysConfig) -> Array:
    """Total loss L_tot = alpha L_c + beta sum_l w_l L_s (+ TV), a scalar to minimize over ``image``."""
    return loss_terms(image, params, targets, weights, config)["total"]


def solver_for(fun: Callable[..., Array], config: GatysConfig) -> solvers.Solver:
    """:func:`nst_jax.solvers.make_solver` with the optimizer settings of ``config``."""
    return solvers.make_solver(fun, optimizer=config.optimizer, learning_rate=config.learning_rate,
                               history_size=config.history_size, iterations=config.iterations)


def initial_image(content: Array, config: GatysConfig, key: Array, image: Array | None = None) -> Array:
    """The starting point: content + white noise (report §IV-B), pure noise, or a given image."""
    noise = config.init_noise * jax.random.normal(key, content.shape, jnp.float32)
    if config.init == "content":
        return content.astype(jnp.float32) + noise
    if config.init == "noise":
        # Noise around mid-gray so that the std matches --init-noise, clipped to the image range.
        return jnp.clip(0.5 + (noise if config.init_noise > 0 else 0.0), 0.0, 1.0)
    if image is None:
        raise ConfigError("--init image needs --init-image PATH")
    return image.astype(jnp.float32)


class Result(NamedTuple):
    image: Array  # (1, H, W, 3), clipped to [0, 1]
    losses: Array  # (iterations + 1,) total loss at the init and after each iteration


# ----------------------------------------------------------------------------------------------
# Colour control around the optimization (Gatys et al. 2017 §5, report §V-A).


def prepare_inputs(
    content: Array,
    style: Array | Sequence[Array],
    config: GatysConfig,
    init: Array | None = None,
) -> tuple[Array, Array | list[Array], Array | None]:
    """Returns the (content, style(s), init) the optimization should see under ``config.color``.

    * ``"none"``: unchanged.
    * ``"histogram"``: every style recoloured to the content's RGB mean and covariance,
      ``rho' = A rho + b`` with ``A`` from ``config.color_transform`` (report eqs. 5-7).
    * ``"histogram-from-style"``: the content recoloured to the (first) style's statistics.
      Deviation: with several styles the first one gives the colours.
    * ``"luminance"``: content, styles and the init image become gray RGB images of their
      luminance (Y of ``config.color_space``), each style's Y matched to the content's mean and std;
      :func:`finish_output` puts the result's Y under the content's chroma.

    Pure and jittable; :func:`stylize` and :func:`run` call it, so research code that calls them
    gets the same colour handling as the CLI.

    Args:
      content: (1, H, W, 3) content image in [0, 1].
      style: one (1, Hs, Ws, 3) style image or a sequence of them.
      config: ``color``, ``color_space`` and ``color_transform`` are read.
      init: optional starting image (converted to luminance in luminance mode).

    Returns:
      ``(content, style, init)`` shaped like the inputs (a single style stays single), in [0, 1].
    """
    if config.color == "none":
        return content, style, init
    single = not isinstance(style, (list, tuple))
    styles = [style] if single else list(style)
    prepared = [colormod.prepare_color(content, s, config.color, transform=config.color_transform,
                                       space=config.color_space) for s in styles]
    new_content = prepared[0][0]
    new_styles = [s for _, s in prepared]
    if config.color == "luminance" and init is not None:
        init = colormod.to_luminance_rgb(jnp.clip(colormod.luminance(init, config.color_space), 0.0, 1.0))
    return new_content, new_styles[0] if single else new_styles, init


def finish_output(image: Array, content: Array, config: GatysConfig) -> Array:
    """Undoes :func:`prepare_inputs` on the optimized image; clips to [0, 1].

    In luminance mode the image's Y is recombined with the chroma of ``content``, which must be the
    ORIGINAL content (not the prepared one) at the image's size; the output then has exactly the
    content's chroma, up to clipping to [0, 1]. Other modes only clip.
    """
    return colormod.restore_color(image, content, config.color, space=config.color_space)


def stylize(
    params: vgg.Params,
    content: Array,
    style: Array | Sequence[Array],
    config: GatysConfig = GatysConfig(),
    weights: LossWeights | None = None,
    key: Array | None = None,
    init: Array | None = None,
    blend_weights: Sequence[float] | None = None,
    *,
    content_masks: Array | None = None,
    style_masks: Sequence[Array | None] | None = None,
) -> Result:
    """Runs the whole Gatys optimization as one pure function (jit- and vmap-compatible).

    Colour control (``config.color``) is applied before and after the optimization
    (:func:`prepare_inputs`, :func:`finish_output`); the loss curve is that of the prepared images.

    Args:
      params: VGG-19 params (see :mod:`nst_jax.weights`).
      content: (1, H, W, 3) content image in [0, 1].
      style: (1, Hs, Ws, 3) style image, or a list of them blended with ``blend_weights``.
      config: static settings (layers, optimizer, iterations, colour, ...).
      weights: traced loss weights; default :func:`loss_weights(config)` (alpha 1e-2, beta 1).
      key: PRNG key for the init noise (default ``jax.random.key(0)``).
      init: starting image when ``config.init == "image"``.
      blend_weights: one weight per style (static: Python floats).
      content_masks, style_masks: spatial control, see :func:`compute_targets`.

    Returns:
      :class:`Result` with the clipped image and the loss curve.

    Example::

        run = jax.jit(nst_jax.gatys.stylize, static_argnames="config")
        out = run(params, content, style, config=GatysConfig(iterations=100))
        # A sweep over content weights, one compiled program (or use sweep()):
        ws = jax.vmap(lambda a: loss_weights(config, content=a))(jnp.array([1e-3, 1e-2, 1e-1]))
        sweep = jax.vmap(lambda w: stylize(params, content, style, config, w))(ws)
    """
    if weights is None:
        weights = loss_weights(config)
    if key is None:
        key = jax.random.key(0)
    original = content
    content, style, init = prepare_inputs(content, style, config, init)
    targets = compute_targets(params, content, style, config, blend_weights,
                              content_masks=content_masks, style_masks=style_masks)
    x0 = initial_image(content, config, key, init)
    solver = solver_for(functools.partial(objective, config=config), config)
    args = (params, targets, weights)
    state = solver.init(x0, *args)

    def step(carry, _):
        x, state = carry
        x, state = solver.update(x, state, *args)
        return (x, state), solver.value(state)

    value0 = solver.value(state)
    (x, state), curve = jax.lax.scan(step, (x0, state), None, length=config.iterations)
    curve = jnp.concatenate([jnp.atleast_1d(value0), curve])
    return Result(finish_output(jnp.clip(x, 0.0, 1.0), original, config), curve)


def sweep(
    params: vgg.Params,
    content: Array,
    style: Array | Sequence[Array],
    config: GatysConfig = GatysConfig(),
    weights: LossWeights | None = None,
    keys: Array | None = None,
    **kwargs,
) -> Result:
    """Runs :func:`stylize` for a batch of loss weights and/or seeds as ONE compiled program.

    Batching is ``jax.vmap`` over :func:`stylize`: every run takes the same number of iterations; an
    L-BFGS line search becomes a batched while loop that stops when the slowest run's search does.
    Both ``"lbfgs"`` (jaxopt) and ``"optax-lbfgs"`` vmap, as does ``"adam"``.

    Args:
      params, content, style, config: as for :func:`stylize` (shared by every run).
      weights: :class:`LossWeights` whose leaves have a leading batch axis (e.g. built with
        ``jax.vmap(lambda a: loss_weights(config, content=a))(alphas)``), or None for the defaults.
      keys: a batch of PRNG keys (``jax.random.split(key, n)``), or None for ``jax.random.key(0)``.
      **kwargs: further :func:`stylize` arguments shared by every run (``blend_weights``,
        ``content_masks``, ...).

    Returns:
      :class:`Result` with a leading batch axis on ``image`` and ``losses``.

    Raises:
      ConfigError: neither ``weights`` nor ``keys`` is batched, or their batch sizes differ.
    """
    sizes = set()
    if weights is not None:
        sizes |= {jnp.shape(leaf)[0] for leaf in jax.tree.leaves(weights) if jnp.ndim(leaf) > 0}
        if jnp.ndim(weights.content) != 1:
            raise ConfigError("sweep needs loss weights with a leading batch axis (content weights of shape (n,))")
    if keys is not None:
        sizes.add(jnp.shape(keys)[0])
    if not sizes:
        raise ConfigError("sweep needs a batch of loss weights or of keys")
    if len(sizes) > 1:
        raise ConfigError(f"sweep got batches of different sizes {sorted(sizes)}; give weights and keys of one size")
    (n,) = sizes
    if weights is None:
        weights = jax.tree.map(lambda v: jnp.broadcast_to(v, (n,) + jnp.shape(v)), loss_weights(config))
    if keys is None:
        keys = jnp.stack([jax.random.key(0)] * n)

    # Blend weights are Python floats that compute_targets normalizes on the host: closed over
    # (static), while the arrays are traced arguments.
    blend = kwargs.pop("blend_weights", None)

    def batched(weights, keys, params, content, style, kwargs):
        def one(w, k):
            return stylize(params, content, style, config, w, k, blend_weights=blend, **kwargs)

        return jax.vmap(one)(weights, keys)

    return jax.jit(batched)(weights, keys, params, content, style, kwargs)


# ----------------------------------------------------------------------------------------------
# Host-side run: chunks of jitted iterations through the one driver (nst_jax.driver).


def _build_program(config: GatysConfig, chunk: int) -> driver.Program:
    solver = solver_for(functools.partial(objective, config=config), config)
    return driver.build_program(solver, functools.partial(loss_terms, config=config), chunk)


def run(
    params: vgg.Params,
    content: Array,
    style: Array | Sequence[Array],
    config: GatysConfig = GatysConfig(),
    weights: LossWeights | None = None,
    *,
    key: Array | None = None,
    init: Array | None = None,
    blend_weights: Sequence[float] | None = None,
    chunk: int = 10,
    callback: Callable[[Progress, Callable[[], np.ndarray]], None] | None = None,
    content_masks: Array | None = None,
    style_masks: Sequence[Array | None] | None = None,
    snapshot_every: int = 0,
) -> RunResult:
    """Runs the optimization from the host in jitted chunks of at most ``chunk`` iterations.

    Produces the same iterates as :func:`stylize`, colour control and spatial control
    (``content_masks``, ``style_masks``: see :func:`compute_targets`) included. After each chunk
    ``callback(progress, get_image)`` is called (the CLI updates its progress bar and saves snapshots
    there); chunks also end at every multiple of ``snapshot_every`` (if > 0), so a callback sees
    every such iteration whatever ``chunk`` is. Ctrl-C (KeyboardInterrupt) stops after the current
    chunk and returns the image so far with ``interrupted=True``. A non-finite loss raises
    :class:`NonFiniteLossError` naming the window of iterations, with the last finite image attached
    as ``err.image``. Images handed out (result, snapshots, ``err.image``) have the colour restored
    (:func:`finish_output`); the losses and ``terms`` are those of the prepared images the optimizer
    saw. See :func:`nst_jax.driver.drive` for timings and evaluation counts.
    """
    if weights is None:
        weights = loss_weights(config)
    if key is None:
        key = jax.random.key(0)
    original = content
    content, style, init = prepare_inputs(content, style, config, init)
    targets, targets_source = _stored_targets(params, content, style, config, blend_weights, content_masks,
                                              style_masks)
    x = initial_image(content, config, key, init)
    prog = driver.program(driver.program_key(config, "gatys", chunk), lambda c: _build_program(c, chunk))
    result = driver.drive(prog, x, (params, targets, weights), iterations=config.iterations, chunk=chunk,
                          snapshot_every=snapshot_every, callback=callback,
                          finish=driver.finisher(original, color=config.color, color_space=config.color_space))
    if targets_source == "traced":
        result.program_source = "traced"
    return result


def _stored_targets(params, content, style, config, blend_weights, content_masks, style_masks):
    """:func:`compute_targets` as one compiled program (through the driver's program store), not op by op."""
    blend = None if blend_weights is None else tuple(float(w) for w in blend_weights)
    styles = tuple(style) if isinstance(style, (list, tuple)) else (style,)
    masks = None if style_masks is None else tuple(style_masks)
    key = driver.program_key(config, "gatys-targets", blend)

    def targets(params, content, styles, content_masks, style_masks):
        t = compute_targets(params, content, list(styles), key[0], blend, content_masks=content_masks,
                            style_masks=None if style_masks is None else list(style_masks))
        return tuple(t)  # built-in containers only: exportable without registered types

    fn = driver.stored_function(key, targets)
    return Targets(*fn(params, content, styles, content_masks, masks)), fn.last_source


# ----------------------------------------------------------------------------------------------
# Command line: python -m nst_jax.gatys


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the None/False of options whose help already says what happens."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _parser():
    from nst_jax import cli

    d = GatysConfig()
    p = cli.ArgumentParser(
        prog="python -m nst_jax.gatys",
        description="Gatys et al. (2016) neural style transfer: optimize an image so its VGG-19 features "
        "match a content photo and its Gram matrices match a style painting, with the perceptual "
        "controls of Gatys et al. (2017): colour, space (per-region styles) and scale (coarse to fine). "
        "With no --content/--style the built-in example images are used.",
        formatter_class=lambda prog: _HelpFormatter(prog, max_help_position=32),
    )
    io = p.add_argument_group("images")
    io.add_argument("--content", help="content image (default: built-in photo)")
    io.add_argument("--style", nargs="+", help="style image(s) (default: built-in painting)")
    io.add_argument("--output", "-o", default="stylized.png", help="output image (.png, .jpg, .webp, .tif)")
    io.add_argument("--size", type=cli.positive(int, "--size"),
                    help="height of the output in pixels (aspect ratio kept); the style is resized to the "
                    "same height (default 512)")
    io.add_argument("--style-scale", type=cli.positive(float, "--style-scale"), default=1.0,
                    help="style height relative to --size")
    io.add_argument("--bits", type=int, choices=(8, 16), default=8, help="bits per channel of a PNG output")
    io.add_argument("--save-every", type=cli.positive(int, "--save-every", allow_zero=True), default=0,
                    help="also save the image every N iterations as OUTPUT_iterN.ext (0: never)")
    io.add_argument("--metrics-json", help="write losses, timings and the config as JSON here")

    lo = p.add_argument_group("loss")
    lo.add_argument("--content-weight", type=cli.positive(float, "--content-weight", True), default=1e-2,
                    help="alpha, weight of the content loss")
    lo.add_argument("--style-weight", type=cli.positive(float, "--style-weight", True), default=1.0,
                    help="beta, weight of the style loss")
    lo.add_argument("--tv-weight", type=cli.positive(float, "--tv-weight", True), default=0.0,
                    help="weight of a total-variation smoothness loss")
    lo.add_argument("--content-layers", type=cli.comma_list(str, "--content-layers"),
                    default=",".join(d.content_layers), help="comma-separated VGG layers for the content loss")
    lo.add_argument("--style-layers", type=cli.comma_list(str, "--style-layers"), default=",".join(d.style_layers),
                    help="comma-separated VGG layers for the style loss")
    lo.add_argument("--style-layer-weights", type=cli.comma_list(float, "--style-layer-weights"),
                    help="one weight per style layer (default: 1/number of layers)")
    lo.add_argument("--style-blend-weights", type=cli.comma_list(float, "--style-blend-weights"),
                    help="one weight per --style image (default: equal)")
    lo.add_argument("--pooling", choices=vgg.POOLINGS, default=d.pooling, help="VGG pooling")

    co = p.add_argument_group("colour control (Gatys et al. 2017)")
    co.add_argument("--color", choices=colormod.COLOR_MODES, default=d.color,
                    help="keep the content's colours: 'luminance' transfers style on the luminance only and "
                    "keeps the content's chroma; 'histogram' recolours the style to the content's colour "
                    "mean and covariance first; 'histogram-from-style' recolours the content to the style's")
    co.add_argument("--color-space", choices=colormod.COLOR_SPACES, default=d.color_space,
                    help="luminance/chroma split of --color luminance")
    co.add_argument("--color-transform", choices=colormod.COLOR_TRANSFORMS, default=d.color_transform,
                    help="linear map of the histogram modes: eigenvalue square roots (eig), Cholesky "
                    "factors (chol) or the symmetric (optimal transport) solution (sym)")

    sp = p.add_argument_group("spatial control (Gatys et al. 2017)")
    sp.add_argument("--content-mask", nargs="+", metavar="PATH",
                    help="where each --style goes on the output: ONE label image over the content (gray "
                    "levels, white = first style ... black = last; for two styles a threshold at mid-gray; "
                    "or colours with --mask-colors), or one grayscale mask per style (white = this style)")
    sp.add_argument("--mask-colors", type=_hex_colors,
                    help="comma-separated label colours (RRGGBB), one per style, for a colour-coded --content-mask")
    sp.add_argument("--style-mask", nargs="+", metavar="PATH",
                    help="one grayscale mask per --style image: only its white part defines that style")

    sc = p.add_argument_group("scale: coarse to fine (Gatys et al. 2017)")
    sc.add_argument("--sizes", type=cli.comma_list(int, "--sizes"),
                    help="output heights of successive levels, e.g. 512,1024; each level starts from the "
                    "previous result upsampled, with content and style resampled from the source files")
    sc.add_argument("--multiscale", action="store_true",
                    help="choose the levels from --size: halve it down to about 256 (1024 -> 256,512,1024)")

    op = p.add_argument_group("optimization")
    op.add_argument("--iterations", type=cli.comma_list(int, "--iterations"),
                    help="iterations, one number for every level or one per --sizes level (default: 600 at "
                    "the first level, 100 at later ones)")
    op.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer,
                    help="optax-lbfgs = optax L-BFGS (default, measured fastest), lbfgs = jaxopt L-BFGS, adam")
    op.add_argument("--learning-rate", type=cli.positive(float, "--learning-rate"),
                    help="Adam step size (default 0.02) or L-BFGS maximum step (default 1.0)")
    op.add_argument("--history-size", type=cli.positive(int, "--history-size"), default=d.history_size,
                    help="L-BFGS memory")
    op.add_argument("--init", choices=INITS, default=d.init, help="starting image")
    op.add_argument("--init-noise", type=cli.positive(float, "--init-noise", True), default=d.init_noise,
                    help="std of the white noise added to the start (pixel range [0, 1])")
    op.add_argument("--init-image", help="starting image for --init image")
    op.add_argument("--seed", type=int, default=0, help="seed of the init noise")
    op.add_argument("--chunk", type=cli.positive(int, "--chunk"), default=10,
                    help="iterations per compiled call between progress updates")

    sy = p.add_argument_group("system")
    sy.add_argument("--weights", help="VGG-19 weights (.pth from torchvision or converted .npz); "
                    "default: download once and cache")
    sy.add_argument("--remat", action="store_true", help="recompute activations in the backward pass "
                    "(jax.checkpoint per VGG block): slower; saves little memory on the CPU backend, where "
                    "XLA keeps most activations anyway")
    sy.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                    help="compute dtype of the VGG convolutions (Gram and losses stay float32)")
    sy.add_argument("--tile-size", type=cli.positive(int, "--tile-size"),
                    help="run VGG on tiles of this many pixels (a multiple of 16 for the default layers) so "
                    "memory no longer grows with the image; the loss stays that of the whole image")
    sy.add_argument("--tile-halo", type=cli.positive(int, "--tile-halo", True),
                    help="context pixels around each tile (default: the receptive field, exact)")
    sy.add_argument("--max-memory", type=cli.positive(float, "--max-memory"),
                    help="memory budget in GiB for the size check (default: the device's memory)")
    sy.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _hex_colors(text: str) -> tuple[tuple[float, float, float], ...]:
    """Parses ``"ff0000,00ff00"`` (``#`` optional) into RGB triples in [0, 1] (an argparse type)."""
    colors = []
    for item in (t.strip().lstrip("#") for t in text.split(",") if t.strip()):
        if len(item) != 6 or any(ch not in "0123456789abcdefABCDEF" for ch in item):
            raise argparse.ArgumentTypeError(f"--mask-colors expects RRGGBB hex colours like ff0000, got {item!r}")
        colors.append(tuple(int(item[i:i + 2], 16) / 255.0 for i in (0, 2, 4)))
    return tuple(colors)


class _Plan(NamedTuple):
    """The CLI's inputs at source resolution (each level resamples them)."""

    content: np.ndarray  # (H0, W0, 3) source
    styles: list[np.ndarray]  # (Hs, Ws, 3) sources
    init: np.ndarray | None
    content_masks: np.ndarray | None  # (K, H0, W0)
    style_masks: list[np.ndarray] | None  # (Hs, Ws) per style


def _levels(args) -> tuple[tuple[int, ...], tuple[int, ...]]:
    from nst_jax import multiscale

    if args.sizes is not None and args.size is not None:
        raise ConfigError("give either --size or --sizes, not both (the last of --sizes is the output height)")
    if args.sizes is not None and args.multiscale:
        raise ConfigError("--multiscale picks the levels from --size; drop it when giving --sizes")
    size = 512 if args.size is None else args.size
    if args.sizes is not None:
        sizes = multiscale.check_sizes(args.sizes)
    elif args.multiscale:
        sizes = multiscale.auto_sizes(size)
    else:
        sizes = (size,)
    return sizes, multiscale.level_iterations(len(sizes), args.iterations)


def _level_shape(source: np.ndarray, height: int) -> tuple[int, int]:
    from nst_jax import image as imageio

    return imageio.size_for_height(source.shape[0], source.shape[1], height)


def _check_aspect(mask: np.ndarray, image: np.ndarray, what: str) -> None:
    (mh, mw), (h, w) = mask.shape[:2], image.shape[:2]
    if abs(mw / mh - w / h) > 0.02 * (w / h):
        raise InputImageError(f"{what} is {mw}x{mh} but its image is {w}x{h}; give a mask with the "
                              "image's aspect ratio")


def _load_inputs(args, config: GatysConfig, sizes: Sequence[int]) -> _Plan:
    from nst_jax import image as imageio

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
    from pathlib import Path

    out = Path(output)
    return out.with_name(f"{out.stem}_iter{iteration:05d}{out.suffix}")


def _last_good_path(output):
    """Where a failed run saves its last good image: beside ``--output``, never over it."""
    from pathlib import Path

    out = Path(output)
    return out.with_name(f"{out.stem}.last-good{out.suffix}")


def _check_style_scale(style_scale: float, size: int) -> None:
    """Refuses a --style-scale whose style height no image can have, before any image is sized.

    A style height above :func:`image.max_pixels` is more pixels than the readers accept even for a
    one-pixel-wide image; smaller heights are left to the memory check, which knows the aspect ratio.
    """
    from nst_jax import image as imageio

    limit = int(imageio.max_pixels())
    if not np.isfinite(style_scale) or not style_scale > 0:
        raise ConfigError(f"--style-scale must be a finite number > 0, got {style_scale}")
    if size * style_scale > limit:
        raise ConfigError(f"--style-scale {style_scale:g} makes the style {size * style_scale:.3g} px high, more "
                          f"pixels than any image may have ({limit / 1e6:.0f} megapixels); lower --style-scale "
                          "(1 gives the style the height of --size)")


def _check_outputs(args) -> None:
    """Refuses an --output, its last-good name or --metrics-json that would replace an input file."""
    from nst_jax import cli

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
        return run
    if args.content_mask or args.style_mask:
        raise ConfigError("spatial control (--content-mask/--style-mask) does not work with --tile-size; "
                          "drop one of them")
    from nst_jax import tiling

    # Check the geometry now, before any image work.
    tiling.tile_grid((1, args.tile_size, args.tile_size, 3), config.layers, args.tile_size, args.tile_halo)
    return functools.partial(tiling.run_tiled, tile_size=args.tile_size, halo=args.tile_halo)


def _check_metrics_path(path) -> None:
    """Refuses a --metrics-json path that cannot be written, before any long job starts."""
    import os
    from pathlib import Path

    from nst_jax.errors import OutputPathError

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
    from nst_jax import memory

    return memory.gatys_bytes(height, width, params, config, backward=backward, tile_size=args.tile_size,
                              tile_halo=args.tile_halo)


def _check_memory(args, config: GatysConfig, plan: _Plan, size: int, params) -> None:
    """Refuses a job whose largest level (output or a style image) would not fit in memory."""
    from nst_jax.errors import MemoryBudgetError

    from nst_jax import memory

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


def _main(argv=None) -> int:
    import json
    import sys

    from tqdm import tqdm

    from nst_jax import cli, compile_cache, multiscale, weights as weights_mod
    from nst_jax import image as imageio

    args = _parser().parse_args(argv)
    compile_cache.enable()  # before the first compile; the library itself never sets it
    sizes, level_its = _levels(args)
    config = GatysConfig(
        content_layers=args.content_layers, style_layers=args.style_layers, iterations=level_its[0],
        optimizer=args.optimizer, learning_rate=args.learning_rate, history_size=args.history_size,
        pooling=args.pooling, init=args.init, init_noise=args.init_noise, remat=args.remat,
        compute_dtype=args.dtype, color=args.color, color_space=args.color_space,
        color_transform=args.color_transform,
    )
    lw = loss_weights(config, args.content_weight, args.style_weight, args.style_layer_weights, args.tv_weight)
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

    def callback(level: int, progress: Progress, get_image):
        done = offsets[level] + progress.iteration
        bar.update(done - bar.n)
        bar.set_postfix(loss=f"{progress.loss:.4g}", **({"size": sizes[level]} if len(sizes) > 1 else {}))
        # The runner cuts its chunks at every multiple of --save-every, so none is skipped.
        if args.save_every and progress.iteration % args.save_every == 0 and done < total:
            imageio.save_image(_snapshot_path(args.output, done), get_image(), bits=args.bits)

    try:
        ms = multiscale.run_multiscale(
            params, plan.content, plan.styles, config, lw, sizes=sizes, iterations=level_its,
            style_scale=args.style_scale, key=jax.random.key(args.seed), init=plan.init,
            blend_weights=args.style_blend_weights, content_masks=plan.content_masks,
            style_masks=plan.style_masks, chunk=args.chunk, callback=callback, runner=runner,
            snapshot_every=args.save_every)
    except NonFiniteLossError as err:
        bar.close()
        # A failed run never changes an existing output: its last good image goes beside it.
        saved = imageio.save_image(_last_good_path(args.output), err.image, bits=args.bits)
        raise NonFiniteLossError(f"{err}; that image was saved as {saved} ({args.output} was not "
                                 "written)") from None
    bar.close()
    result = ms.result
    if args.metrics_json:
        metrics = {
            # Top-level numbers describe the last level, whose image is the output.
            "losses": result.losses,
            "final_loss": result.terms["total"],
            "content_loss": result.terms["content"],
            "style_loss": result.terms["style"],
            "tv_loss": result.terms["tv"],
            "content_weighted": result.terms["content_weighted"],
            "style_weighted": result.terms["style_weighted"],
            "tv_weighted": result.terms["tv_weighted"],
            "evaluations": result.evaluations,
            "evaluations_per_iteration": result.evaluations / result.iterations if result.iterations else None,
            "seconds_per_iteration": result.seconds_per_iteration,
            "compile_seconds": result.compile_seconds,
            "program_source": result.program_source,
            "iterations": result.iterations,
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
        # Before the image: a failed metrics write (disk full) then leaves both files as they were.
        imageio.atomic_write(args.metrics_json, json.dumps(metrics, indent=1))
    imageio.save_image(args.output, result.image, bits=args.bits)
    if result.interrupted:
        print(f"interrupted at iteration {result.iterations} of the {sizes[len(ms.levels) - 1]}-pixel level; "
              f"saved {args.output}", file=sys.stderr)
        return cli.EXIT_INTERRUPTED
    print(f"saved {args.output} (loss {result.terms['total']:.4g} after {result.iterations} iterations"
          f"{f' at {sizes[-1]} px, {len(sizes)} levels' if len(sizes) > 1 else ''})", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    """Entry point of ``python -m nst_jax.gatys`` and the ``nst-gatys`` console script."""
    from nst_jax import cli

    return cli.run_main(_main, argv)


if __name__ == "__main__":
    import sys

    sys.exit(main())
