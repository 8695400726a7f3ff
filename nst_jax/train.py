"""Training the AdaIN decoder (Huang & Belongie 2017, §6.2; report §VI-C), data parallel, resumable.

The decoder g learns to invert AdaIN: with the fixed ``vgg_normalised`` encoder f (up to relu4_1),
``t = AdaIN(f(c), f(s))`` (report eq. 9), and T = g(t) the loss is (report eq. 12-14)

    L = Lc + λ·Ls,   Lc = ‖f(T) − t‖ at relu4_1,
    Ls = Σ_i ‖μ(φ_i(T)) − μ(φ_i(s))‖ + ‖σ(φ_i(T)) − σ(φ_i(s))‖,  φ_i ∈ relu1_1, relu2_1, relu3_1, relu4_1.

How ‖·‖ is reduced, and what λ means (``TrainConfig.loss_norm``)
--------------------------------------------------------------------
The paper and the report write Euclidean norms; the public code uses squared errors, reduced in two
different ways, so the same λ means different things:

* ``"lua"`` (default) — the official Torch code, xunhuang1995/AdaIN-style ``train.lua``:
  ``lib/ContentLossModule.lua`` uses ``nn.MSECriterion`` (mean over N·C·H·W), so
  Lc = mean((f(T) − t)²); ``lib/StyleINLossModule.lua`` uses ``nn.MSECriterion`` with
  ``sizeAverage = false`` on the (N, C) means and standard deviations and divides by N ("normalized
  w.r.t. batch size"), so per layer Ls_i = (1/N) Σ_n Σ_c (Δμ² + Δσ²): summed over channels, averaged
  over the batch. Each style layer gets ``-styleWeight``: default 1e-2 (``decoder-content-similar.t7``);
  the README says ``-styleWeight 1e-1`` reproduces ``decoder.t7``.
* ``"mse"`` — the PyTorch port, naoto0804/pytorch-AdaIN ``net.py``: ``nn.MSELoss`` (mean) for the
  content and for every mean/std term, so Ls_i = (1/(N·C_i)) Σ (Δμ² + Δσ²) = Ls_i(lua) / C_i;
  ``train.py`` defaults to ``--style_weight 10``.
* ``"l2"`` — eq. 13-14 taken literally: un-squared Euclidean norms per sample (over C·H·W for the
  content, over C for each mean/std vector), averaged over the batch. No public implementation uses
  it; it is here to compare against the equations.

Relation between the λ values. Lc is the same mean squared error in "lua" and "mse", and the port's
style term at layer i is the Lua term divided by that layer's width C_i. A port weight λ_pt therefore
equals Lua per-layer weights λ_pt / C_i: with VGG's C = 64, 128, 256, 512 the port's λ = 10 is Lua
weights 0.156, 0.078, 0.039, 0.020 for relu1_1..relu4_1 — between the official 1e-2 and 1e-1, and
tilted towards shallow layers. Conversely the official λ = 0.1 is port weights 6.4, 12.8, 25.6, 51.2;
no single port λ reproduces it. The report (λ = 0.1 "as in the original implementation") quotes the
official ``decoder.t7`` value, which has that meaning only under the Lua reduction; so the defaults
are ``loss_norm="lua"`` with λ = 0.1. ``style_weight=None`` picks :data:`DEFAULT_STYLE_WEIGHTS`
for the chosen norm (0.1 for "lua" and "l2", 10 for "mse").

Deviations, marked where they occur: σ is ``losses.mean_std`` (the port's sqrt(unbiased var + 1e-5))
for every norm, whereas the Lua code uses the biased estimator (+1e-6 inside the root for T only); at
relu4_1 of a 256 crop (32x32) the two differ by a factor sqrt(1024/1023). Adam uses β1 = β2 = 0.9 as
the report states; the official code passes ``beta1 = 0.9`` and leaves torch optim's β2 = 0.999, as
does the port (``TrainConfig.adam_b2 = 0.999`` matches both). The learning rate is reduced on plateau
(the report's ReduceLROnPlateau) by default; ``lr_schedule="inverse"`` is the official
lr / (1 + 5e-5·t), t = number of previous updates.

The model. The decoder is the Flax NNX module :class:`nst_jax.adain.Decoder`; the state splits
it (``nnx.split``) into its static graph and its parameters, and the parameters (a pure-dict
``nnx.State``) are the pytree the step differentiates and Adam (optax) updates; the step rebuilds
the module with ``nnx.merge`` while tracing. Inference (:func:`nst_jax.adain.decode`) runs the same
module on the same tree.

Parallelism and state. One jitted, pure :func:`train_step` runs on a 1-D ``Mesh`` over all devices
("data"): the batch is sharded along it, the decoder and optimizer state are replicated, and XLA
inserts the gradient all-reduce, so a step on D devices computes the same update as on one. The state
is created where it lives (``jax.eval_shape`` + ``jit(out_shardings=...)``) and donated to each step.

Workdir layout (written by process 0; every path is made absolute first): ``config.json`` (all
config fields, device and process counts, JAX version, the step the run resumed from, the number of
unreadable image files skipped per stream), ``metrics.jsonl`` (one line per ``log_every``
steps: step, loss, content_loss, style_loss, grad_norm, lr, images_per_sec — means over the
window; the first window's throughput includes compilation), ``loss_curve.png`` (Lc and Ls,
redrawn at every log), ``checkpoints/<step>/`` (orbax ``CheckpointManager``: every
``checkpoint_every`` steps, at the end and on interruption; ``keep`` newest kept), and
``decoder.npz`` at the end (the decoder alone, :func:`nst_jax.weights.load_adain_decoder` reads it;
:func:`export_decoder` writes one from any checkpoint).

Resuming. A run in a workdir with checkpoints continues from the latest readable one (``--steps``
is the total, so a rerun with a larger value trains only the missing steps). A checkpoint that
cannot be read (a half-written or damaged one: truncated or garbled files, an empty folder) is
moved to ``corrupt_checkpoints/`` with a logged warning and the previous one is used. Metrics lines
logged after the restored step (by a run killed between checkpoints) are dropped, so no step appears
twice; damaged lines (not UTF-8 JSON) are dropped too, after the file is kept as
``metrics.jsonl.damaged``, with a warning. The data streams are random-access in
the step number (:mod:`nst_jax.data`): the resumed run reads exactly the batches the uninterrupted
run would have read, so no iterator state needs saving. A NaN/inf loss or gradient stops training
with :class:`~nst_jax.errors.NonFiniteLossError`; finiteness is checked before every save, so no
checkpoint holds a state produced by a bad step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nst_jax import adain, data, distributed, files, losses, plot, vgg, weights
from nst_jax.errors import (
    ConfigError,
    DeviceCountError,
    NonFiniteLossError,
    OutputPathError,
    ProcessLostError,
    WeightsError,
    check_choice,
)

logger = logging.getLogger(__name__)

Array = jax.Array
Params = Mapping[str, Mapping[str, Array]]

LR_SCHEDULES: tuple[str, ...] = ("plateau", "inverse", "constant")
LOSS_NORMS: tuple[str, ...] = ("lua", "mse", "l2")
DEFAULT_STYLE_WEIGHTS: dict[str, float] = {"lua": 0.1, "mse": 10.0, "l2": 0.1}
CONTENT_LAYER = "relu4_1"
STYLE_LAYERS: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
DATA_AXIS = "data"

CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "corrupt_checkpoints"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss_curve.png"
DECODER_FILE = "decoder.npz"
_CONNECT_TIMEOUT_S = distributed.DEFAULT_TIMEOUT_S  # (the field ``distributed`` hides the module in TrainConfig)


def _field(default: Any, help: str, **kw) -> Any:  # noqa: A002 - argparse vocabulary
    return dataclasses.field(default=default, metadata={"help": help, **kw})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; defaults follow the report §VI-C / the official code.

    ``scripts/train_decoder.py`` generates its flags from these fields (``--batch-size`` for
    ``batch_size``); ``metadata["help"]`` is the flag's help text.
    """

    content_dir: str | None = _field(None, "folder of content images, searched recursively (MS-COCO in the paper)")
    style_dir: str | None = _field(None, "folder of style images, searched recursively (WikiArt in the paper)")
    content_tfds: str | None = _field(None, "TFDS dataset NAME[/CONFIG][:SPLIT] for content, prepared as array_record")
    style_tfds: str | None = _field(None, "TFDS dataset NAME[/CONFIG][:SPLIT] for style, prepared as array_record")
    tfds_data_dir: str | None = _field(None, "TFDS data_dir holding the prepared datasets")
    tfds_image_key: str = _field("image", "name of the image feature in the TFDS datasets")
    vgg: str | None = _field(None, "vgg_normalised encoder .pth or .npz (default: cached or downloaded)")
    steps: int = _field(160_000, "total training steps (the run stops at this step count, resuming included)")
    batch_size: int = _field(8, "global batch of content-style pairs; must divide by the device count")
    load_size: int = _field(512, "resize so the shorter side has this many pixels before cropping (0: keep)")
    crop: int = _field(256, "side of the random square crops")
    lr: float = _field(1e-4, "Adam learning rate")
    adam_b1: float = _field(0.9, "Adam beta1")
    adam_b2: float = _field(0.9, "Adam beta2 (report: 0.9; official code and PyTorch port: 0.999)")
    lr_schedule: str = _field("plateau", "learning-rate schedule", choices=LR_SCHEDULES)
    lr_decay: float = _field(5e-5, "decay d of the inverse schedule lr / (1 + d * step)")
    plateau_factor: float = _field(0.5, "plateau schedule: multiply the learning rate by this on a plateau")
    plateau_patience: int = _field(5, "plateau schedule: windows without improvement before reducing")
    plateau_window: int = _field(500, "plateau schedule: steps whose mean loss is one window")
    style_weight: float | None = _field(None, "style weight lambda (default: 0.1 for lua and l2, 10 for mse)")
    loss_norm: str = _field("lua", "how the loss norms are reduced (see nst_jax.train)", choices=LOSS_NORMS)
    log_every: int = _field(100, "append to metrics.jsonl and redraw loss_curve.png every this many steps")
    checkpoint_every: int = _field(2000, "save a checkpoint every this many steps")
    keep: int = _field(3, "checkpoints to keep")
    seed: int = _field(0, "seed for decoder init, shuffling and crops")
    num_workers: int = _field(4, "grain worker processes decoding images (0: in the main process)")
    distributed: bool = _field(
        False, "several processes, detected from the launcher: SLURM (srun), Open MPI (mpirun), Kubernetes or "
        "Cloud TPU", group="processes")
    coordinator_address: str | None = _field(
        None, "several processes started by hand: HOST:PORT of process 0, the same on every process",
        group="processes", metavar="HOST:PORT")
    num_processes: int | None = _field(None, "number of processes (with --coordinator-address)",
                                       group="processes", metavar="N")
    process_id: int | None = _field(None, "this process, 0 .. N-1 (with --coordinator-address)",
                                    group="processes", metavar="I")
    connect_timeout: float = _field(
        float(_CONNECT_TIMEOUT_S), "seconds to wait for every process to connect, and at each "
        "checkpoint restore for every process to arrive", group="processes", flag="--timeout", min=">0",
        metavar="SECONDS")

    @property
    def effective_style_weight(self) -> float:
        """λ used in the loss: ``style_weight`` or the chosen norm's default."""
        if self.style_weight is not None:
            return float(self.style_weight)
        return DEFAULT_STYLE_WEIGHTS.get(self.loss_norm, DEFAULT_STYLE_WEIGHTS["lua"])


