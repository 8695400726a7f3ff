"""VGG-19 feature extraction as plain functions over a params pytree.

``params`` maps layer names to ``{"kernel": HWIO, "bias": (O,)}`` (Flax leaf names). Images are NHWC
float32 RGB in [0, 1] at this boundary; input normalization happens inside :func:`features`.

Two networks share the layer table:

* ``VGG19``: torchvision's ImageNet VGG-19 (zero padding, floor max pooling, ImageNet mean/std).
* ``ADAIN_VGG``: the ``vgg_normalised`` encoder of AdaIN (a 1x1 ``preprocess`` conv that maps [0, 1]
  RGB to the Caffe input convention, reflection padding, ceil-mode max pooling).

Channel counts come from the params, so a narrow network with the same layer names works too.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp
from jax import lax

from nst_jax.errors import ConfigError, check_choice

Array = jax.Array
Params = Mapping[str, Mapping[str, Array]]

# Convs per block of VGG-19 (Simonyan & Zisserman 2015, configuration E).
_BLOCKS = (2, 2, 4, 4, 4)


def _layer_table() -> tuple[str, ...]:
    names = []
    for b, n in enumerate(_BLOCKS, start=1):
        for i in range(1, n + 1):
            names += [f"conv{b}_{i}", f"relu{b}_{i}"]
        names.append(f"pool{b}")
    return tuple(names)


# Names in forward order; the position of a name is its index in torchvision's ``vgg19().features``.
LAYERS: tuple[str, ...] = _layer_table()
CONV_LAYERS: tuple[str, ...] = tuple(n for n in LAYERS if n.startswith("conv"))
POOLINGS: tuple[str, ...] = ("max", "avg")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Network:
    """Static description of how a VGG variant computes (hashable, so usable as a static argument)."""

    name: str
    padding: str  # "zero" or "reflect"
    ceil_pool: bool  # PyTorch MaxPool2d(ceil_mode=True)
    input_norm: str  # "imagenet": (x - mean) / std; "conv": a learned 1x1 conv named "preprocess"
    last_layer: str = LAYERS[-1]  # deepest layer the network has weights for

    @property
    def layers(self) -> tuple[str, ...]:
        return LAYERS[: LAYERS.index(self.last_layer) + 1]


VGG19 = Network("vgg19", padding="zero", ceil_pool=False, input_norm="imagenet")
ADAIN_VGG = Network("adain_vgg", padding="reflect", ceil_pool=True, input_norm="conv",
                    last_layer="relu4_1")


def check_layers(layers: Iterable[str], network: Network = VGG19, flag: str | None = None) -> tuple[str, ...]:
    """Returns ``layers`` as a tuple after checking every name against the network's layer table."""
    layers = tuple(layers)
    if not layers:
        raise ConfigError(f"no layers given{' for ' + flag if flag else ''}; name at least one of "
                          f"{', '.join(network.layers)}")
    for name in layers:
        check_choice("layer", name, network.layers, flag)
    return layers


def num_pools_before(layer: str) -> int:
    """Number of pooling layers applied before (and including) ``layer``."""
    return sum(1 for n in LAYERS[: LAYERS.index(layer) + 1] if n.startswith("pool"))


def min_image_size(layers: Iterable[str]) -> int:
    """Smallest image side for which every layer in ``layers`` has a feature map of at least 2x2.

    Reflection padding needs at least 2 pixels, and a 1-pixel map has no spatial statistics, so 2 is
    the floor at the deepest layer.
    """
    deepest = max(num_pools_before(n) for n in layers)
    return 2 * 2**deepest


def normalize(image: Array) -> Array:
    """ImageNet mean/std normalization of an NHWC [0, 1] RGB image."""
    mean = jnp.asarray(IMAGENET_MEAN, image.dtype)
    std = jnp.asarray(IMAGENET_STD, image.dtype)
    return (image - mean) / std


_DIMS = ("NHWC", "HWIO", "NHWC")
Padding = tuple[tuple[int, int], tuple[int, int]]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d(x: Array, kernel: Array, padding: Padding) -> Array:
    """Stride-1 NHWC x HWIO convolution with explicit ``((top, bottom), (left, right))`` zero padding.

    Same values and gradients as ``lax.conv_general_dilated``; only the backward pass differs in
    form. JAX's transpose rule reverses the kernel inside the backward convolution; in a
    ``fori_loop``/``while_loop`` body (the Gatys iteration chunk) XLA:CPU then lowers that
    convolution (kernel dims ``01oi``) to a generic loop nest about 2.5x slower than its library
    convolution. Here the input gradient is an ordinary convolution with the kernel flipped and
    transposed to HWIO first, which stays on the fast path in and out of loops (measured in
    ``scripts/benchmark.py``, section ``ops``).
    """
    return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_DIMS)


