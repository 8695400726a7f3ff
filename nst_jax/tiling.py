"""Tiled Gatys style transfer: print-size images in memory bounded by the tile size.

The memory of :mod:`nst_jax.gatys` is dominated by VGG activations, which grow with the image. Here
VGG only ever sees one tile (plus a halo of context) at a time, while the loss stays the loss of the
*whole* image (report eq. 4): the style statistics are global, so they are accumulated over tiles.

One evaluation of value and gradient makes two passes over the tile grid:

1. Forward only. For each tile, VGG runs on the tile plus ``halo`` pixels of context; each layer's
   features are cropped to the tile's own region at that layer's resolution; ``sum F^T F`` and the
   content loss are accumulated. After the pass the Gram matrices ``G_l = F^T F / M_l`` of the whole
   image are known (report eq. 2, normalized by positions as :func:`nst_jax.losses.gram`), hence the
   loss and, in closed form, ``dL/dG_l = beta w_l (G_l - A_l) / (2 N_l^2)`` (from report eq. 3).
2. Backward. For each tile, the VJP of its cropped features is taken with the cotangent
   ``dL/dF = 2 F (dL/dG_l) / M_l`` (style) plus ``alpha (F - P)`` (content, report eq. 1), and the
   input gradient of the whole window (tile and halo) is added into the image gradient.

Exactness. Every convolution input is multiplied by a mask of the positions that lie inside the
image at that resolution, which is what the untiled network's zero padding sees at the image
border; so a window may hang over the border and all windows have one static shape. Inside the
image, a window edge corrupts features up to :func:`receptive_halo` pixels away. With a halo at least
that wide (the default), the tiled value and gradient equal the untiled ones up to float rounding.
A smaller halo trades exactness for speed; then the tile grid is shifted by a random offset every
iteration (the default when the halo is short), so the error at tile seams moves instead of
printing a fixed seam into the image (the method crowsonkb/style_transfer describes). A shifting grid
makes the objective slightly different from one iteration to the next; L-BFGS tolerates this in
practice, and with a full halo the objective does not change at all.

Tile origins, sizes and halos are multiples of ``2**pools`` of the deepest layer used (16 for
``relu5_1``), so the pooling grid of every window lines up with the whole image's.

What still grows with the image is O(pixels) with small constants: the image, its gradient, the
L-BFGS history (``2 * history_size`` images), and the content target (``relu4_2`` is 8x8 pooled with
512 channels, 32 bytes per pixel).

Measured with scripts/tiling_memory.py (full-width VGG-19 on CPU): one evaluation at 1024 px peaks
at 2.5 GB with 512 px tiles against 4.7 GB untiled, with the same loss; at 4096 px XLA plans
2.4 GB of temporaries instead of 62 GB. At print sizes the solver dominates: a jaxopt L-BFGS step
at 4096 px needs about 12 GB in all (optax-lbfgs 8 GB); at 8192 px L-BFGS needs more than 24 GB
while Adam fits in about 11 GB.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nst_jax import driver, gatys, losses, vgg
from nst_jax.errors import ConfigError, InputImageError, normalized_weights

Array = jax.Array

_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------------
# Geometry of the tile grid.


def alignment(layers: Sequence[str]) -> int:
    """Stride of the deepest layer in ``layers`` (``2**pools``); tile origins must be multiples."""
    return 2 ** max(vgg.num_pools_before(n) for n in layers)


def receptive_halo(layers: Sequence[str]) -> int:
    """Context pixels on each side of a tile that make its features at ``layers`` exact.

    Zero padding at a window edge that lies inside the image corrupts one more feature position per
    3x3 convolution; a 2x2 pooling halves the corrupted band (rounding up). The halo must cover the
    band of the deepest layer in input pixels. The result is rounded up to :func:`alignment`.

    Args:
      layers: VGG layer names, e.g. ``GatysConfig().layers``.

    Returns:
      The halo in pixels (80 for ``relu5_1``, 40 for ``relu4_2``).
    """
    layers = vgg.check_layers(layers)
    need = 0
    for layer in layers:
        band = 0  # corrupted positions next to a window edge, at the current resolution
        for name in vgg.LAYERS[: vgg.LAYERS.index(layer) + 1]:
            if name.startswith("conv"):
                band += 1
            elif name.startswith("pool"):
                band = -(-band // 2)
        need = max(need, band * 2 ** vgg.num_pools_before(layer))
    align = alignment(layers)
    return -(-need // align) * align


@dataclasses.dataclass(frozen=True)
class Axis:
    """How one image axis is cut into tiles (static, hashable).

    Tile ``i`` owns the pixels ``[i * tile - offset, (i + 1) * tile - offset)`` and VGG sees the
    window that extends ``halo`` further on both sides. The offset ranges over multiples of the
    alignment in ``[0, max_offset]``.
    """

    size: int  # image pixels along this axis
    tile: int
    halo: int
    max_offset: int
    count: int  # tiles along this axis

    @property
    def window(self) -> int:
        return self.tile + 2 * self.halo

    @property
    def pad(self) -> int:
        """Position of image pixel 0 on the padded canvas that every window is cut from."""
        return self.max_offset + self.halo

    @property
    def canvas(self) -> int:
        return self.count * self.tile + self.max_offset + 2 * self.halo


@dataclasses.dataclass(frozen=True)
class TileGrid:
    """Static tiling of one (1, H, W, 3) image; changing it recompiles."""

    rows: Axis
    cols: Axis
    align: int

    @property
    def count(self) -> int:
        return self.rows.count * self.cols.count

    @property
    def shifts(self) -> bool:
        return self.rows.max_offset > 0 or self.cols.max_offset > 0


def _axis(size: int, tile: int, halo: int, align: int, shift: bool) -> Axis:
    whole = -(-size // align) * align
    if tile >= whole:
        # One tile covers the axis: no inner edges, so no halo and nothing to shift.
        return Axis(size, whole, 0, 0, 1)
    max_offset = tile - align if shift else 0
    return Axis(size, tile, halo, max_offset, -(-(size + max_offset) // tile))


def tile_grid(
    shape: Sequence[int],
    layers: Sequence[str],
    tile_size: int,
    halo: int | None = None,
    shift: bool | None = None,
) -> TileGrid:
    """Plans the tiles for an image of ``shape`` and the features at ``layers``.

    Args:
      shape: (1, H, W, 3) or (H, W).
      layers: every layer the loss reads (``GatysConfig.layers``).
      tile_size: side of a tile in pixels, a positive multiple of :func:`alignment` (16 for the
        default layers). Activations of one ``tile_size + 2 * halo`` window are what must fit.
      halo: context pixels on each side of a tile, a multiple of the alignment; default
        :func:`receptive_halo` (exact).
      shift: move the grid by a random offset every iteration; default: only when the halo is
        shorter than :func:`receptive_halo` (with a full halo the result does not depend on the grid,
        and a shifted grid costs partial tiles at both ends).

    Raises:
      ConfigError: ``tile_size`` or ``halo`` is not a multiple of the alignment.
    """
    layers = vgg.check_layers(layers)
    align = alignment(layers)
    exact = receptive_halo(layers)
    if not (isinstance(tile_size, (int, np.integer)) and tile_size > 0 and tile_size % align == 0):
        up = max(align, -(-int(tile_size) // align) * align) if isinstance(tile_size, (int, np.integer)) else 512
        raise ConfigError(
            f"--tile-size must be a positive multiple of {align} (the stride of the deepest layer), "
            f"got {tile_size}; try --tile-size {up}"
        )
    if halo is None:
        halo = exact
    if not (isinstance(halo, (int, np.integer)) and halo >= 0 and halo % align == 0):
        up = max(0, -(-int(halo) // align) * align) if isinstance(halo, (int, np.integer)) else exact
        raise ConfigError(
            f"--tile-halo must be a multiple of {align} that is >= 0, got {halo}; try --tile-halo {up} "
            f"({exact} makes tiling exact)"
        )
    if shift is None:
        shift = halo < exact
    h, w = (shape[1], shape[2]) if len(shape) == 4 else (shape[0], shape[1])
    return TileGrid(_axis(int(h), tile_size, int(halo), align, shift),
                    _axis(int(w), tile_size, int(halo), align, shift), align)


def grid_offset(grid: TileGrid, key: Array, step: Array | int) -> Array:
    """The (row, col) grid offset of iteration ``step``: random multiples of the alignment.

    Derived from ``key`` and ``step`` alone, so a resumed or repeated run shifts the same way.
    """
    k = jax.random.fold_in(key, step)
    hi = jnp.array([grid.rows.max_offset // grid.align + 1, grid.cols.max_offset // grid.align + 1])
    return jax.random.randint(k, (2,), 0, hi, jnp.int32) * grid.align


# ----------------------------------------------------------------------------------------------
# Per-tile features.


class _Tile(NamedTuple):
    """Where tile (i, j) is: image coordinates of its window's and its own region's top-left."""

    window: tuple[Array, Array]
    own: tuple[Array, Array]
    nonempty: Array


def _locate(grid: TileGrid, t, offset: Array) -> _Tile:
    i, j = t // grid.cols.count, t % grid.cols.count
    r0 = i * grid.rows.tile - offset[0]
    c0 = j * grid.cols.tile - offset[1]
    nonempty = (r0 < grid.rows.size) & (c0 < grid.cols.size)
    return _Tile((r0 - grid.rows.halo, c0 - grid.cols.halo), (r0, c0), nonempty)


def _valid(start: Array, length: int, size: int, level: int) -> Array:
    """Which of ``length`` positions from image coordinate ``start`` lie inside the image at ``level``."""
    pos = start // 2**level + jnp.arange(length)
    return (pos >= 0) & (pos < size >> level)


def _mask(grid: TileGrid, corner: tuple[Array, Array], rows: int, cols: int, level: int, dtype) -> Array:
    mr = _valid(corner[0], rows, grid.rows.size, level)
    mc = _valid(corner[1], cols, grid.cols.size, level)
    return (mr[:, None] & mc[None, :]).astype(dtype)[None, :, :, None]


def _crop_size(grid: TileGrid, level: int) -> tuple[int, int]:
    return grid.rows.tile >> level, grid.cols.tile >> level


def _tile_features(params, window: Array, tile: _Tile, grid: TileGrid, config: gatys.GatysConfig):
    """VGG features of one tile's own region computed from its window, zero outside the image.

    Mirrors :func:`nst_jax.vgg.features` for the zero-padded VGG-19, except that each convolution's
    input is masked to the image, so the padding seen at the image border is the untiled network's.
    The convolutions are :func:`nst_jax.vgg.conv2d`, fast to differentiate inside the tile loop.
    """
    wanted = set(config.layers)
    last = max(vgg.LAYERS.index(n) for n in wanted)
    dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32
    win_r, win_c = grid.rows.window, grid.cols.window

    def block(x, names, level):
        out = {}
        for name in names:
            if name.startswith("conv"):
                m = _mask(grid, tile.window, win_r >> level, win_c >> level, level, x.dtype)
                x = vgg.conv_layer(x * m, params[name], "zero")
            elif name.startswith("relu"):
                x = jax.nn.relu(x)
            else:
                x = vgg._pool(x, config.pooling, False)
                level += 1
            if name in wanted:
                hr, hc = grid.rows.halo >> level, grid.cols.halo >> level
                tr, tc = _crop_size(grid, level)
                crop = x[:, hr:hr + tr, hc:hc + tc, :].astype(jnp.float32)
                out[name] = crop * _mask(grid, tile.own, tr, tc, level, jnp.float32)
        return x, out

    if config.remat:
        block = jax.checkpoint(block, static_argnums=(1, 2))

    x = (vgg.normalize(window.astype(jnp.float32))).astype(dtype)
    result: dict[str, Array] = {}
    segment: list[str] = []
    level = 0
    for name in vgg.LAYERS[: last + 1]:
        segment.append(name)
        if name.startswith("pool") or name == vgg.LAYERS[last]:
            x, out = block(x, tuple(segment), level)
            result.update(out)
            level += sum(1 for n in segment if n.startswith("pool"))
            segment = []
    return result


def _target_crop(target: Array, grid: TileGrid, tile: _Tile, level: int) -> Array:
    """The tile's region of a whole-image feature map, zero outside the image."""
    tr, tc = _crop_size(grid, level)
    h, w = target.shape[1:3]
    rows = tile.own[0] // 2**level + jnp.arange(tr)
    cols = tile.own[1] // 2**level + jnp.arange(tc)
    crop = target[:, jnp.clip(rows, 0, h - 1)[:, None], jnp.clip(cols, 0, w - 1)[None, :], :]
    return crop * _mask(grid, tile.own, tr, tc, level, target.dtype)