def flag_name(field_name: str) -> str:
    """The command-line flag of a config field (``batch_size`` -> ``--batch-size``)."""
    return "--" + field_name.replace("_", "-")


def check_config(config: TrainConfig) -> TrainConfig:
    """Validates a config; returns it unchanged.

    Raises:
      ConfigError: a value is out of range, a choice is unknown, or the data sources are missing
        or given twice. The message names the flag to change.
    """
    check_choice("learning-rate schedule", config.lr_schedule, LR_SCHEDULES, "--lr-schedule")
    check_choice("loss norm", config.loss_norm, LOSS_NORMS, "--loss-norm")
    for which in ("content", "style"):
        folder, tfds = getattr(config, f"{which}_dir"), getattr(config, f"{which}_tfds")
        if folder is None and tfds is None:
            raise ConfigError(f"no {which} images; pass --{which}-dir FOLDER or --{which}-tfds NAME")
        if folder is not None and tfds is not None:
            raise ConfigError(f"both --{which}-dir and --{which}-tfds given; pass only one")

    def need(ok: bool, name: str, rule: str) -> None:
        if not ok:
            raise ConfigError(f"{flag_name(name)} must be {rule}, got {getattr(config, name)}")

    for name in ("steps", "batch_size", "log_every", "checkpoint_every", "keep", "plateau_patience",
                 "plateau_window"):
        need(isinstance(getattr(config, name), int) and getattr(config, name) >= 1, name, "an integer >= 1")
    need(config.num_workers >= 0, "num_workers", ">= 0")
    min_crop = vgg.min_image_size(STYLE_LAYERS)
    need(config.crop >= min_crop, "crop", f">= {min_crop} (relu4_1 needs a 2x2 map)")
    need(config.load_size == 0 or config.load_size >= config.crop, "load_size",
         f"0 or >= --crop ({config.crop})")
    need(math.isfinite(config.lr) and config.lr > 0, "lr", "> 0")
    need(0 <= config.adam_b1 < 1, "adam_b1", "in [0, 1)")
    need(0 <= config.adam_b2 < 1, "adam_b2", "in [0, 1)")
    need(math.isfinite(config.lr_decay) and config.lr_decay >= 0, "lr_decay", ">= 0")
    need(0 < config.plateau_factor < 1, "plateau_factor", "in (0, 1)")
    need(math.isfinite(config.effective_style_weight) and config.effective_style_weight >= 0,
         "style_weight", "a finite number >= 0")
    need(0 <= config.seed < 2**31, "seed", "in [0, 2^31)")
    need(math.isfinite(config.connect_timeout) and config.connect_timeout > 0, "connect_timeout", "> 0")
    distributed.check_arguments(config.coordinator_address, config.num_processes, config.process_id,
                                auto=config.distributed)
    return config