def _conv2d_fwd(x, kernel, padding):
    return conv2d(x, kernel, padding), (x, kernel)


def _conv2d_bwd(padding, residuals, g):
    x, kernel = residuals
    kh, kw = kernel.shape[:2]
    (top, bottom), (left, right) = padding
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)  # HWIO of the transposed convolution
    full = ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right))
    dx = lax.conv_general_dilated(g, flipped, (1, 1), full, dimension_numbers=_DIMS)
    return dx, _kernel_grad(x, g, kernel.shape, padding)


def _kernel_grad(x: Array, g: Array, shape: tuple[int, ...], padding: Padding) -> Array:
    """dK[a, b] = sum over n, h, w of pad(x)[n, h + a, w + b] (outer) g[n, h, w]: one matmul per tap.

    JAX's rule expresses this as a convolution whose window is the whole image, which XLA:CPU runs
    about 6x slower than these kh*kw matmuls (AdaIN decoder training; scripts/benchmark.py, section
    ops). XLA drops it, and with it the saved input, when only the image gradient is used (Gatys).
    """
    kh, kw, cin, cout = shape
    xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    ho, wo = g.shape[1:3]
    g2 = g.reshape(-1, cout)
    taps = [jnp.matmul(xp[:, a: a + ho, b: b + wo].reshape(-1, cin).T, g2, precision=lax.Precision.HIGHEST)
            for a in range(kh) for b in range(kw)]
    return jnp.stack(taps).reshape(kh, kw, cin, cout)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def same_padding(kernel: Array) -> Padding:
    kh, kw = kernel.shape[:2]
    return (kh // 2, kh // 2), (kw // 2, kw // 2)


def conv_layer(x: Array, p: Mapping[str, Array], padding: str) -> Array:
    """A 'same'-size conv layer, ``x * kernel + bias``, with "zero" or "reflect" border padding."""
    kernel = p["kernel"].astype(x.dtype)
    pad = same_padding(kernel)
    (ph, _), (pw, _) = pad
    if padding == "reflect" and (ph or pw):
        # Reflect-pad, then convolve with zero padding as well and crop the border back off: XLA:CPU
        # runs unpadded ("VALID") convolutions about 4x slower than padded ones of the same size,
        # and the 3% of extra positions cost far less (scripts/benchmark.py, section ops).
        x = jnp.pad(x, ((0, 0), *pad, (0, 0)), mode="reflect")
        y = conv2d(x, kernel, pad)[:, ph: x.shape[1] - ph, pw: x.shape[2] - pw]
    else:
        y = conv2d(x, kernel, pad)
    return y + p["bias"].astype(x.dtype)


def _pool_pad(x: Array, ceil: bool) -> tuple[tuple[int, int], ...]:
    h, w = x.shape[1:3]
    # PyTorch ceil mode: a partial window at the bottom/right edge still produces an output.
    return (0, 0), (0, h % 2 if ceil else 0), (0, w % 2 if ceil else 0), (0, 0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool(x: Array, ceil: bool = False) -> Array:
    """2x2 max pooling with stride 2 (floor or PyTorch ceil mode), NHWC.

    The gradient goes to the first maximum of each window in row-major order, as
    ``lax.reduce_window``'s own rule (select-and-scatter), but is computed with a reshape and
    comparisons: XLA:CPU's select-and-scatter took about 13% of a Gatys evaluation at 256 px
    (scripts/benchmark.py, section ops).
    """
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), _pool_pad(x, ceil))


def _max_pool_fwd(x, ceil):
    y = max_pool(x, ceil)
    return y, (x, y)


def _max_pool_bwd(ceil, residuals, g):
    x, y = residuals
    n, h, w, c = x.shape
    pad = _pool_pad(x, ceil)
    xp = jnp.pad(x, pad, constant_values=-jnp.inf)[:, : 2 * y.shape[1], : 2 * y.shape[2]]
    windows = xp.reshape(n, y.shape[1], 2, y.shape[2], 2, c)
    taken = jnp.zeros(y.shape, bool)
    grads = []
    for a in range(2):
        for b in range(2):
            pick = (windows[:, :, a, :, b] == y) & ~taken
            taken = taken | pick
            grads.append(jnp.where(pick, g, jnp.zeros_like(g)))
    dx = jnp.stack(grads, axis=3).reshape(n, y.shape[1], y.shape[2], 2, 2, c)  # (.., a, b, c)
    dx = dx.transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * y.shape[1], 2 * y.shape[2], c)
    # Rows/columns that no window covered (floor mode) get no gradient; ceil-mode padding is cut.
    dx = jnp.pad(dx, ((0, 0), (0, max(h - dx.shape[1], 0)), (0, max(w - dx.shape[2], 0)), (0, 0)))
    return (dx[:, :h, :w],)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def _pool(x: Array, pooling: str, ceil: bool) -> Array:
    if pooling == "max":
        return max_pool(x, ceil)
    total = lax.reduce_window(x, 0.0, lax.add, (1, 2, 2, 1), (1, 2, 2, 1), _pool_pad(x, ceil))
    return total / 4.0


