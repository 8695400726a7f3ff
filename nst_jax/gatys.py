"""Gatys et al. (2016) style transfer by optimizing the pixels of an image.

The core is pure and jittable:

* :func:`compute_targets` precomputes the content features and the style Gram matrices once;
* :func:`objective` is the total loss of report eq. 4, ``alpha * L_c + beta * sum_l w_l * L_s``;
* :func:`make_solver` wraps jaxopt L-BFGS, optax L-BFGS and Adam behind one ``init``/``update``
  interface;
* :func:`stylize` runs a whole optimization inside one compiled program (``lax.scan``), so it can be
  ``jax.vmap``-ed over loss weights or seeds for hyper-parameter sweeps (:func:`sweep`).

Perceptual controls of Gatys et al. (2017), report §V:

* colour (``GatysConfig.color``): :func:`prepare_inputs` recolours or converts the images before
  the optimization and :func:`finish_output` restores the content's chroma after it (both are
  applied by :func:`stylize` and :func:`run`; see :mod:`nst_jax.color`);
* space: per-region styles with guided Gram matrices (``content_masks`` of :func:`compute_targets`,
  see :mod:`nst_jax.guides`);
* scale: coarse-to-fine synthesis lives in :mod:`nst_jax.multiscale`.

:func:`run` is the host-side driver used by the CLI: it steps the same solver in jitted chunks so it
can report progress, save intermediate images and stop cleanly on Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nst_jax import color as colormod
from nst_jax import guides, losses, vgg
from nst_jax.errors import ConfigError, InputImageError, NonFiniteLossError, check_choice, normalized_weights

Array = jax.Array

OPTIMIZERS: tuple[str, ...] = ("lbfgs", "optax-lbfgs", "adam")
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
        return 0.02 if self.optimizer == "adam" else 1.0


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
    """Unweighted content and style losses and the weighted total (report eqs. 1, 3, 4).

    With ``targets.region_masks`` the style loss of each layer is the guided loss of Gatys et al.
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
    tv = losses.tv_loss(image)
    total = weights.content * content + weights.style * style + weights.tv * tv
    return {"total": total, "content": content, "style": style, "tv": tv}


def objective(image, params, targets, weights, config: GatysConfig) -> Array:
    """Total loss L_tot = alpha L_c + beta sum_l w_l L_s (+ TV), a scalar to minimize over ``image``."""
    return loss_terms(image, params, targets, weights, config)["total"]


# ----------------------------------------------------------------------------------------------
# Solvers: one interface over jaxopt L-BFGS, optax L-BFGS and Adam.


class Solver(NamedTuple):
    """``init(x, *args) -> state``; ``update(x, state, *args) -> (x, state, value_at_new_x_or_old)``."""

    init: Callable[..., Any]
    update: Callable[..., tuple[Array, Any]]
    value: Callable[[Any], Array]  # loss recorded in the state (at the current iterate)


class _LBFGSState(NamedTuple):
    opt: Any
    value: Array
    grad: Array


class _AdamState(NamedTuple):
    opt: Any
    value: Array


def _import_jaxopt():
    # jaxopt warns at import that it is unmaintained; we depend on it deliberately for its L-BFGS.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="JAXopt is no longer maintained", category=DeprecationWarning)
        import jaxopt
    return jaxopt


def make_solver(fun: Callable[..., Array], config: GatysConfig) -> Solver:
    """Builds the optimizer selected by ``config.optimizer`` for ``fun(x, *args) -> scalar``.

    All three record the loss at the *current* iterate in their state, so ``value(state)`` after
    ``k`` updates is the loss after ``k`` iterations.
    """
    if config.optimizer == "lbfgs":
        jaxopt = _import_jaxopt()
        # tol=0: run exactly the requested number of iterations, as the paper's fixed budget.
        solver = jaxopt.LBFGS(fun=fun, maxiter=max(config.iterations, 1), tol=0.0,
                              history_size=config.history_size, linesearch="zoom", max_stepsize=config.lr,
                              implicit_diff=False)

        def init(x, *args):
            return solver.init_state(x, *args)

        def update(x, state, *args):
            return solver.update(x, state, *args)

        return Solver(init, update, lambda s: s.value)

    value_and_grad = jax.value_and_grad(fun)

    if config.optimizer == "optax-lbfgs":
        opt = optax.lbfgs(memory_size=config.history_size)

        def init(x, *args):
            value, grad = value_and_grad(x, *args)
            return _LBFGSState(opt.init(x), value, grad)

        def update(x, state, *args):
            updates, opt_state = opt.update(state.grad, state.opt, x, value=state.value, grad=state.grad,
                                            value_fn=lambda y: fun(y, *args))
            x = optax.apply_updates(x, updates)
            # The zoom line search already evaluated f and its gradient at the accepted point.
            value = optax.tree.get(opt_state, "value")
            grad = optax.tree.get(opt_state, "grad")
            return x, _LBFGSState(opt_state, value, grad)

        return Solver(init, update, lambda s: s.value)

    opt = optax.adam(config.lr)

    def init_adam(x, *args):
        return _AdamState(opt.init(x), fun(x, *args))

    def update_adam(x, state, *args):
        value, grad = value_and_grad(x, *args)
        updates, opt_state = opt.update(grad, state.opt, x)
        x = optax.apply_updates(x, updates)
        # Adam evaluates f only where it takes the gradient, so its recorded value lags one step
        # behind the iterate; run() recomputes the final losses exactly.
        return x, _AdamState(opt_state, value)

    return Solver(init_adam, update_adam, lambda s: s.value)


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
    solver = make_solver(functools.partial(objective, config=config), config)
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
# Host-side driver: chunks of jitted iterations with progress, snapshots and clean interruption.