def _canvas(image: Array, grid: TileGrid) -> Array:
    r, c = grid.rows, grid.cols
    return jnp.pad(image.astype(jnp.float32), ((0, 0), (r.pad, r.canvas - r.pad - r.size),
                                               (c.pad, c.canvas - c.pad - c.size), (0, 0)))


def _window(canvas: Array, grid: TileGrid, tile: _Tile) -> Array:
    start = (0, tile.window[0] + grid.rows.pad, tile.window[1] + grid.cols.pad, 0)
    return lax.dynamic_slice(canvas, start, (1, grid.rows.window, grid.cols.window, canvas.shape[3]))


def _positions(grid: TileGrid, layer: str) -> int:
    """M_l: positions of the whole image's feature map at ``layer`` (floor pooling)."""
    level = vgg.num_pools_before(layer)
    return (grid.rows.size >> level) * (grid.cols.size >> level)


def _check_image(image: Array, what: str) -> None:
    if image.ndim != 4 or image.shape[0] != 1 or image.shape[3] != 3:
        raise InputImageError(f"tiling takes one (1, H, W, 3) {what} image, got shape {tuple(image.shape)}; "
                              "process images one at a time")


# ----------------------------------------------------------------------------------------------
# Pass 1: Gram sums and content loss over tiles. Pass 2: image gradient tile by tile.