def initialize_processes(config: TrainConfig,
                         on_stall: Callable[[str], None] | None = None) -> distributed.ProcessInfo:
    """Joins the other processes of a multi-process run (no-op for one process); before any JAX work.

    ``--coordinator-address --num-processes --process-id`` start it by hand, ``--distributed``
    alone lets JAX detect the launcher (:func:`nst_jax.distributed.initialize`). Calling it again
    once connected returns the same :class:`~nst_jax.distributed.ProcessInfo`.

    Raises:
      ConfigError: bad process flags, no coordinator within ``--timeout``, or processes that
        disagree on ``--num-processes``.
    """
    return distributed.initialize(config.coordinator_address, config.num_processes, config.process_id,
                                  auto=config.distributed, timeout_s=config.connect_timeout, on_stall=on_stall)


def check_batch_split(batch_size: int, num_devices: int, num_processes: int = 1) -> int:
    """Returns the per-device batch; the global batch must split evenly over devices and hosts.

    Raises:
      DeviceCountError: ``batch_size`` is not a multiple of ``num_devices`` (or of the process count).
    """
    for count, what in ((num_devices, "devices"), (num_processes, "processes")):
        if batch_size % count:
            lower = batch_size - batch_size % count
            options = f"{lower} or {lower + count}" if lower else f"{count}"
            raise DeviceCountError(
                f"--batch-size {batch_size} does not split evenly over {count} {what}; use a multiple "
                f"of {count} (e.g. {options})")
    return batch_size // num_devices


# ----------------------------------------------------------------------------------------------
# Loss (pure)


def _safe_norm(x: Array, axis: int) -> Array:
    # The Euclidean norm has no gradient at 0; optax.safe_norm gives 0 there instead of NaN.
    return optax.safe_norm(x, 0.0, axis=axis)


def content_term(output: Array, target: Array, loss_norm: str) -> Array:
    """Lc (report eq. 13) between relu4_1 of g(t) and t, reduced as ``loss_norm`` says."""
    d = output.astype(jnp.float32) - target.astype(jnp.float32)
    if loss_norm == "l2":
        return jnp.mean(_safe_norm(d.reshape(d.shape[0], -1), axis=1))
    return jnp.mean(d * d)  # "lua" and "mse": nn.MSECriterion / nn.MSELoss, mean over N·C·H·W


def statistic_term(output: Array, target: Array, loss_norm: str) -> Array:
    """One ‖μ(·) − μ(·)‖ or ‖σ(·) − σ(·)‖ term of report eq. 14 for (N, 1, 1, C) statistics."""
    d = (output - target).reshape(output.shape[0], -1)
    if loss_norm == "mse":
        return jnp.mean(d * d)
    if loss_norm == "lua":  # sizeAverage = false, then "/ N": sum over channels, mean over batch
        return jnp.sum(d * d) / d.shape[0]
    return jnp.mean(_safe_norm(d, axis=1))


def adain_targets(encoder_params: Params, content: Array, style: Array) -> tuple[Array, dict[str, Array]]:
    """t = AdaIN(f(c), f(s)) (report eq. 9) and the style's features at :data:`STYLE_LAYERS`.

    Content and style (same size) go through the fixed encoder as one (2N)-batch. Neither output
    depends on the decoder, so both are constants of the loss (gradients stopped).
    """
    n = content.shape[0]
    feats = adain.encode(encoder_params, jnp.concatenate([content, style]), STYLE_LAYERS)
    s_feats = {layer: jax.lax.stop_gradient(f[n:]) for layer, f in feats.items()}
    t = jax.lax.stop_gradient(losses.adain(feats[CONTENT_LAYER][:n], s_feats[CONTENT_LAYER]))
    return t, s_feats


def output_features(decoder_params: Params, encoder_params: Params, t: Array) -> dict[str, Array]:
    """φ_i(g(t)) at :data:`STYLE_LAYERS` (relu4_1 doubles as f(g(t)) for the content loss).

    g is the :class:`nst_jax.adain.Decoder` module rebuilt from its static graph and the params
    (``nnx.merge``; free at run time, it happens while tracing). Its output is not clipped, as in
    both reference implementations.
    """
    decoder = adain.Decoder.merge(decoder_params)
    return adain.encode(encoder_params, decoder(t), STYLE_LAYERS)


def adain_loss_terms(out_feats: Mapping[str, Array], t: Array, style_feats: Mapping[str, Array],
                     loss_norm: str) -> tuple[Array, Array]:
    """(Lc, Ls) of report eq. 13-14 from the output's features, the target t and the style's features."""
    lc = content_term(out_feats[CONTENT_LAYER], t, loss_norm)
    ls = jnp.zeros((), jnp.float32)
    for layer in STYLE_LAYERS:  # equal weights, as in the paper
        # Deviation for "lua": σ is pytorch-AdaIN's sqrt(unbiased var + 1e-5) for every norm, where
        # the Lua code uses the biased estimator; they differ by a factor sqrt(HW / (HW - 1)).
        o_mean, o_std = losses.mean_std(out_feats[layer])
        s_mean, s_std = losses.mean_std(style_feats[layer])
        ls = ls + statistic_term(o_mean, s_mean, loss_norm) + statistic_term(o_std, s_std, loss_norm)
    return lc, ls


def adain_losses(decoder_params: Params, encoder_params: Params, content: Array, style: Array,
                 loss_norm: str = "lua") -> tuple[Array, Array]:
    """(Lc, Ls) of report eq. 13-14 for NHWC float images in [0, 1] of the same size.

    t = AdaIN(f(c), f(s)) is both the decoder input and the content target, as in the paper.
    """
    t, style_feats = adain_targets(encoder_params, content, style)
    return adain_loss_terms(output_features(decoder_params, encoder_params, t), t, style_feats, loss_norm)


def to_float_images(batch: Array) -> Array:
    """uint8 NHWC (as the input pipeline delivers) to float32 [0, 1]; float input is passed through."""
    if jnp.issubdtype(batch.dtype, jnp.integer):
        return batch.astype(jnp.float32) / 255.0
    return batch.astype(jnp.float32)