class Progress(NamedTuple):
    iteration: int
    loss: float
    seconds: float  # wall time of the chunk that ended at this iteration


@dataclasses.dataclass
class RunResult:
    image: np.ndarray  # (H, W, 3) float32 in [0, 1]
    losses: list[float]  # total loss at the init and after each completed iteration
    terms: dict[str, float]  # unweighted content/style/tv and total at the final image
    iterations: int  # completed iterations
    chunk_seconds: list[tuple[int, float]]  # (iterations, wall seconds) per chunk; the first compiles
    interrupted: bool = False


class _Program(NamedTuple):
    init: Callable
    run_chunk: Callable
    terms: Callable
    value: Callable


def _build_program(config: GatysConfig, chunk: int) -> _Program:
    solver = make_solver(functools.partial(objective, config=config), config)

    @jax.jit
    def init(x0, params, targets, weights):
        return solver.init(x0, params, targets, weights)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def run_chunk(x, state, params, targets, weights, n):
        # n is traced (n <= chunk), so one compiled program serves every chunk, the last partial
        # one included; the loss after each iteration goes into a fixed-size buffer.
        def body(i, carry):
            x, state, values = carry
            x, state = solver.update(x, state, params, targets, weights)
            return x, state, values.at[i].set(solver.value(state))

        values = jnp.full((chunk,), jnp.nan, jnp.float32)
        return jax.lax.fori_loop(0, n, body, (x, state, values))

    @jax.jit
    def terms(x, params, targets, weights):
        return loss_terms(x, params, targets, weights, config)

    return _Program(init, run_chunk, terms, solver.value)


# Compiled programs keyed by config and chunk length, so repeated runs (levels of the same size, a
# second image in the same process) do not recompile. jit caches on shapes underneath.
_PROGRAMS: dict[tuple[GatysConfig, int], _Program] = {}