def _accumulate(image, params, content_targets, config, grid, offset, layers, content_layers):
    """Sums ``F^T F`` per layer in ``layers`` and the content loss over ``content_layers``."""
    canvas = _canvas(image, grid)
    feats_config = _only(config, tuple(dict.fromkeys(tuple(content_layers) + tuple(layers))))

    def body(t, carry):
        tile = _locate(grid, t, offset)

        def compute(carry):
            sums, content = carry
            feats = _tile_features(params, _window(canvas, grid, tile), tile, grid, feats_config)
            sums = {n: sums[n] + losses.gram(feats[n]) for n in layers}
            for n in content_layers:
                target = _target_crop(content_targets[n], grid, tile, vgg.num_pools_before(n))
                content = content + losses.content_loss(target, feats[n])
            return sums, content

        return lax.cond(tile.nonempty, compute, lambda c: c, carry)

    sums = {n: jnp.zeros((1, _channels(params, n), _channels(params, n)), jnp.float32) for n in layers}
    return lax.fori_loop(0, grid.count, body, (sums, jnp.zeros((), jnp.float32)))


def _only(config: gatys.GatysConfig, layers: tuple[str, ...]) -> gatys.GatysConfig:
    """``config`` whose ``layers`` are exactly ``layers`` (the features a pass needs)."""
    return dataclasses.replace(config, content_layers=layers[:1], style_layers=layers)


