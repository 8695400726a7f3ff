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

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import color as colormod
from nst_jax import driver, guides, losses, solvers, vgg
from nst_jax.driver import Progress, RunResult  # noqa: F401 (the run's types, public here too)
from nst_jax.errors import ConfigError, InputImageError, check_choice, normalized_weights

Array = jax.Array

OPTIMIZERS: tuple[str, ...] = solvers.OPTIMIZERS
INITS: tuple[str, ...] = ("content", "noise", "image")
# The report names layers by conv block (conv4_2 means the conv followed by its ReLU, "All
# convolutional layers terminate with a ReLU"); the features it compares are the rectified ones.
DEFAULT_CONTENT_LAYERS: tuple[str, ...] = ("relu4_2",)
DEFAULT_STYLE_LAYERS: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
DTYPES: tuple[str, ...] = ("float32", "bfloat16")
DEFAULT_CHUNK = 10  # iterations per compiled call of run() between callbacks


def _field(default: Any, help: str, **metadata: Any) -> Any:  # noqa: A002 - argparse vocabulary
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


@dataclasses.dataclass(frozen=True)
class GatysConfig:
    """Static settings of one optimization (hashable; changing one recompiles).

    Loss weights are *not* here: they are traced arguments (:class:`LossWeights`) so that a sweep
    over them is one compiled program.
    """

    # metadata["help"] etc. describe the field as a command-line flag (nst_jax.cli generates nst-gatys from them).
    content_layers: tuple[str, ...] = _field(DEFAULT_CONTENT_LAYERS, "VGG layers of the content loss", group="loss")
    style_layers: tuple[str, ...] = _field(DEFAULT_STYLE_LAYERS, "VGG layers of the style loss", group="loss")
    iterations: int = _field(600, "iterations of the optimizer", group="optimization")
    # optax-lbfgs: measured faster than jaxopt on CPU (README, Performance)
    optimizer: str = _field("optax-lbfgs", "optax-lbfgs = optax L-BFGS (measured fastest), lbfgs = jaxopt "
                            "L-BFGS, adam", group="optimization", choices=OPTIMIZERS)
    learning_rate: float | None = _field(None, "Adam step size or L-BFGS maximum step", group="optimization",
                                         min=">0", default_help="0.02 for Adam, 1.0 for L-BFGS")
    history_size: int = _field(10, "L-BFGS memory", group="optimization", min=">0")
    pooling: str = _field("max", "VGG pooling", group="loss", choices=vgg.POOLINGS)
    init: str = _field("content", "starting image", group="optimization", choices=INITS)
    init_noise: float = _field(0.1, "std of the white noise added to the start (pixel range [0, 1])",
                               group="optimization", min=">=0")
    remat: bool = _field(False, "recompute activations in the backward pass (jax.checkpoint per VGG block): "
                         "slower; saves little memory on the CPU backend, where XLA keeps most activations anyway",
                         group="system")
    compute_dtype: str = _field("float32", "compute dtype of the VGG convolutions (Gram and losses stay float32)",
                                group="system", flag="--dtype", choices=DTYPES)
    # Colour control (Gatys et al. 2017, report §V-A), applied around the optimization.
    color: str = _field("none", "keep the content's colours: 'luminance' transfers style on the luminance only "
                        "and keeps the content's chroma; 'histogram' recolours the style to the content's colour "
                        "mean and covariance first; 'histogram-from-style' recolours the content to the style's",
                        group="color", choices=colormod.COLOR_MODES)
    color_space: str = _field("ycbcr", "luminance/chroma split of --color luminance", group="color",
                              choices=colormod.COLOR_SPACES)
    color_transform: str = _field("eig", "linear map of the histogram modes (A with A Σs Aᵀ = Σc): eigenvalue "
                                  "square roots (eig), Cholesky factors (chol) or the symmetric (optimal "
                                  "transport) solution (sym)", group="color", choices=colormod.COLOR_TRANSFORMS)

    def __post_init__(self):
        vgg.check_layers(self.content_layers, flag="--content-layers")
        vgg.check_layers(self.style_layers, flag="--style-layers")
        check_choice("optimizer", self.optimizer, OPTIMIZERS, "--optimizer")
        check_choice("init", self.init, INITS, "--init")
        check_choice("pooling", self.pooling, vgg.POOLINGS, "--pooling")
        check_choice("compute dtype", self.compute_dtype, DTYPES, "--dtype")
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
    if config.init == "image":  # no noise drawn (nor its generator compiled) for a given start
        if image is None:
            raise ConfigError("--init image needs --init-image PATH")
        return image.astype(jnp.float32)
    noise = config.init_noise * jax.random.normal(key, content.shape, jnp.float32)
    if config.init == "content":
        return content.astype(jnp.float32) + noise
    # "noise": around mid-gray so that the std matches --init-noise, clipped to the image range.
    return jnp.clip(0.5 + (noise if config.init_noise > 0 else 0.0), 0.0, 1.0)


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
    return new_content, new_styles[0] if single else new_styles, None if init is None else prepare_image(init, config)


def prepare_image(image: Array, config: GatysConfig) -> Array:
    """An image in the space the optimizer works in under ``config.color`` (what :func:`prepare_inputs`
    does to ``init``): in luminance mode the gray RGB image of its luminance, else unchanged.

    Applied to an output of :func:`finish_output` it gives back the optimized image up to clipping.
    """
    if config.color != "luminance":
        return image
    return colormod.to_luminance_rgb(jnp.clip(colormod.luminance(image, config.color_space), 0.0, 1.0))


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
    chunk: int = DEFAULT_CHUNK,
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


if __name__ == "__main__":
    from nst_jax.cli.gatys import console

    console()