def loss_fn(decoder_params: Params, encoder_params: Params, batch: Mapping[str, Array], *,
            style_weight: float, loss_norm: str) -> tuple[Array, tuple[Array, Array]]:
    """L = Lc + λ·Ls (report eq. 12); returns (L, (Lc, Ls))."""
    lc, ls = adain_losses(decoder_params, encoder_params, to_float_images(batch["content"]),
                          to_float_images(batch["style"]), loss_norm)
    return lc + style_weight * ls, (lc, ls)


# ----------------------------------------------------------------------------------------------
# Optimizer and state


class TrainState(NamedTuple):
    """Everything a checkpoint holds: steps done, decoder params, optimizer state.

    ``params`` is the trainable half of ``nnx.split(adain.Decoder(widths))`` as a pure dict
    (``{"dec4_1": {"kernel", "bias"}, ...}``); the static half, the graph, follows from the widths
    (``adain.Decoder.graphdef``). The pure dict is the layout of the checkpoints, of ``decoder.npz``
    and of :func:`nst_jax.adain.decode`'s params, so all three read the same tree.
    """

    step: Array
    params: Params
    opt_state: optax.OptState


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """The static (compile-time) part of the optimizer; a cache key for compiled steps.

    The learning rate and the style weight are not here: they enter the step as traced scalars
    (:class:`Hyper`), so a resumed run may lower ``--lr`` and tests may vary them without
    recompiling.
    """

    b1: float
    b2: float
    schedule: str
    decay: float
    plateau_factor: float
    plateau_patience: int
    plateau_window: int

    @classmethod
    def from_config(cls, config: TrainConfig) -> OptimizerSpec:
        return cls(config.adam_b1, config.adam_b2, config.lr_schedule, config.lr_decay,
                   config.plateau_factor, config.plateau_patience, config.plateau_window)


class Hyper(NamedTuple):
    """Traced hyper-parameters of a step: base learning rate and style weight λ."""

    lr: Array
    style_weight: Array

    @classmethod
    def from_config(cls, config: TrainConfig) -> Hyper:
        return cls(jnp.asarray(config.lr, jnp.float32), jnp.asarray(config.effective_style_weight, jnp.float32))


@functools.lru_cache(maxsize=16)
def make_optimizer(spec: OptimizerSpec) -> optax.GradientTransformationExtraArgs:
    """Adam's direction (``optax.scale_by_adam``, eps 1e-8 as torch) and, for "plateau", its reduction.

    The learning rate itself is applied by :func:`train_step` (times :func:`schedule_factor`), so
    ``-lr * updates`` equals ``optax.adam(lr)``. "plateau" chains ``optax.contrib.reduce_on_plateau``
    after Adam: it scales Adam's updates, which is a learning-rate reduction because Adam's step does
    not depend on the gradient's scale; it compares means of ``plateau_window`` consecutive losses.
    """
    adam = optax.scale_by_adam(b1=spec.b1, b2=spec.b2, eps=1e-8)
    if spec.schedule == "plateau":
        return optax.chain(adam, optax.contrib.reduce_on_plateau(
            factor=spec.plateau_factor, patience=spec.plateau_patience, rtol=1e-4,
            accumulation_size=spec.plateau_window, min_scale=1e-3))
    return optax.chain(adam)


def schedule_factor(spec: OptimizerSpec, step: Array) -> Array:
    """Learning-rate multiplier for the update that starts after ``step`` updates.

    "inverse" is the official Torch ``optim.adam`` ``learningRateDecay``: lr / (1 + decay·t), t the
    number of updates done before this one (pytorch-AdaIN's ``adjust_learning_rate`` likewise).
    """
    if spec.schedule == "inverse":
        return 1.0 / (1.0 + spec.decay * step.astype(jnp.float32))
    return jnp.ones((), jnp.float32)


def current_lr(spec: OptimizerSpec, hyper: Hyper, step: Array, opt_state: optax.OptState) -> Array:
    """Effective learning rate of the update after ``step`` updates, plateau reductions included."""
    lr = hyper.lr * schedule_factor(spec, step)
    if spec.schedule == "plateau":
        lr = lr * optax.tree.get(opt_state, "scale")
    return lr


def init_state(key: Array, widths: tuple[int, int, int, int], spec: OptimizerSpec) -> TrainState:
    """Fresh state: a new :class:`nst_jax.adain.Decoder` split into graph and params, zeroed optimizer state."""
    _, state = nnx.split(adain.Decoder(widths, rngs=nnx.Rngs(params=key)), nnx.Param)
    params = nnx.to_pure_dict(state)
    return TrainState(jnp.zeros((), jnp.int32), params, make_optimizer(spec).init(params))


def train_step(state: TrainState, batch: Mapping[str, Array], encoder_params: Params, hyper: Hyper, *,
               spec: OptimizerSpec, loss_norm: str) -> tuple[TrainState, dict]:
    """One Adam step on a batch ``{"content", "style"}`` of NHWC images (uint8 or float [0, 1]).

    Pure; :func:`compiled_train_step` jits it with shardings and state donation (place the inputs
    with :func:`replicate` and :func:`shard_batch` to reuse the compilation). The fixed encoder
    and the traced hyper-parameters are arguments rather than state: they are not trained and not
    checkpointed.

    Returns:
      (new state, metrics): loss, content_loss, style_loss (Ls before λ), grad_norm, lr (used by
      this update) and ``finite`` (loss and gradients finite; the new state is bad if false).
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (lc, ls)), grads = grad_fn(state.params, encoder_params, batch, style_weight=hyper.style_weight,
                                      loss_norm=loss_norm)
    direction, opt_state = make_optimizer(spec).update(grads, state.opt_state, state.params, value=loss)
    lr = hyper.lr * schedule_factor(spec, state.step)
    params = optax.apply_updates(state.params, jax.tree.map(lambda u: -lr * u, direction))
    grad_norm = optax.tree.norm(grads)
    metrics = {
        "loss": loss, "content_loss": lc, "style_loss": ls, "grad_norm": grad_norm,
        "lr": current_lr(spec, hyper, state.step, opt_state),
        "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm),
    }
    return TrainState(state.step + 1, params, opt_state), metrics


def make_mesh(devices=None) -> Mesh:
    """1-D mesh named "data" over ``devices`` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


@functools.lru_cache(maxsize=16)
def compiled_train_step(spec: OptimizerSpec, loss_norm: str, mesh: Mesh):
    """:func:`train_step` jitted for ``mesh``: batch sharded on "data", the rest replicated, state donated.

    Cached on its (hashable) arguments so repeated ``train`` calls in one process reuse the
    compiled step.
    """
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P(DATA_AXIS))
    step = functools.partial(train_step, spec=spec, loss_norm=loss_norm)
    return jax.jit(step, in_shardings=(replicated, batch_sharding, replicated, replicated),
                   out_shardings=(replicated, replicated), donate_argnums=0)