def _program(config: GatysConfig, chunk: int) -> _Program:
    # Neither the iteration count nor the colour mode (applied outside) is part of the program.
    key = (dataclasses.replace(config, iterations=0, color="none", color_space="ycbcr",
                               color_transform="eig"), chunk)
    if key not in _PROGRAMS:
        _PROGRAMS[key] = _build_program(key[0], chunk)
    return _PROGRAMS[key]


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
) -> RunResult:
    """Runs the optimization from the host in jitted chunks of ``chunk`` iterations.

    Produces the same iterates as :func:`stylize`, colour control and spatial control
    (``content_masks``, ``style_masks``: see :func:`compute_targets`) included. After each chunk
    ``callback(progress, get_image)`` is called (the CLI updates its progress bar and saves snapshots
    there). Ctrl-C (KeyboardInterrupt) stops after the current chunk and returns the image so far
    with ``interrupted=True``. A non-finite loss raises :class:`NonFiniteLossError` naming the window
    of iterations, with the last finite image attached as ``err.image``. Images handed out
    (result, snapshots, ``err.image``) have the colour restored (:func:`finish_output`); the
    losses and ``terms`` are those of the prepared images the optimizer saw.
    """
    if weights is None:
        weights = loss_weights(config)
    if key is None:
        key = jax.random.key(0)
    original = content
    content, style, init = prepare_inputs(content, style, config, init)

    def finish(image: np.ndarray) -> np.ndarray:
        if config.color == "none":
            return np.clip(image, 0.0, 1.0)
        return np.asarray(jax.device_get(finish_output(jnp.asarray(image)[None], original, config)))[0]

    targets = compute_targets(params, content, style, config, blend_weights,
                              content_masks=content_masks, style_masks=style_masks)
    x = initial_image(content, config, key, init)
    prog = _program(config, chunk)
    # The chunk loop returns strongly typed leaves; strip weak types from the initial state (optax
    # keeps some) so the second chunk does not recompile.
    state = jax.tree.map(lambda a: jnp.asarray(a, a.dtype) if getattr(a, "weak_type", False) else a,
                         prog.init(x, params, targets, weights))
    curve = [float(jax.device_get(prog.value(state)))]
    timings: list[tuple[int, float]] = []
    last_good = np.asarray(jax.device_get(x))[0]
    done, interrupted = 0, False
    try:
        while done < config.iterations:
            n = min(chunk, config.iterations - done)
            t0 = time.perf_counter()
            x, state, values = prog.run_chunk(x, state, params, targets, weights, n)
            values = np.asarray(jax.device_get(values), np.float64)[:n]
            dt = time.perf_counter() - t0
            if not np.all(np.isfinite(values)):
                bad = done + 1 + int(np.argmin(np.isfinite(values)))
                err = NonFiniteLossError(
                    f"loss became non-finite between iteration {done} and {bad}; the image of iteration "
                    f"{done} was kept; lower --learning-rate or the loss weights, or use --optimizer lbfgs"
                )
                err.image = finish(last_good)
                err.iteration = done
                raise err
            done += n
            curve.extend(values.tolist())
            timings.append((n, dt))
            last_good = np.asarray(jax.device_get(x))[0]
            if callback is not None:
                callback(Progress(done, float(values[-1]), dt), lambda img=last_good: finish(img))
    except KeyboardInterrupt:
        interrupted = True
    image = last_good
    final_terms = prog.terms(jnp.asarray(image)[None], params, targets, weights)
    terms = {k: float(v) for k, v in jax.device_get(final_terms).items()}
    return RunResult(finish(image), curve, terms, done, timings, interrupted)


def seconds_per_iteration(chunk_seconds: Sequence[tuple[int, float]]) -> float | None:
    """Median seconds per iteration over chunks, excluding the first (compile) chunk."""
    rates = [dt / n for n, dt in chunk_seconds[1:] if n > 0]
    return float(np.median(rates)) if rates else None


# ----------------------------------------------------------------------------------------------
# Memory estimate: refuse clearly instead of crashing out of memory.


def estimate_memory_bytes(height: int, width: int, params: vgg.Params, config: GatysConfig, *,
                          backward: bool = True) -> int:
    """Rough peak memory of one optimization at ``height x width``.

    Counts every activation up to the deepest layer used (kept for the backward pass), their
    gradients, the L-BFGS history of image-sized vectors and the line search's extra evaluations.
    Calibrated to over- rather than under-estimate on the CPU backend. With ``backward=False`` it
    is a forward pass only (a style image's Gram matrices): every activation counted once.
    """
    deepest = max(vgg.LAYERS.index(n) for n in config.layers)
    h, w, c, total = height, width, 3, 0
    for name in vgg.LAYERS[: deepest + 1]:
        if name.startswith("conv"):
            c = int(params[name]["kernel"].shape[-1])
        elif name.startswith("pool"):
            h, w = max(h // 2, 1), max(w // 2, 1)
        total += h * w * c
    bytes_per = 2 if config.compute_dtype == "bfloat16" else 4
    # On the CPU backend --remat barely lowers the peak: XLA's scheduler keeps most recomputed
    # activations alive (scripts/memory_profile.py, full VGG-19 at 512x512: 1087 MiB of XLA
    # temporaries with remat, 1023 MiB without; peak RSS grows by 1.5 GiB either way). So remat only
    # gets a small discount here; accelerators may save more.
    if not backward:
        return int(total * bytes_per)
    activations = total * bytes_per * (2.5 if config.remat else 3)
    history = (2 * config.history_size + 6) * height * width * 3 * 4
    return int(activations + history)


def available_memory_bytes() -> int:
    """Memory of the default device: its allocator limit on accelerators, physical RAM on CPU."""
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    import os

    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def main(argv=None) -> int:
    """The ``nst-gatys`` command (kept importable here; the command line lives in :mod:`nst_jax.cli.gatys`)."""
    from nst_jax.cli import gatys as command  # inside: the cli imports this module

    return command.main(argv)


if __name__ == "__main__":
    from nst_jax.cli.gatys import console

    console()