def _channels(params, layer: str) -> int:
    conv = "conv" + layer[4:] if not layer.startswith("pool") else None
    if conv is None:
        # A pooling layer has the channels of the last conv before it.
        idx = vgg.LAYERS.index(layer)
        conv = next(n for n in reversed(vgg.LAYERS[:idx]) if n.startswith("conv"))
    return params[conv]["kernel"].shape[-1]


class _Statistics(NamedTuple):
    terms: dict[str, Array]  # as gatys.loss_terms: raw and weighted parts, total
    dgram: dict[str, Array]  # dL/dG_l per style layer


def _statistics(image, params, targets, weights, config, grid, offset) -> _Statistics:
    if getattr(targets, "region_masks", None) is not None:
        raise ConfigError("spatial control (guided Gram matrices) does not work with tiling; "
                          "drop --tile-size or the masks")
    sums, content = _accumulate(image, params, targets.content, config, grid, offset,
                                config.style_layers, config.content_layers)
    per_layer, dgram = [], {}
    for k, n in enumerate(config.style_layers):
        g = sums[n] / _positions(grid, n)
        c = g.shape[-1]
        diff = g - targets.style_grams[n]
        per_layer.append(jnp.sum(diff * diff) / (4.0 * c * c))
        d = weights.style * weights.style_layers[k] * diff / (2.0 * c * c)
        dgram[n] = 0.5 * (d + jnp.swapaxes(d, -1, -2))
    style = jnp.sum(weights.style_layers * jnp.stack(per_layer))
    return _Statistics(gatys.weighted_terms(content, style, losses.tv_loss(image), weights), dgram)