@functools.lru_cache(maxsize=16)
def _compiled_init(widths: tuple[int, int, int, int], spec: OptimizerSpec, mesh: Mesh):
    make = functools.partial(init_state, widths=widths, spec=spec)
    shapes = jax.eval_shape(make, jax.random.key(0))
    replicated = NamedSharding(mesh, P())
    shardings = jax.tree.map(lambda _: replicated, shapes)
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    return jax.jit(make, out_shardings=shardings), abstract


def create_state(key: Array, widths: tuple[int, int, int, int], spec: OptimizerSpec,
                 mesh: Mesh) -> tuple[TrainState, TrainState]:
    """Creates the state directly in its (replicated) place; returns (state, abstract state).

    ``jax.eval_shape`` gives the state's structure without computing it, and ``jit(out_shardings=...)``
    materializes it on the mesh. The abstract state (``jax.ShapeDtypeStruct`` leaves carrying their
    sharding) is what a checkpoint restore needs.
    """
    make, abstract = _compiled_init(tuple(widths), spec, mesh)
    return make(key), abstract


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree (numpy or JAX leaves) on every device of ``mesh``, as the step expects."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, Array]:
    """Global arrays split along the batch axis over the "data" mesh axis.

    Each process passes its own slice of the global batch (with one process, the whole batch).
    """
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def encoder_widths(encoder_params: Params) -> tuple[int, int, int, int]:
    """Decoder widths mirroring an encoder: channels of relu4_1, relu3_x, relu2_x, relu1_x."""
    try:
        return tuple(int(np.shape(encoder_params[name]["kernel"])[-1])
                     for name in ("conv4_1", "conv3_1", "conv2_1", "conv1_1"))  # type: ignore[return-value]
    except (KeyError, TypeError, IndexError) as err:
        raise WeightsError(f"encoder params lack {err}; pass AdaIN's vgg_normalised weights with --vgg") from None


# ----------------------------------------------------------------------------------------------
# Host side: sources, files, checkpoints


def make_source(config: TrainConfig, which: str) -> tuple[Any, int]:
    """Builds the content or style source; returns (source, number of unreadable files skipped)."""
    folder, tfds = getattr(config, f"{which}_dir"), getattr(config, f"{which}_tfds")
    if folder is not None:
        scan = data.scan_image_folder(folder)
        return data.ImageFolderSource(scan.files, config.load_size, config.crop), len(scan.skipped)
    return data.TfdsImageSource(tfds, config.load_size, config.crop, data_dir=config.tfds_data_dir,
                                image_key=config.tfds_image_key), 0


# A metrics record is about 250 bytes; a longer line is not one the trainer wrote.
_MAX_METRICS_LINE = 1 << 16


def _parse_record(line: bytes) -> dict | None:
    """The record on one metrics.jsonl line, or None when it is not one (bad UTF-8, JSON or fields)."""
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    step = record.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        return None
    for key in ("content_loss", "style_loss"):  # what the loss curve draws
        value = record.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return None
    return record


def _scan_metrics(path: Path) -> tuple[list[dict], int]:
    """(records, number of damaged lines) of a metrics.jsonl; a torn last line is not counted as damage."""
    records, bad = [], 0
    if not path.is_file():
        return records, bad
    with open(path, "rb") as f:
        while line := f.readline(_MAX_METRICS_LINE + 1):
            torn = not line.endswith(b"\n")
            if torn and len(line) > _MAX_METRICS_LINE:  # over-long: skip the rest of it unread
                while (rest := f.readline(_MAX_METRICS_LINE)) and not rest.endswith(b"\n"):
                    pass
                bad += 1
                continue
            if not line.strip():
                continue
            record = _parse_record(line)
            if record is not None:
                records.append(record)
            elif not torn:  # a torn last line is what a run killed mid-write leaves
                bad += 1
    return records, bad


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """The records of ``workdir/metrics.jsonl``; lines that are not records (a torn last line from a
    killed run, bytes that are not UTF-8 JSON) are left out."""
    return _scan_metrics(Path(workdir) / METRICS_FILE)[0]


def plot_metrics(records: list[dict], path: Path) -> None:
    """Draws Lc and Ls against the step (report Fig. 7) into ``path``."""
    steps = [r["step"] for r in records]
    series = {"content loss Lc": (steps, [r["content_loss"] for r in records]),
              "style loss Ls": (steps, [r["style_loss"] for r in records])}
    plot.save_line_plot(path, series, title="AdaIN decoder training", y_label="loss", log_y=True)


def _checkpoint_manager(workdir: Path, config: TrainConfig):
    import orbax.checkpoint as ocp

    # Synchronous saves: a checkpoint is on disk before the next step starts, so a killed run loses at
    # most ``checkpoint_every`` steps. Saving a decoder every few thousand steps costs well under 0.1%.
    options = ocp.CheckpointManagerOptions(max_to_keep=config.keep, save_interval_steps=config.checkpoint_every,
                                           enable_async_checkpointing=False)
    return _open_manager(workdir / CHECKPOINT_DIR, options)


def _open_manager(root: Path, options=None):
    import orbax.checkpoint as ocp

    # One unnamed item, declared up front. Left to itself the manager infers "one item or several"
    # from the layout of the newest step folder and keeps that answer: an empty newest folder then
    # made every older, intact checkpoint fail to restore as well.
    return ocp.CheckpointManager(root, options=options, item_handlers=ocp.StandardCheckpointHandler())


# Errors orbax / tensorstore raise for missing, truncated or garbled checkpoint files
# (FileNotFoundError, json.JSONDecodeError and tensorstore's ValueError among them).
_RESTORE_ERRORS = (OSError, ValueError, KeyError, TypeError)


def _unreadable_checkpoint(err: Exception) -> bool:
    """Whether ``err`` from a restore means damaged files (as opposed to a bug to let through)."""
    if isinstance(err, _RESTORE_ERRORS):
        return True
    # orbax re-raises a failed tensorstore read (e.g. a data file truncated to 0 bytes) as a plain
    # ``Exception`` chained to the real error; only that exact wrapping is a damaged file.
    return _wrapped_read_error(err) is not None


def _wrapped_read_error(err: Exception) -> BaseException | None:
    if type(err) is Exception and isinstance(err.__cause__, _RESTORE_ERRORS):
        return err.__cause__
    return None


@contextlib.contextmanager
def _holding_unraisable():
    """Holds back what reaches ``sys.unraisablehook`` in the block, then passes on what is left.

    Yields the list of held reports; the block clears it to drop them.
    """
    held: list = []
    previous = sys.unraisablehook
    sys.unraisablehook = held.append
    try:
        yield held
    finally:
        sys.unraisablehook = previous
        for report in held:
            previous(report)