def features(
    params: Params,
    image: Array,
    layers: Iterable[str],
    *,
    pooling: str = "max",
    network: Network = VGG19,
    remat: bool = False,
    dtype: jnp.dtype | None = None,
) -> dict[str, Array]:
    """Runs VGG on ``image`` and returns the requested layers' activations.

    Only the layers up to the deepest requested one are computed.

    Args:
      params: ``{"conv1_1": {"kernel": HWIO, "bias": (O,)}, ...}`` (plus ``"preprocess"`` for
        networks with ``input_norm == "conv"``).
      image: NHWC float RGB in [0, 1].
      layers: names from :data:`LAYERS`, e.g. ``("relu1_1", "conv4_2")``.
      pooling: "max" (as trained) or "avg" (Gatys et al. 2016 suggest it for synthesis).
      network: which VGG variant (padding, pooling mode, input normalization).
      remat: rematerialize each block's activations in the backward pass (jax.checkpoint), trading
        compute for memory at high resolution.
      dtype: compute dtype for convolutions (e.g. ``jnp.bfloat16``); outputs are float32.

    Returns:
      ``{name: NHWC activations}`` for each requested name, in float32.
    """
    layers = tuple(layers)
    check_choice("pooling", pooling, POOLINGS, "--pooling")
    wanted = set(check_layers(layers, network))
    last = max(LAYERS.index(n) for n in wanted)
    dtype = dtype or image.dtype

    if network.input_norm == "imagenet":
        x = normalize(image.astype(jnp.float32))
    else:
        x = conv_layer(image.astype(jnp.float32), params["preprocess"], "zero")
    x = x.astype(dtype)

    def block(x, names):
        out = {}
        for name in names:
            kind = name[:4]
            if kind == "conv":
                x = conv_layer(x, params[name], network.padding)
            elif kind == "relu":
                x = jax.nn.relu(x)
            else:
                x = _pool(x, pooling, network.ceil_pool)
            if name in wanted:
                out[name] = x.astype(jnp.float32)
        return x, out

    if remat:
        block = jax.checkpoint(block, static_argnums=(1,))

    # Split the forward pass at pooling layers so remat saves only block boundaries.
    result: dict[str, Array] = {}
    segment: list[str] = []
    for name in LAYERS[: last + 1]:
        segment.append(name)
        if name.startswith("pool") or name == LAYERS[last]:
            x, out = block(x, tuple(segment))
            result.update(out)
            segment = []
    return {n: result[n] for n in layers}


def param_shapes(params: Params) -> dict[str, tuple[int, ...]]:
    """Flat ``{"conv1_1.kernel": shape, ...}`` view, for error messages and tests."""
    return {f"{layer}.{leaf}": tuple(v.shape) for layer, d in params.items() for leaf, v in d.items()}


def init_params(key: Array, widths: Mapping[int, int] | None = None, network: Network = VGG19) -> dict:
    """Random params with the VGG-19 layer names; ``widths`` maps block number to channels.

    Used for tests and benchmarks where real weights are not needed. Default widths are VGG-19's.
    """
    widths = dict(widths or {1: 64, 2: 128, 3: 256, 4: 512, 5: 512})
    params: dict[str, dict[str, Array]] = {}
    cin = 3
    if network.input_norm == "conv":
        key, sub = jax.random.split(key)
        params["preprocess"] = {"kernel": jax.random.normal(sub, (1, 1, 3, 3)) * 0.5,
                                "bias": jnp.zeros((3,))}
    for name in network.layers:
        if not name.startswith("conv"):
            continue
        cout = widths[int(name[4])]
        key, sub = jax.random.split(key)
        std = (2.0 / (9 * cin)) ** 0.5
        params[name] = {"kernel": jax.random.normal(sub, (3, 3, cin, cout)) * std,
                        "bias": jnp.full((cout,), 0.01)}
        cin = cout
    return params