def _image_grad(image, params, targets, weights, config, grid, offset, dgram) -> Array:
    canvas = _canvas(image, grid)

    def body(t, grad):
        tile = _locate(grid, t, offset)

        def compute(grad):
            window = _window(canvas, grid, tile)
            feats, vjp = jax.vjp(lambda w: _tile_features(params, w, tile, grid, config), window)
            cot = {n: jnp.zeros_like(f) for n, f in feats.items()}
            for n in config.style_layers:
                cot[n] = cot[n] + (2.0 / _positions(grid, n)) * jnp.einsum(
                    "nhwc,ncd->nhwd", feats[n], dgram[n], precision=_HIGHEST)
            for n in config.content_layers:
                target = _target_crop(targets.content[n], grid, tile, vgg.num_pools_before(n))
                cot[n] = cot[n] + weights.content * (feats[n] - target)
            (g,) = vjp(cot)
            start = (0, tile.window[0] + grid.rows.pad, tile.window[1] + grid.cols.pad, 0)
            return lax.dynamic_update_slice(grad, lax.dynamic_slice(grad, start, g.shape) + g, start)

        return lax.cond(tile.nonempty, compute, lambda g: g, grad)

    grad = lax.fori_loop(0, grid.count, body, jnp.zeros_like(canvas))
    r, c = grid.rows, grid.cols
    grad = grad[:, r.pad:r.pad + r.size, c.pad:c.pad + c.size, :]
    return grad + weights.tv * jax.grad(losses.tv_loss)(image.astype(jnp.float32))


def _aligned(offset, grid: TileGrid) -> Array:
    offset = jnp.asarray(offset, jnp.int32).reshape(2) // grid.align * grid.align
    return jnp.clip(offset, 0, jnp.array([grid.rows.max_offset, grid.cols.max_offset]))


def _value_and_grad(image, params, targets, weights, config, grid, offset):
    offset = _aligned(offset, grid)
    stats = _statistics(image, params, targets, weights, config, grid, offset)
    grad = _image_grad(image, params, targets, weights, config, grid, offset, stats.dgram)
    return stats.terms["total"], grad


@functools.lru_cache(maxsize=64)
def tiled_objective(config: gatys.GatysConfig, grid: TileGrid) -> Callable[..., Array]:
    """The total loss ``fun(image, params, targets, weights, offset)`` of eq. 4, computed by tiles.

    Its gradient (``jax.grad`` or ``jax.value_and_grad`` with respect to ``image``) is the two-pass
    tiled gradient, through a ``jax.custom_vjp``; so every solver of :func:`nst_jax.solvers.make_solver`
    takes it unchanged. Evaluating the value alone runs only the forward pass over the tiles.
    Parameters, targets, weights and the offset get no gradient.

    Args:
      config: static settings (layers, pooling, dtype, remat).
      grid: from :func:`tile_grid` for the image shape.
    """

    @jax.custom_vjp
    def fun(image, params, targets, weights, offset):
        offset = _aligned(offset, grid)
        return _statistics(image, params, targets, weights, config, grid, offset).terms["total"]

    def fwd(image, params, targets, weights, offset):
        value, grad = _value_and_grad(image, params, targets, weights, config, grid, offset)
        return value, grad

    def bwd(grad, g):
        return (g * grad, None, None, None, None)

    fun.defvjp(fwd, bwd)
    return fun