class _UnreadableCheckpoint(Exception):
    """A checkpoint's files are missing, truncated or garbled; ``str()`` says why in one line."""


def _restore_step(manager, step: int, args):
    """``manager.restore(step, args)``; damaged files raise :class:`_UnreadableCheckpoint`, quietly.

    When orbax's read of a damaged checkpoint fails, its other reads still complete (on
    tensorstore's threads) and report "Event loop is closed", and its abandoned coroutines report
    the read error again when collected, all through ``sys.unraisablehook``: dozens of tracebacks on
    stderr for an error that is handled. Those are dropped; anything else is passed on.
    """
    with _holding_unraisable() as held:
        try:
            return manager.restore(step, args=args)
        except Exception as err:  # narrowed at once: anything but damaged files propagates
            if not _unreadable_checkpoint(err):
                raise
            why = _restore_failure(err)
        # Out of the except block the error and its frames are released; collect them now and
        # wait (bounded) until the late reports stop, then drop them.
        deadline = time.monotonic() + _SETTLE_LIMIT_S
        seen = -1
        while len(held) != seen and time.monotonic() < deadline:
            seen = len(held)
            gc.collect()
            time.sleep(_SETTLE_QUIET_S)
        logger.debug("restoring step %d failed; dropped %d follow-up error report(s)", step, len(held))
        held.clear()
    raise _UnreadableCheckpoint(why)


_SETTLE_QUIET_S = 0.2
_SETTLE_LIMIT_S = 5.0


def _restore_failure(err: Exception) -> str:
    """One line saying why a restore failed (the tensorstore error, not orbax's wrapper)."""
    return _one_line(_wrapped_read_error(err) or err)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def restore_latest(manager, abstract: TrainState, workdir: Path, *, info: distributed.ProcessInfo | None = None,
                   timeout_s: float = distributed.DEFAULT_TIMEOUT_S) -> tuple[TrainState | None, list[str]]:
    """Restores the newest readable checkpoint; unreadable newer ones are moved to ``corrupt_checkpoints/``.

    In a multi-process run every process takes part: they first check that they see the same
    checkpoints (one shared workdir), then restore the newest step that every one of them can read
    (a step unreadable on any process is skipped by all), so all resume from the same step.

    Returns:
      (state or None when there is no checkpoint, warnings).

    Raises:
      ConfigError: checkpoints exist but none can be restored into this configuration.
    """
    import orbax.checkpoint as ocp

    info = info or distributed.ProcessInfo()
    steps = sorted(manager.all_steps(), reverse=True)
    distributed.agree("checkpoint_steps", str(steps), info, timeout_s=timeout_s,
                      flag=f"checkpoint steps in {workdir / CHECKPOINT_DIR} (one folder all processes share)")
    failed: list[tuple[int, str]] = []
    for step in steps:
        why = None
        try:
            state = _restore_step(manager, step, ocp.args.StandardRestore(abstract))
        except _UnreadableCheckpoint as err:
            why = str(err)
        if info.count > 1 and not _all_processes(why is None):
            why = why or "unreadable on another process"
        if why is not None:
            failed.append((step, why))
            continue
        warnings = []
        for bad, why in failed:
            # Moved aside (not deleted) so that the next save of that step number cannot collide
            # with it and the evidence stays for inspection.
            dest = workdir / CORRUPT_DIR / str(bad)
            if info.is_main:
                dest.parent.mkdir(exist_ok=True)
                files.move_aside(workdir / CHECKPOINT_DIR / str(bad), dest)
            warnings.append(f"checkpoint at step {bad} is unreadable ({why}); moved it to {dest} and "
                            f"resumed from step {step}")
        if failed:
            distributed.barrier(f"moved_aside/{step}", info, timeout_s=timeout_s)
            manager.reload()
        for w in warnings:
            logger.warning("%s", w)
        return TrainState(*state), warnings
    if failed:
        step, why = failed[0]
        raise ConfigError(f"no checkpoint in {workdir / CHECKPOINT_DIR} can be restored (step {step}: {why}); "
                          "they may come from another configuration (encoder widths, --lr-schedule); "
                          "use a new --workdir")
    return None, []


def export_decoder(workdir: str | os.PathLike, out: str | os.PathLike, *, step: int | None = None) -> Path:
    """Writes the decoder params of a checkpoint (default: the latest readable) to an npz, atomically.

    The file loads with :func:`nst_jax.weights.load_adain_decoder` and is what ``nst-adain
    --decoder`` takes.

    Raises:
      ConfigError: the workdir has no (readable) checkpoint.
    """
    import orbax.checkpoint as ocp

    root = _absolute(workdir) / CHECKPOINT_DIR  # orbax accepts only absolute paths
    if not root.is_dir():
        raise ConfigError(f"no checkpoints in {workdir}; train first or pass the training --workdir")
    with _open_manager(root) as manager:
        steps = [step] if step is not None else sorted(manager.all_steps(), reverse=True)
        errors = []
        for s in steps:
            try:
                # Reading the saved tree as-is (numpy leaves) needs no abstract target.
                restored = _restore_step(manager, s, ocp.args.StandardRestore())
            except _UnreadableCheckpoint as err:
                errors.append(f"step {s}: {err}")
                continue
            params = restored["params"] if isinstance(restored, Mapping) else restored[1]
            return weights.save_adain_decoder(jax.device_get(params), out)
    raise ConfigError(f"no readable checkpoint in {root} ({'; '.join(errors) or 'none saved'}); "
                      "train first or pass the training --workdir")


# ----------------------------------------------------------------------------------------------
# The loop


