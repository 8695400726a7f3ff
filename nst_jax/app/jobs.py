"""The app's device side: settings, one worker thread that owns the device, AdaIN and Gatys jobs.

Every computation runs on the worker thread, in order, so runs queue instead of fighting for the
device. Interactive AdaIN renders jump the queue: a running Gatys job serves them between its
chunks. Nothing here knows about HTTP; the server (:mod:`nst_jax.app.server`) calls in.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import math
import shlex
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from nst_jax import color as colormod
from nst_jax import image as imageio
from nst_jax.app.feed import Feed
from nst_jax.errors import ConfigError, check_choice

# Bounds of what one request may ask for (the page's controls stay inside them).
MAX_SIZE = 2048
MAX_ITERATIONS = 5000
GATYS_OPTIMIZERS: tuple[str, ...] = ("lbfgs", "optax-lbfgs", "adam")  # gatys.OPTIMIZERS, checked in a test


@dataclasses.dataclass(frozen=True)
class WeightPaths:
    """Weights files given on the command line; None downloads (once) and caches, as the CLIs do."""

    vgg19: str | None = None  # --weights (Gatys)
    adain_vgg: str | None = None  # --vgg
    adain_decoder: str | None = None  # --decoder


def _number(data: dict, key: str, default, kind, lo, hi):
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if kind is int and value != int(value):
        raise ConfigError(f"{key} must be a whole number, got {value}")
    value = kind(value)
    if not (math.isfinite(value) and lo <= value <= hi):
        raise ConfigError(f"{key} must be between {lo:g} and {hi:g}, got {value:g}")
    return value


def _flag(data: dict, key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value


def _known(data: Any, keys: tuple[str, ...]) -> dict:
    if not isinstance(data, dict):
        raise ConfigError("the settings must be a JSON object")
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(map(repr, unknown))}; known: {', '.join(keys)}")
    return data


@dataclasses.dataclass(frozen=True)
class AdainSettings:
    size: int = 512  # output height, as nst-adain --size
    alpha: float = 1.0
    preserve_color: bool = False
    mix: float = 0.0  # weight of the second style (style interpolation); 0 without one

    @classmethod
    def from_json(cls, data: Any) -> AdainSettings:
        data = _known(data, tuple(f.name for f in dataclasses.fields(cls)))
        d = cls()
        return cls(size=_number(data, "size", d.size, int, 16, MAX_SIZE),
                   alpha=_number(data, "alpha", d.alpha, float, 0.0, 1.0),
                   preserve_color=_flag(data, "preserve_color"),
                   mix=_number(data, "mix", d.mix, float, 0.0, 1.0))


@dataclasses.dataclass(frozen=True)
class GatysSettings:
    size: int = 256  # output height, as nst-gatys --size
    iterations: int = 200
    content_weight: float = 1e-2
    style_weight: float = 1.0
    color: str = "none"
    optimizer: str = "optax-lbfgs"
    update_every: int = 10  # iterations between live updates (the driver's chunk)

    @classmethod
    def from_json(cls, data: Any) -> GatysSettings:
        data = _known(data, tuple(f.name for f in dataclasses.fields(cls)))
        d = cls()
        color = data.get("color", d.color)
        optimizer = data.get("optimizer", d.optimizer)
        if not isinstance(color, str) or not isinstance(optimizer, str):
            raise ConfigError("color and optimizer must be strings")
        return cls(size=_number(data, "size", d.size, int, 16, MAX_SIZE),
                   iterations=_number(data, "iterations", d.iterations, int, 1, MAX_ITERATIONS),
                   content_weight=_number(data, "content_weight", d.content_weight, float, 0.0, 1e12),
                   style_weight=_number(data, "style_weight", d.style_weight, float, 0.0, 1e12),
                   color=check_choice("colour mode", color, colormod.COLOR_MODES, "color"),
                   optimizer=check_choice("optimizer", optimizer, GATYS_OPTIMIZERS, "optimizer"),
                   update_every=_number(data, "update_every", d.update_every, int, 1, 1000))


@dataclasses.dataclass(frozen=True)
class Input:
    """One content or style image of a session: where its bytes are and how to name it."""

    path: Path  # a file the server named (or a built-in asset), never a browser's file name
    name: str | None  # the browser's file name, for display and the command line only; None = built-in
    height: int
    width: int


def _arg(name: str) -> str:
    return shlex.quote(name)


def adain_command(settings: AdainSettings, content: Input, styles: list[Input], weights: WeightPaths,
                  output: str = "stylized.png", bits: int = 8) -> str:
    """The ``nst-adain`` command line that writes what the page shows for these settings."""
    parts = ["nst-adain"]
    if content.name is not None:
        parts += ["--content", _arg(content.name)]
    if any(s.name is not None for s in styles) or len(styles) > 1:
        parts += ["--style"] + [_arg(s.name) if s.name else _arg(str(s.path)) for s in styles]
    if len(styles) > 1:
        parts += ["--style-interpolation-weights", f"{1 - settings.mix:g},{settings.mix:g}"]
    parts += ["--size", str(settings.size), "--alpha", f"{settings.alpha:g}"]
    if settings.preserve_color:
        parts.append("--preserve-color")
    if weights.adain_vgg:
        parts += ["--vgg", _arg(weights.adain_vgg)]
    if weights.adain_decoder:
        parts += ["--decoder", _arg(weights.adain_decoder)]
    parts += ["--output", _arg(output)]
    return " ".join(parts)


def gatys_command(settings: GatysSettings, content: Input, style: Input, weights: WeightPaths,
                  output: str = "stylized.png", bits: int = 8) -> str:
    """The ``nst-gatys`` command line of a run with these settings."""
    parts = ["nst-gatys"]
    if content.name is not None:
        parts += ["--content", _arg(content.name)]
    if style.name is not None:
        parts += ["--style", _arg(style.name)]
    d = GatysSettings()
    parts += ["--size", str(settings.size), "--iterations", str(settings.iterations)]
    if settings.content_weight != d.content_weight:
        parts += ["--content-weight", f"{settings.content_weight:g}"]
    if settings.style_weight != d.style_weight:
        parts += ["--style-weight", f"{settings.style_weight:g}"]
    if settings.color != d.color:
        parts += ["--color", settings.color]
    if settings.optimizer != d.optimizer:
        parts += ["--optimizer", settings.optimizer]
    if settings.update_every != 10:  # the CLI's default chunk: same compiled program, same iterates
        parts += ["--chunk", str(settings.update_every)]
    if weights.vgg19:
        parts += ["--weights", _arg(weights.vgg19)]
    if bits != 8:
        parts += ["--bits", str(bits)]
    parts += ["--output", _arg(output)]
    return " ".join(parts)


class Stopped(Exception):
    """Raised from a run's progress callback to end the run (Stop, a closed tab, shutdown)."""