@functools.partial(jax.jit, static_argnames=("config", "tile_size", "halo", "shift"))
def tiled_value_and_grad(
    image: Array,
    params: vgg.Params,
    targets: gatys.Targets,
    weights: gatys.LossWeights,
    config: gatys.GatysConfig,
    tile_size: int,
    halo: int | None = None,
    offset: Array | Sequence[int] = (0, 0),
    *,
    shift: bool | None = None,
) -> tuple[Array, Array]:
    """Total loss and its gradient with respect to ``image``, VGG running one tile at a time.

    Equal to ``jax.value_and_grad(gatys.objective)`` up to float rounding when ``halo`` is at least
    :func:`receptive_halo` (the default).

    Args:
      image: (1, H, W, 3) generated image.
      params, targets, weights, config: as for :func:`nst_jax.gatys.objective`; ``targets`` are
        whole-image targets (:func:`tiled_targets` or :func:`nst_jax.gatys.compute_targets`).
      tile_size, halo, shift: see :func:`tile_grid`.
      offset: (row, col) shift of the tile grid, rounded down to the alignment and clipped to the
        grid's range (no effect unless the grid shifts).

    Returns:
      ``(value, grad)`` with ``grad`` shaped like ``image``.
    """
    _check_image(image, "generated")
    grid = tile_grid(image.shape, config.layers, tile_size, halo, shift)
    return _value_and_grad(image, params, targets, weights, config, grid, offset)


def tiled_loss_terms(image, params, targets, weights, config, grid: TileGrid) -> dict[str, Array]:
    """Like :func:`nst_jax.gatys.loss_terms` (raw and weighted parts, total), computed by tiles."""
    return _statistics(image, params, targets, weights, config, grid, jnp.zeros(2, jnp.int32)).terms


# ----------------------------------------------------------------------------------------------
# Targets of big inputs.