@dataclasses.dataclass(frozen=True)
class TrainProgress:
    """What :func:`train` reports to its callback after each step (optimization runs report a
    :class:`nst_jax.driver.Progress` per chunk instead)."""

    step: int
    start_step: int
    total: int
    record: dict | None  # the metrics.jsonl record when this step was logged


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns."""

    state: TrainState
    start_step: int  # steps already done when this run began (0, or the restored checkpoint)
    step: int  # steps done at the end
    records: list[dict]  # metrics records logged by this run
    skipped: dict[str, int]  # unreadable files skipped per stream ("content", "style")
    warnings: list[str]
    interrupted: bool
    decoder_path: Path | None


def _check_finite(pending: list[tuple[int, dict]], last_checked: int, latest_ckpt: int | None) -> None:
    for step, m in pending:
        if not bool(m["finite"]):
            kind = "inf" if math.isinf(float(m["loss"])) else "nan"  # finite loss, bad gradients: nan
            ckpt = f"step {latest_ckpt}" if latest_ckpt is not None else "none"
            raise NonFiniteLossError(
                f"loss became {kind} between step {last_checked} and {pending[-1][0]} (first at step {step}); "
                f"last good checkpoint: {ckpt}; lower --lr or --style-weight and rerun to resume from it")


def _record(step: int, window: list[dict], batch_size: int, seconds: float) -> dict:
    mean = lambda k: float(np.mean([float(m[k]) for m in window]))  # noqa: E731
    return {
        "step": step, "loss": mean("loss"), "content_loss": mean("content_loss"),
        "style_loss": mean("style_loss"), "grad_norm": mean("grad_norm"), "lr": float(window[-1]["lr"]),
        "images_per_sec": len(window) * batch_size / max(seconds, 1e-9),
    }


def _write_config(workdir: Path, config: TrainConfig, mesh: Mesh, start_step: int,
                  skipped: Mapping[str, int]) -> None:
    record = dataclasses.asdict(config)
    record.update(style_weight_used=config.effective_style_weight, num_devices=mesh.size,
                  num_processes=jax.process_count(), jax_version=jax.__version__, resumed_from_step=start_step,
                  skipped_unreadable_files=dict(skipped))
    files.atomic_write_text(workdir / CONFIG_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")


def _trim_metrics(workdir: Path, start_step: int) -> tuple[list[dict], str | None]:
    """Drops records logged after ``start_step`` (by a run that died before its next checkpoint).

    Damaged lines (not UTF-8, not JSON, not a record) do not stop a resume: the log is the
    trainer's own and the checkpoint holds the state. The damaged file is kept, renamed to
    ``metrics.jsonl.damaged[.N]``, and the returned warning says where.

    Returns:
      (the records kept, a warning or None).
    """
    path = workdir / METRICS_FILE
    records, bad = _scan_metrics(path)
    records = [r for r in records if r["step"] <= start_step]
    warning = None
    if bad:
        backup = path.with_name(path.name + ".damaged")
        n = 0
        while backup.exists():
            n += 1
            backup = path.with_name(f"{path.name}.damaged.{n}")
        files.atomic_write_bytes(backup, path.read_bytes())  # the new log is then written over path
        warning = (f"{path} had {bad} damaged line(s) (not UTF-8 JSON records); kept it as {backup} and "
                   f"continued with its {len(records)} readable record(s)")
        logger.warning("%s", warning)
    if path.exists() or bad:
        files.atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    return records, warning


def train(config: TrainConfig, workdir: str | os.PathLike, *, encoder_params: Params | None = None,
          callback: Callable[[TrainProgress], None] | None = None,
          stop: threading.Event | None = None, devices=None) -> TrainResult:
    """Trains (or resumes training) the AdaIN decoder; the Flax-example ``train(config, workdir)``.

    Args:
      config: the run's settings (checked with :func:`check_config`).
      workdir: folder for config, metrics, plot, checkpoints and the exported decoder; created if
        missing. If it holds checkpoints, training resumes from the latest readable one.
      encoder_params: the encoder; default: ``weights.resolve_weights("adain_vgg", config.vgg)``.
      callback: called with a :class:`TrainProgress` after every step (the CLI drives tqdm with it).
      stop: when set (e.g. by a SIGINT handler), training saves a checkpoint at the current step
        and returns with ``interrupted=True``.
      devices: devices to train on (default: all); the batch is split over them.

    Returns:
      A :class:`TrainResult`.

    Raises:
      ConfigError / DeviceCountError: invalid settings or a batch that does not split over devices.
      InputImageError: an image folder is missing or has no readable image.
      OutputPathError: ``workdir`` is a file or cannot be created.
      NonFiniteLossError: the loss or gradients became NaN/inf; no checkpoint of a bad state is saved.
    """
    check_config(config)
    # Resolved once, here: orbax refuses relative checkpoint paths, and grain worker processes
    # must find the images wherever the current directory is later.
    config = absolute_paths(config)
    workdir = _absolute(workdir)
    info = initialize_processes(config)
    mesh = make_mesh(devices)
    check_batch_split(config.batch_size, mesh.size, info.count)
    # Every process must train the same run: a differing setting would silently diverge the replicas.
    for name, value in _run_settings(config).items():
        distributed.agree(f"config/{name}", json.dumps(value), info, timeout_s=config.connect_timeout,
                          flag=flag_name(name))
    # Scan the image folders before compiling anything: a bad folder is refused in milliseconds.
    content_source, skipped_content = make_source(config, "content")
    style_source, skipped_style = make_source(config, "style")
    skipped = {"content": skipped_content, "style": skipped_style}
    workdir = _make_workdir(workdir)
    _check_shared_workdir(workdir, info, config.connect_timeout)
    is_main = info.is_main

    if encoder_params is None:
        encoder_params = weights.resolve_weights("adain_vgg", config.vgg)
    widths = encoder_widths(encoder_params)
    encoder = replicate(jax.tree.map(lambda a: np.asarray(a, np.float32), encoder_params), mesh)

    spec = OptimizerSpec.from_config(config)
    hyper = replicate(Hyper.from_config(config), mesh)
    step_fn = compiled_train_step(spec, config.loss_norm, mesh)
    state, abstract = create_state(jax.random.key(config.seed), widths, spec, mesh)

    manager = _checkpoint_manager(workdir, config)
    stream = None
    try:
        restored, warnings = restore_latest(manager, abstract, workdir, info=info,
                                            timeout_s=config.connect_timeout)
        if restored is not None:
            state = restored
        start_step = int(jax.device_get(state.step))
        latest_ckpt = manager.latest_step()
        history: list[dict] = []
        if is_main:
            _write_config(workdir, config, mesh, start_step, skipped)
            history, metrics_warning = _trim_metrics(workdir, start_step)
            if metrics_warning:
                warnings = [*warnings, metrics_warning]
        records: list[dict] = []
        interrupted = False
        step = start_step
        if start_step < config.steps:
            local_batch = config.batch_size // info.count
            stream = iter(data.pair_batches(
                content_source, style_source, batch_size=local_batch, crop=config.crop, seed=config.seed,
                start_step=start_step, num_workers=config.num_workers,
                process_index=info.index, process_count=info.count))
            pending: list[tuple[int, dict]] = []  # device metrics not yet checked
            window: list[dict] = []  # host metrics since the last log line
            last_checked, window_start = start_step, time.perf_counter()
            for step in range(start_step + 1, config.steps + 1):
                content, style = next(stream)
                batch = shard_batch({"content": content, "style": style}, mesh)
                state, metrics = step_fn(state, batch, encoder, hyper)
                pending.append((step, metrics))
                stop_now = stop is not None and stop.is_set()
                if info.count > 1:  # all stop at the same step, or the others wait in the next all-reduce
                    stop_now = _any_process(stop_now)
                log_now = step % config.log_every == 0 or step == config.steps or stop_now
                save_now = step % config.checkpoint_every == 0 or step == config.steps
                if log_now or save_now or stop_now:
                    # One device->host sync per boundary; every state saved below has been checked.
                    pending = [(s, jax.device_get(m)) for s, m in pending]
                    _check_finite(pending, last_checked, latest_ckpt)
                    window.extend(m for _, m in pending)
                    pending, last_checked = [], step
                record = None
                if log_now and window:
                    record = _record(step, window, config.batch_size, time.perf_counter() - window_start)
                    window, window_start = [], time.perf_counter()
                    records.append(record)
                    if is_main:
                        with open(workdir / METRICS_FILE, "a", encoding="utf-8") as f:
                            f.write(json.dumps(record) + "\n")
                        plot_metrics(history + records, workdir / PLOT_FILE)
                if save_now or stop_now:
                    _save(manager, step, state, force=stop_now or step == config.steps)
                    latest_ckpt = manager.latest_step()
                if callback is not None:
                    callback(TrainProgress(step, start_step, config.steps, record))
                if stop_now:
                    interrupted = True
                    break
        manager.wait_until_finished()
        decoder_path = None
        if not interrupted and is_main:
            decoder_path = weights.save_adain_decoder(jax.device_get(state.params), workdir / DECODER_FILE)
        return TrainResult(state=state, start_step=start_step, step=step, records=records,
                           skipped=skipped,
                           warnings=warnings, interrupted=interrupted, decoder_path=decoder_path)
    except jax.errors.JaxRuntimeError as err:
        if info.count > 1:  # a collective lost its peer: say so in one line, not a runtime traceback
            raise _process_lost(err, info) from None
        raise
    finally:
        if stream is not None and hasattr(stream, "close"):
            stream.close()
        manager.wait_until_finished()
        manager.close()


def _absolute(path: str | os.PathLike) -> Path:
    """``path`` with ``~`` expanded, made absolute and normalized (symlinks are left as they are)."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def absolute_paths(config: TrainConfig) -> TrainConfig:
    """The config with every file and folder path (images, TFDS data_dir, --vgg) made absolute."""
    fields = ("content_dir", "style_dir", "tfds_data_dir", "vgg")
    return dataclasses.replace(config, **{name: str(_absolute(getattr(config, name))) for name in fields
                                          if getattr(config, name) is not None})