class Run:
    """A queued Gatys run; its :class:`Feed` is what the page watches."""

    _ids = itertools.count(1)

    def __init__(self, session_id: str, settings: GatysSettings, content: Input, style: Input):
        self.id = f"{next(self._ids)}"
        self.session_id = session_id
        self.settings = settings
        self.content, self.style = content, style
        self.feed = Feed(total=settings.iterations)
        self.cancel = threading.Event()

    @property
    def finished(self) -> bool:
        return self.feed.status in ("done", "stopped", "error")


@functools.cache
def _jitted():
    """Compiled programs shared by every session and request (jit caches per shape underneath)."""
    import jax

    from nst_jax import adain, gatys

    encode = jax.jit(adain.encode_inputs, static_argnames=("preserve_color", "color_mode"))

    @functools.partial(jax.jit, static_argnames=("height", "width"))
    def render(decoder_params, encoded, alpha, weights, *, height, width):
        feats = adain.transfer_features(encoded, alpha, interpolation_weights=weights)
        return adain.render(decoder_params, feats, height, width)

    terms = jax.jit(gatys.loss_terms, static_argnames=("config",))
    targets = jax.jit(gatys.compute_targets, static_argnames=("config",))
    return encode, render, terms, targets


class Engine:
    """Owns the device: one worker thread runs interactive calls first, then queued runs in order."""

    def __init__(self, weights: WeightPaths = WeightPaths()):
        self.weights = weights
        self._cond = threading.Condition()
        self._calls: collections.deque[tuple[Callable[[], Any], Future]] = collections.deque()
        self._runs: collections.deque[Run] = collections.deque()
        self._current: Run | None = None
        self._closed = False
        self._params: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._loop, name="nst-app-device", daemon=True)
        self._thread.start()

    # -- called from any thread

    def call(self, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        """Runs ``fn()`` on the device thread (ahead of queued runs) and returns its result."""
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise ConfigError("the server is shutting down")
            self._calls.append((fn, future))
            self._cond.notify_all()
        return future.result(timeout)

    def submit(self, run: Run) -> Run:
        with self._cond:
            if self._closed:
                raise ConfigError("the server is shutting down")
            self._runs.append(run)
            self._update_positions()
            self._cond.notify_all()
        return run

    def stop(self, run: Run) -> None:
        """Stops a running run after its current chunk (keeping its image), or drops a queued one."""
        run.cancel.set()
        with self._cond:
            if run in self._runs:
                self._runs.remove(run)
                run.feed.set_status("stopped", "stopped before it started")
                self._update_positions()

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._closed = True
            for run in self._runs:
                run.feed.set_status("stopped", "the server shut down")
            self._runs.clear()
            if self._current is not None:
                self._current.cancel.set()
            self._cond.notify_all()
        self._thread.join(timeout)

    def params(self, name: str):
        """Weights by registry name, loaded once (on the device thread)."""
        if name not in self._params:
            from nst_jax import weights

            path = {"vgg19": self.weights.vgg19, "adain_vgg": self.weights.adain_vgg,
                    "adain_decoder": self.weights.adain_decoder}[name]
            self._params[name] = weights.resolve_weights(name, path)
        return self._params[name]

    def _update_positions(self) -> None:
        ahead = 1 if self._current is not None else 0
        for i, run in enumerate(self._runs):
            run.feed.set_status("queued", f"waiting for {i + ahead} run(s) ahead", position=i + ahead)

    # -- the device thread

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._calls and not self._runs:
                    self._cond.wait()
                if self._closed and not self._calls:
                    return
                call = self._calls.popleft() if self._calls else None
                run = None if call is not None else self._runs.popleft()
                if run is not None:
                    self._current = run
                    self._update_positions()
            if call is not None:
                self._run_call(*call)
            else:
                try:
                    self._run_gatys(run)
                finally:
                    with self._cond:
                        self._current = None

    @staticmethod
    def _run_call(fn: Callable[[], Any], future: Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as err:  # handed to the caller's thread, which re-raises it
            future.set_exception(err)

    def serve_calls(self) -> None:
        """Runs the waiting interactive calls (a running Gatys job calls this between chunks)."""
        while True:
            with self._cond:
                if not self._calls:
                    return
                call = self._calls.popleft()
            self._run_call(*call)

    def _run_gatys(self, run: Run) -> None:
        from nst_jax.errors import NSTError

        if run.cancel.is_set():
            run.feed.set_status("stopped", "stopped before it started")
            return
        run.feed.set_status("running", "compiling", position=0)
        try:
            image = gatys_run(self, run)
        except Stopped:
            run.feed.set_status("stopped", f"stopped at iteration {run.feed.iteration}")
            return
        except NSTError as err:
            if run.cancel.is_set():  # its session ended meanwhile (its files are gone)
                run.feed.set_status("stopped", "stopped: the session ended")
            else:
                run.feed.set_status("error", str(err))
            return
        run.feed.publish(run.feed.iteration, image, {})
        run.feed.set_status("done", f"done: {run.feed.iteration} iterations")


def load_input(inp: Input, what: str, min_size: tuple[int, int] | None = None) -> np.ndarray:
    return imageio.load_image(inp.path, what, min_size=min_size)


def adain_inputs(inp_content: Input, styles: list[Input], size: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Content at height ``size`` and styles resized to it, as ``nst-adain`` samples them."""
    from nst_jax import adain

    hw = imageio.size_for_height(inp_content.height, inp_content.width, size)
    content = imageio.resize(load_input(inp_content, "content image", hw), height=size)
    imageio.check_min_size(content, adain.MIN_IMAGE_SIZE, "content image", adain.ENCODER_LAYER, "size")
    h, w = content.shape[:2]
    out = []
    for s in styles:
        style = imageio.resize(load_input(s, "style image", (h, w)), height=h, width=w)
        imageio.check_min_size(style, adain.MIN_IMAGE_SIZE, "style image", adain.ENCODER_LAYER, "size")
        out.append(style)
    return content, out


class AdainCache:
    """The encoder output for one (content, styles, size, colour) choice: a slider move reuses it."""

    def __init__(self):
        self.key: tuple | None = None
        self.encoded = None
        self.hw: tuple[int, int] = (0, 0)


def adain_render(engine: Engine, cache: AdainCache, content: Input, styles: list[Input],
                 settings: AdainSettings) -> tuple[np.ndarray, bool]:
    """Stylizes on the device thread; returns the image and whether the encoder ran.

    Encodes only when the inputs, size or colour preservation changed; alpha and the style mix
    cost one decoder pass.
    """
    import jax
    import jax.numpy as jnp

    encode, render, _, _ = _jitted()
    key = (content.path, tuple(s.path for s in styles), settings.size, settings.preserve_color)
    encoded_now = cache.key != key
    if encoded_now:
        c, ss = adain_inputs(content, styles, settings.size)
        vgg_params = engine.params("adain_vgg")
        from nst_jax import adain

        adain.check_compatible(vgg_params, engine.params("adain_decoder"))
        cache.key, cache.encoded = None, None  # a failure below leaves no stale entry
        cache.encoded = encode(vgg_params, jnp.asarray(c)[None], [jnp.asarray(s)[None] for s in ss],
                               preserve_color=settings.preserve_color)
        cache.key, cache.hw = key, c.shape[:2]
    weights = None if len(styles) == 1 else jnp.asarray([1.0 - settings.mix, settings.mix], jnp.float32)
    out = render(engine.params("adain_decoder"), cache.encoded, jnp.float32(settings.alpha), weights,
                 height=cache.hw[0], width=cache.hw[1])
    return np.asarray(jax.device_get(out))[0], encoded_now


def gatys_run(engine: Engine, run: Run) -> np.ndarray:
    """Runs ``run`` through ``gatys.run`` (via the CLI's single-level path), publishing to its feed.

    Returns the final (colour-restored) image. Raises :class:`Stopped` when the run is cancelled;
    the feed then holds the image of the last update.
    """
    import jax
    import jax.numpy as jnp

    from nst_jax import gatys, multiscale

    s = run.settings
    params = engine.params("vgg19")
    config = gatys.GatysConfig(iterations=s.iterations, optimizer=s.optimizer, color=s.color)
    weights = gatys.loss_weights(config, s.content_weight, s.style_weight)
    out_hw = imageio.size_for_height(run.content.height, run.content.width, s.size)
    style_hw = imageio.size_for_height(run.style.height, run.style.width, s.size)
    content = load_input(run.content, "content image", out_hw)
    style = load_input(run.style, "style image", style_hw)
    from nst_jax import vgg

    deepest = max(config.layers, key=vgg.LAYERS.index)
    for what, hw in (("content image", out_hw), ("style image", style_hw)):
        imageio.check_min_size(np.empty(hw + (0,)), vgg.min_image_size(config.layers), what, deepest, "size")
    from nst_jax import memory
    from nst_jax.errors import MemoryBudgetError

    need, budget = memory.gatys_bytes(*out_hw, params, config), memory.available_bytes()
    if need > budget:  # the CLI's check, so a run that cannot fit says so instead of failing late
        raise MemoryBudgetError(f"a {out_hw[1]}x{out_hw[0]} image needs about {need / 2**30:.1f} GiB but "
                                f"{budget / 2**30:.1f} GiB are available; lower the size")
    _, _, terms_fn, targets_fn = _jitted()

    latest: dict[str, float] = {}

    def runner(params, content, styles, config, weights, *, callback, **kwargs):
        # multiscale hands gatys.run colour-prepared images with color="none"; the loss terms of
        # the live curve are computed here on the image the optimizer holds.
        targets = targets_fn(params, content, styles, config)

        def on_chunk(progress, get_image):
            raw = get_image()
            terms = jax.device_get(terms_fn(jnp.asarray(raw)[None], params, targets, weights, config=config))
            # The curve is that of the image shown (clipped to [0, 1]); weighted, so the terms
            # add up to the total.
            latest.update(content=float(terms["content"]) * float(weights.content),
                          style=float(terms["style"]) * float(weights.style), total=float(terms["total"]))
            callback(progress, lambda: raw)  # multiscale restores the colour, then calls publish
            engine.serve_calls()
            if run.cancel.is_set():
                raise Stopped

        return gatys.run(params, content, styles, config, weights, callback=on_chunk, **kwargs)

    def publish(level, progress, get_image):
        run.feed.publish(progress.iteration, get_image(), latest)

    result = multiscale.run_multiscale(params, content, [style], config, weights, sizes=(s.size,),
                                       iterations=s.iterations, chunk=s.update_every, callback=publish,
                                       runner=runner)
    return result.result.image