@functools.partial(jax.jit, static_argnames=("config", "grid"))
def _tiled_content(params, image, config, grid) -> dict[str, Array]:
    layers = config.content_layers
    canvas = _canvas(image, grid)
    feats_config = _only(config, layers)
    offset = jnp.zeros(2, jnp.int32)

    def body(t, outs):
        tile = _locate(grid, t, offset)
        feats = _tile_features(params, _window(canvas, grid, tile), tile, grid, feats_config)
        new = {}
        for n in layers:
            level = vgg.num_pools_before(n)
            start = (0, tile.own[0] // 2**level, tile.own[1] // 2**level, 0)
            new[n] = lax.dynamic_update_slice(outs[n], feats[n], start)
        return new

    outs = {}
    for n in layers:
        level = vgg.num_pools_before(n)
        tr, tc = _crop_size(grid, level)
        outs[n] = jnp.zeros((1, grid.rows.count * tr, grid.cols.count * tc, _channels(params, n)), jnp.float32)
    # Without a shift every tile overlaps the image, so no tile is skipped.
    outs = lax.fori_loop(0, grid.count, body, outs)
    return {n: outs[n][:, : grid.rows.size >> vgg.num_pools_before(n),
                       : grid.cols.size >> vgg.num_pools_before(n)] for n in layers}


@functools.partial(jax.jit, static_argnames=("config", "grid"))
def _tiled_grams(params, image, config, grid) -> dict[str, Array]:
    sums, _ = _accumulate(image, params, {}, config, grid, jnp.zeros(2, jnp.int32),
                          config.style_layers, ())
    return {n: sums[n] / _positions(grid, n) for n in config.style_layers}


def tiled_targets(
    params: vgg.Params,
    content: Array,
    styles: Sequence[Array] | Array,
    config: gatys.GatysConfig,
    *,
    tile_size: int,
    halo: int | None = None,
    blend_weights: Sequence[float] | None = None,
) -> gatys.Targets:
    """Like :func:`nst_jax.gatys.compute_targets`, with VGG seeing one tile of each image at a time.

    The content features are assembled tile by tile into whole-image maps; each style's Gram
    matrices are accumulated over its tiles, then normalized by its positions and blended.

    Args:
      params: VGG-19 params.
      content: (1, H, W, 3) content image.
      styles: one (1, Hs, Ws, 3) style image or a sequence of them.
      config: layers and pooling.
      tile_size, halo: see :func:`tile_grid` (the grid never shifts here; the default halo is exact).
      blend_weights: one weight per style, normalized to sum to 1.

    Raises:
      ConfigError: bad blend weights or tile geometry.
    """
    if not isinstance(styles, (list, tuple)):
        styles = [styles]
    if blend_weights is None:
        blend_weights = [1.0] * len(styles)
    if len(blend_weights) != len(styles):
        raise ConfigError(
            f"--style-blend-weights has {len(blend_weights)} values for {len(styles)} style images; "
            "give one per style"
        )
    blend_weights = normalized_weights(blend_weights, "--style-blend-weights")
    _check_image(content, "content")
    grid = tile_grid(content.shape, config.content_layers, tile_size, halo, shift=False)
    content_feats = _tiled_content(params, content, _only(config, config.content_layers), grid)
    grams: dict[str, Array] = {}
    for style, w in zip(styles, blend_weights):
        _check_image(style, "style")
        sgrid = tile_grid(style.shape, config.style_layers, tile_size, halo, shift=False)
        for n, g in _tiled_grams(params, style, _only(config, config.style_layers), sgrid).items():
            grams[n] = grams.get(n, 0.0) + w * g
    return gatys.Targets(content_feats, {n: grams[n] for n in config.style_layers})


# ----------------------------------------------------------------------------------------------
# Host-side run through the one driver (nst_jax.driver), as gatys.run.


def _build_program(config: gatys.GatysConfig, grid: TileGrid, chunk: int) -> driver.Program:
    solver = gatys.solver_for(tiled_objective(config, grid), config)

    def extra(shift_key, step):
        # The init evaluates on the unshifted grid; iteration k on grid_offset(k).
        return (jnp.zeros(2, jnp.int32),) if step is None else (grid_offset(grid, shift_key, step),)

    def terms(x, params, targets, weights):
        return tiled_loss_terms(x, params, targets, weights, config, grid)

    return driver.build_program(solver, terms, chunk, extra)


def run_tiled(
    params: vgg.Params,
    content: Array,
    style: Array | Sequence[Array],
    config: gatys.GatysConfig = gatys.GatysConfig(),
    weights: gatys.LossWeights | None = None,
    *,
    tile_size: int,
    halo: int | None = None,
    shift: bool | None = None,
    key: Array | None = None,
    init: Array | None = None,
    blend_weights: Sequence[float] | None = None,
    chunk: int = 10,
    callback: Callable[[driver.Progress, Callable[[], np.ndarray]], None] | None = None,
    snapshot_every: int = 0,
) -> driver.RunResult:
    """Runs :func:`nst_jax.gatys.run`'s optimization with VGG seeing one tile at a time.

    Same contract as :func:`nst_jax.gatys.run` (colour control, chunks cut at every multiple of
    ``snapshot_every``, ``callback(progress, get_image)``, Ctrl-C returns the image so far with
    ``interrupted=True``, :class:`NonFiniteLossError` on a non-finite loss) and, with the default
    exact halo, the same iterates up to float rounding. Spatial control (guided Gram matrices) is not
    tiled. The solver works on the whole image; only VGG is tiled. Targets are computed by
    :func:`tiled_targets` with an exact halo. The grid offset of iteration ``k`` is
    :func:`grid_offset` of a key folded from ``key``, so runs are reproducible.

    Args:
      tile_size, halo, shift: see :func:`tile_grid`.
      Other arguments: as for :func:`nst_jax.gatys.run`.

    Returns:
      :class:`nst_jax.driver.RunResult`; its ``terms`` are computed by tiles too.
    """
    if weights is None:
        weights = gatys.loss_weights(config)
    if key is None:
        key = jax.random.key(0)
    original = jnp.asarray(content, jnp.float32)
    _check_image(original, "content")
    grid = tile_grid(original.shape, config.layers, tile_size, halo, shift)
    content, style, init = gatys.prepare_inputs(original, style, config, init)
    targets = tiled_targets(params, content, style, config, tile_size=tile_size, blend_weights=blend_weights)
    x = gatys.initial_image(content, config, key, init)
    prog = driver.program(driver.program_key(config, "tiled", grid, chunk),
                          lambda c: _build_program(c, grid, chunk))
    return driver.drive(prog, x, (params, targets, weights), iterations=config.iterations, chunk=chunk,
                        aux=jax.random.fold_in(key, 1), snapshot_every=snapshot_every, callback=callback,
                        finish=driver.finisher(original, color=config.color, color_space=config.color_space))