# What each fixed entry of a workdir must be when it exists: True for a folder, False for a file.
_WORKDIR_ENTRIES: dict[str, bool] = {CHECKPOINT_DIR: True, CORRUPT_DIR: True, CONFIG_FILE: False,
                                     METRICS_FILE: False, PLOT_FILE: False, DECODER_FILE: False}


def _make_workdir(workdir: Path) -> Path:
    """Creates ``workdir`` (and its parents) if missing; checks the kind of the entries it holds.

    Raises:
      OutputPathError: the path is a file, it cannot be created (e.g. it sits under a file), or
        one of its fixed entries (``checkpoints``, ``metrics.jsonl``, ...) is of the wrong kind.
    """
    if workdir.exists() and not workdir.is_dir():
        raise OutputPathError(f"--workdir {workdir} is a file; pass a folder")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputPathError(f"cannot create --workdir {workdir} ({err.strerror or err}); "
                              "choose another folder") from err
    for name, is_dir in _WORKDIR_ENTRIES.items():
        entry = workdir / name
        if entry.exists() and not (entry.is_dir() if is_dir else entry.is_file()):
            want = "folder" if is_dir else "regular file"
            raise OutputPathError(f"{entry} is not a {want}, which training keeps there; move it out of "
                                  "the way or pass another --workdir")
    return workdir


SHARED_CHECK_FILE = ".processes"


def _check_shared_workdir(workdir: Path, info: distributed.ProcessInfo, timeout_s: float) -> None:
    """In a multi-process run, checks that every process sees the folder process 0 writes to.

    Checkpoints are written jointly (orbax: each process its part, process 0 the metadata), so the
    workdir must be one shared folder (a network filesystem or a bucket), not one copy per machine.

    Raises:
      ConfigError: a process does not see process 0's marker file in its --workdir.
    """
    if info.count == 1:
        return
    path = workdir / SHARED_CHECK_FILE
    if info.is_main:
        files.atomic_write_text(path, f"{os.getpid()}-{time.time_ns()}\n")
    distributed.barrier("shared_workdir/written", info, timeout_s=timeout_s)
    try:
        seen = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        seen = "nothing"
    try:
        distributed.agree("shared_workdir", seen, info, timeout_s=timeout_s)
    except ConfigError as err:
        raise ConfigError(f"--workdir {workdir} is not one folder shared by all processes ({err}); put it on a "
                          "filesystem every machine mounts (NFS, Lustre, a FUSE bucket)") from None


def _process_lost(err: Exception, info: distributed.ProcessInfo) -> ProcessLostError:
    return ProcessLostError(
        f"process {info.index} of {info.count}: another process stopped or lost its connection "
        f"({_one_line(err)}); rerun the same command on every process to resume from the last checkpoint")


def _any_process(flag: bool) -> bool:
    """Whether ``flag`` is set on any process (a collective: every process must call it)."""
    from jax.experimental import multihost_utils

    try:
        return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))
    except ValueError as err:  # a peer that died during dispatch surfaces here as a ValueError
        raise _process_lost(err, distributed.ProcessInfo(jax.process_index(), jax.process_count())) from None


def _all_processes(flag: bool) -> bool:
    """Whether ``flag`` is set on every process (a collective: every process must call it)."""
    return not _any_process(not flag)


def _run_settings(config: TrainConfig) -> dict:
    """The config fields that must be equal on every process."""
    settings = dataclasses.asdict(config)
    for name in ("process_id", "num_workers", "connect_timeout"):  # per machine; no effect on the result
        del settings[name]
    return settings


def _save(manager, step: int, state: TrainState, *, force: bool) -> None:
    import orbax.checkpoint as ocp

    if step in manager.all_steps():
        return
    manager.save(step, args=ocp.args.StandardSave(state), force=force)


__all__ = [
    "CONTENT_LAYER", "DEFAULT_STYLE_WEIGHTS", "LOSS_NORMS", "LR_SCHEDULES", "STYLE_LAYERS",
    "Hyper", "OptimizerSpec", "TrainConfig", "TrainProgress", "TrainResult", "TrainState", "adain_losses",
    "adain_targets", "adain_loss_terms", "output_features",
    "check_batch_split", "check_config", "compiled_train_step", "content_term", "create_state",
    "current_lr", "encoder_widths", "export_decoder", "flag_name", "init_state", "initialize_processes", "loss_fn",
    "make_mesh", "make_optimizer", "make_source", "plot_metrics", "read_metrics", "replicate", "restore_latest",
    "schedule_factor", "shard_batch",
    "statistic_term", "train", "train_step",
]
