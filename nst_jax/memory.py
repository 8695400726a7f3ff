"""Available memory and the memory estimates that let a job be refused clearly instead of crashing.

* :func:`available_bytes`: the default device's allocator limit (accelerators) or physical RAM (CPU).
* :func:`gatys_bytes`: one Gatys optimization (plain or tiled), counting VGG activations, the
  VGG parameters and the solver's own image-sized vectors per optimizer.
* :func:`adain_bytes`: one AdaIN stylization (encoder on content and styles, decoder);
  :func:`adain_video_height`: the largest frame height of a clip whose batches fit a budget.

Every estimate errs on the safe side of what XLA plans for the compiled program
(``compiled.memory_analysis()``); tests/test_memory.py checks that at small sizes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np

from nst_jax import vgg
from nst_jax.errors import MemoryBudgetError

Params = dict


def available_bytes() -> int:
    """Memory of the default device: its allocator limit on accelerators, physical RAM on CPU."""
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def solver_vectors(optimizer: str, history_size: int) -> int:
    """Image-sized float32 vectors a solver holds at its peak, iterate and gradient included.

    Read from XLA's plan of one donated update (state in, state out, temporaries) on a cheap
    objective, per optimizer (tests/test_memory.py re-measures it):

    * ``"lbfgs"`` (jaxopt): iterate and a state of 2 * history + 1 vectors, and its donated update
      copies the history (2 * history + 6 temporaries): 4 * history + 8.1 measured, 4 * history + 9;
    * ``"optax-lbfgs"``: iterate and a state of 2 * history + 4 vectors, plus ~7 for the line
      search's trial point, gradient and direction: 2 * history + 12.05 measured, 2 * history + 13;
    * ``"adam"``: iterate, two moments, gradient: 4 measured, 5.
    """
    if optimizer == "lbfgs":
        return 4 * history_size + 9
    if optimizer == "optax-lbfgs":
        return 2 * history_size + 13
    return 5


def _vgg_bytes(height: int, width: int, params: Params, layers: Sequence[str], bytes_per: int) -> tuple[int, int]:
    """(activation bytes up to the deepest of ``layers``, bytes of the conv params they use)."""
    deepest = max(vgg.LAYERS.index(n) for n in layers)
    h, w, c, total, weights = height, width, 3, 0, 0
    for name in vgg.LAYERS[: deepest + 1]:
        if name.startswith("conv"):
            kernel = params[name]["kernel"]
            c = int(np.shape(kernel)[-1])
            weights += (int(np.prod(np.shape(kernel))) + c) * 4
        elif name.startswith("pool"):
            h, w = max(h // 2, 1), max(w // 2, 1)
        total += h * w * c
    return total * bytes_per, weights


def gatys_bytes(
    height: int,
    width: int,
    params: Params,
    config,
    *,
    backward: bool = True,
    tile_size: int | None = None,
    tile_halo: int | None = None,
) -> int:
    """Rough peak memory of optimizing a ``height x width`` image (or one forward pass over it).

    Args:
      height, width: the image.
      params: VGG-19 params (channel counts and their own size come from them).
      config: a :class:`nst_jax.gatys.GatysConfig` (layers, optimizer, history size, dtype, remat).
      backward: False for a forward pass only (a style image's Gram matrices).
      tile_size, tile_halo: the tiled run (:mod:`nst_jax.tiling`): activations are those of one
        window of ``tile_size + 2 * halo`` pixels (halo default: the exact receptive halo), while
        the solver still holds whole-image vectors.

    Activations up to the deepest layer are counted three times for the backward pass (features,
    their gradients, XLA's temporaries; 2.5 times with ``remat``: on the CPU backend XLA keeps most
    recomputed activations alive, scripts/memory_profile.py), plus the solver's image-sized vectors
    (:func:`solver_vectors`) and the VGG params.
    """
    bytes_per = 2 if config.compute_dtype == "bfloat16" else 4
    act_h, act_w = height, width
    if tile_size is not None:
        from nst_jax import tiling  # only the tiled case needs it (and it needs jit-heavy gatys)

        halo = tiling.receptive_halo(config.layers) if tile_halo is None else tile_halo
        window = tile_size + 2 * halo
        act_h, act_w = min(height, window), min(width, window)
    activations, weights = _vgg_bytes(act_h, act_w, params, config.layers, bytes_per)
    if not backward:
        return int(activations + weights)
    activations *= 2.5 if config.remat else 3
    solver = solver_vectors(config.optimizer, config.history_size) * height * width * 3 * 4
    return int(activations + solver + weights)


# ----------------------------------------------------------------------------------------------
# AdaIN


def _encoder_floats(vgg_params: Params, height: int, width: int) -> int:
    """Floats in the input and every conv / pool output of the encoder, up to relu4_1."""
    h, w, c = height, width, 3
    total = 2 * h * w * c  # the image and its 1x1 "preprocess" conv
    for name in vgg.ADAIN_VGG.layers:
        if name.startswith("conv"):
            c = int(np.shape(vgg_params[name]["kernel"])[-1])
        elif name.startswith("pool"):
            h, w = -(-h // 2), -(-w // 2)  # ceil-mode pooling
        else:
            continue  # a ReLU is fused into its conv
        total += h * w * c
    return total


def _decoder_floats(decoder_params: Params, height: int, width: int) -> int:
    """Floats in every conv and up-sampling output of the decoder producing a height x width image.

    The decoder mirrors the encoder (Huang & Belongie 2017): layer ``decB_I`` runs at 1/2**(B-1) of
    the output size and a 2x nearest up-sampling follows ``decB_1`` for B > 1. Read from the params'
    layer names, so this module needs nothing from :mod:`nst_jax.adain`.
    """
    layers = {name: tuple(int(v) for v in name[len("dec"):].split("_")) for name in decoder_params}
    top = max(block for block, _ in layers.values())
    base_h, base_w = -(-height // 2 ** (top - 1)), -(-width // 2 ** (top - 1))
    total = 0
    for name, (block, index) in layers.items():
        leaf = decoder_params[name]
        h, w = base_h * 2 ** (top - block), base_w * 2 ** (top - block)
        c = int(np.shape(leaf["kernel"])[-1])
        total += h * w * c
        if index == 1 and block > 1:
            total += 4 * h * w * c  # the up-sampled copy
    return total


def adain_bytes(
    content_hw: tuple[int, int],
    style_hws: Sequence[tuple[int, int]],
    vgg_params: Params,
    decoder_params: Params,
    batch: int = 1,
) -> int:
    """Rough peak memory of one :func:`nst_jax.adain.stylize` call for ``batch`` contents and their styles.

    Counts every activation of the encoder (content and each style) and of the decoder at 4 bytes
    as if all were alive at once. XLA frees most of them early (on CPU the compiled program needs
    about half of this), so the estimate errs on the safe side.

    Args:
      content_hw: (height, width) of the content as it enters the network.
      style_hws: (height, width) of each style image as it enters the network.
      vgg_params, decoder_params: the networks (channel counts come from them).
      batch: contents stylized at once (each with its styles).
    """
    floats = _encoder_floats(vgg_params, *content_hw) + _decoder_floats(decoder_params, *content_hw)
    floats += sum(_encoder_floats(vgg_params, h, w) for h, w in style_hws)
    return 4 * floats * batch


# ----------------------------------------------------------------------------------------------
# AdaIN on a clip: the frame height that fits


ADAIN_MIN_SIDE = vgg.min_image_size(vgg.ADAIN_VGG.layers[-1:])  # the encoder's deepest layer (relu4_1)


def adain_video_bytes(frame_hw: tuple[int, int], style_hws: Sequence[tuple[int, int]], style_size: int | None,
                      vgg_params: Params, decoder_params: Params, batch: int) -> int:
    """:func:`adain_bytes` of one batch of ``batch`` frames of ``frame_hw`` and their styles.

    ``style_hws`` are the styles' stored sizes; each enters at ``style_size`` pixels high (the
    frame's height when None or 0), aspect ratio kept, as ``nst-adain`` resizes them for a clip.
    """
    height = style_size or frame_hw[0]
    sized = [(height, max(1, round(height * sw / sh))) for sh, sw in style_hws]
    return adain_bytes(frame_hw, sized, vgg_params, decoder_params, batch=batch)


class VideoHeight(NamedTuple):
    """The height an AdaIN clip is stylized at (:func:`adain_video_height`)."""

    height: int  # frames are resized to this height; 0 keeps their size (``--size 0``)
    need_bytes: int  # estimated peak at ``height``, the largest over the orientations counted
    shape: tuple[int, int]  # the frame (height, width) of that estimate
    lowered_from: int | None  # the clip's own height when it did not fit and was lowered, else None
    lowered_need_bytes: int | None  # what the clip's own height would have needed


def _frame_shapes(clip_hws: Sequence[tuple[int, int]], height: int) -> list[tuple[int, int]]:
    return [(height, max(1, round(height * w / h))) if height else (h, w) for h, w in dict.fromkeys(clip_hws)]


def adain_video_height(clip_hw: tuple[int, int], requested: int | None, budget_bytes: int,
                       style_hws: Sequence[tuple[int, int]], style_size: int | None, vgg_params: Params,
                       decoder_params: Params, batch: int, *, rotation_known: bool = True) -> VideoHeight:
    """Chooses the frame height of an AdaIN clip run (``--size``) from header sizes and a memory budget.

    Pure: sizes and the budget in, a decision out; nothing is decoded or printed.

    Args:
      clip_hw: the clip's (height, width): upright (rotation applied) when ``rotation_known``, else
        the container header's stored size, and both orientations are counted.
      requested: ``--size`` as given (0 = the clip's own height), or None when not given: then the
        clip's own height, or the largest height whose batches fit ``budget_bytes`` when that does not.
      style_hws, style_size, batch: as for :func:`adain_video_bytes`.

    Raises:
      MemoryBudgetError: a given ``requested`` does not fit, or not even the smallest height the
        encoder takes (:data:`ADAIN_MIN_SIDE`) does.
    """
    hws = [clip_hw] if rotation_known else [clip_hw, clip_hw[::-1]]

    def need(height: int) -> tuple[int, tuple[int, int]]:
        return max((adain_video_bytes(hw, style_hws, style_size, vgg_params, decoder_params, batch), hw)
                   for hw in _frame_shapes(hws, height))

    own = clip_hw[0]
    height = own if requested is None else requested
    need_bytes, shape = need(height)
    if need_bytes <= budget_bytes:
        return VideoHeight(height, need_bytes, shape, None, None)
    if requested is not None:
        raise MemoryBudgetError(_too_large(need_bytes, budget_bytes, shape, batch,
                                           "lower --batch or --size (and --style-size)"))
    lowest = min(ADAIN_MIN_SIDE, own)
    low_bytes, low_shape = need(lowest)
    if low_bytes > budget_bytes:
        raise MemoryBudgetError(_too_large(low_bytes, budget_bytes, low_shape, batch,
                                           "lower --batch (and --style-size)"))
    # The estimate grows with the height: bisect for the largest height within the budget.
    lo, hi = lowest, height  # need(lo) fits, need(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if need(mid)[0] <= budget_bytes else (lo, mid)
    fit_bytes, fit_shape = need(lo)
    return VideoHeight(lo, fit_bytes, fit_shape, own, need_bytes)


def _too_large(need: int, budget: int, shape: tuple[int, int], batch: int, fix: str) -> str:
    h, w = shape
    return (f"batches of {batch} frames at {w}x{h} px need about {need / 2**30:.1f} GiB but {budget / 2**30:.1f} "
            f"GiB are available; {fix}, or raise --max-memory if you know better")
