"""The one host loop that steps a solver in jitted chunks: :func:`drive`.

:func:`nst_jax.gatys.run` and :func:`nst_jax.tiling.run_tiled` build a :class:`Program` (the solver's
init, a chunk of iterations, the final loss terms) and hand it to :func:`drive`, which

* compiles every program ahead of running it (``jit(...).lower(...).compile()``), so compilation is
  timed apart from the iterations (``RunResult.compile_seconds``, ``seconds_per_iteration``);
* runs chunks of at most ``chunk`` iterations, cut so that the callback also lands on every multiple
  of ``snapshot_every``;
* strips weak types from the initial state, so every chunk reuses one executable;
* stops on a non-finite loss with :class:`~nst_jax.errors.NonFiniteLossError` carrying the last
  good image, and on Ctrl-C (KeyboardInterrupt, also from the callback) with the image so far;
* hands out images through a ``finish`` hook (colour restoration, :func:`finisher`).

Programs are cached once for every caller (:func:`program`), keyed by the static config with the
fields that do not enter the compiled program (iteration count, colour control) reset. When an entry
point turned the program store on (:func:`nst_jax.compile_cache.enable`), each program traced here is
also exported with ``jax.export`` to disk, and a later process deserializes it instead of tracing
(``RunResult.program_source``); JAX's persistent cache then skips XLA's compile as well.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import time
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import color as colormod
from nst_jax import compile_cache
from nst_jax.errors import NonFiniteLossError
from nst_jax.solvers import Solver

Array = jax.Array


class Progress(NamedTuple):
    iteration: int  # completed iterations
    loss: float  # total loss recorded after the last of them
    seconds: float  # wall time of the chunk that ended here (compilation excluded)


@dataclasses.dataclass
class RunResult:
    image: np.ndarray  # (H, W, 3) float32 in [0, 1], colour restored
    losses: list[float]  # total loss at the init and after each completed iteration
    # Raw (unweighted) content/style/tv, their weighted contributions content_weighted/
    # style_weighted/tv_weighted, and total = the sum of the weighted ones, at the final image.
    terms: dict[str, float]
    iterations: int  # completed iterations
    chunk_seconds: list[tuple[int, float]]  # (iterations, wall seconds) per chunk, compilation excluded
    interrupted: bool = False
    compile_seconds: float = 0.0  # compiling this run's programs (0 when they were cached)
    seconds_per_iteration: float | None = None  # None only when no iteration ran
    evaluations: int = 0  # objective evaluations by the solver, init and line searches included
    # "exported" when every program of this run was deserialized from the program store (no tracing
    # in this process), "traced" when any was traced from Python (now or earlier in this process).
    program_source: str = "traced"


def seconds_per_iteration(chunk_seconds) -> float | None:
    """Seconds per iteration over all chunks (which exclude compilation); None without iterations."""
    n = sum(k for k, _ in chunk_seconds)
    return sum(dt for _, dt in chunk_seconds) / n if n else None


# ----------------------------------------------------------------------------------------------
# Programs: compiled ahead of time, cached once in this process and, for the command lines, on disk.
#
# Every program runs on flat tuples of arrays: the objective's arguments (params, targets, loss
# weights, the extra's aux) are flattened on the host, the solver state travels as the tuple of its
# leaves. So an exported program's signature holds only built-in containers, and any solver state
# (optax's and jaxopt's NamedTuples, ours) round-trips through jax.export without registering its
# types; the host never needs the state's structure.


class _Executable(NamedTuple):
    call: Callable
    source: str  # "traced" (lowered from Python here) or "exported" (deserialized from disk)


def _signature(leaves) -> tuple:
    return tuple(jax.typeof(leaf) for leaf in leaves)


def _exportable(leaves) -> bool:
    # jax.export serializes plain numeric arrays; typed PRNG keys (tiling's aux) stay in-process.
    return all(not jax.dtypes.issubdtype(jnp.result_type(leaf), jax.dtypes.extended) for leaf in leaves)


class Program:
    """One optimization's three programs, compiled ahead per argument signature; see :func:`build_program`.

    ``init(x0, args) -> (state, value, evaluations)``, ``run_chunk(x, state, start, n, args) -> (x,
    state, values, evaluations)`` and ``terms(x, args) -> dict``, where ``args`` is the tuple of leaves
    of ``(aux, *objective_args)`` and ``state`` the tuple of the solver state's leaves. With a
    ``store_key`` (set by :func:`program`) and a program store turned on
    (:func:`nst_jax.compile_cache.programs_path`), each program is exported with ``jax.export`` after
    its first trace and later processes deserialize it instead of tracing.
    """

    def __init__(self, init: Callable, run_chunk: Callable, terms: Callable, state_tree: Callable):
        self._fns = {"init": init, "run_chunk": run_chunk, "terms": terms}
        self._state_tree = state_tree  # (x0, args_tree, args) -> treedef of the solver state
        self._compiled: dict[Hashable, _Executable] = {}
        self.store_key: str | None = None

    def compiled(self, name: str, args_tree, *call_args) -> tuple[_Executable, float]:
        """The executable of program ``name`` for ``call_args`` and the seconds spent getting it now."""
        leaves = jax.tree.leaves(call_args)
        key = (name, args_tree, _signature(leaves))
        if key in self._compiled:
            return self._compiled[key], 0.0
        t0 = time.perf_counter()
        exe = self._load(name, args_tree, call_args, leaves)
        self._compiled[key] = exe
        return exe, time.perf_counter() - t0

    def _traceable(self, name: str, args_tree, call_args) -> Callable:
        fn = self._fns[name]
        if name == "run_chunk":
            x = call_args[0]
            tree = self._state_tree(x, args_tree, call_args[-1])
            return functools.partial(fn, state_tree=tree, args_tree=args_tree)
        return functools.partial(fn, args_tree=args_tree)

    def _load(self, name: str, args_tree, call_args, leaves) -> _Executable:
        donate = (0, 1) if name == "run_chunk" else ()
        return _executable(self.store_key, name, args_tree, call_args, leaves,
                           lambda: self._traceable(name, args_tree, call_args), donate)


def _executable(store_key: str | None, name: str, args_tree, call_args: tuple, leaves,
                traceable: Callable[[], Callable], donate: tuple[int, ...] = ()) -> _Executable:
    """Compiles ``traceable()`` for ``call_args``: deserialized from the program store when it holds
    the entry, else traced (and exported to the store when it is on)."""
    directory = compile_cache.programs_path()
    if directory is None or store_key is None or not _exportable(leaves):
        fn = jax.jit(traceable(), donate_argnums=donate)
        return _Executable(fn.lower(*call_args).compile(), "traced")
    entry = directory / _entry_name(store_key, name, args_tree, leaves)
    payload = compile_cache.read_entry(entry)
    if payload is not None:
        exported, source = jax.export.deserialize(payload), "exported"
    else:
        fn = jax.jit(traceable(), donate_argnums=donate)
        exported, source = jax.export.export(fn)(*call_args), "traced"
        compile_cache.write_entry(entry, exported.serialize())
    # Both paths compile the same module, so a traced run fills JAX's compilation cache for the
    # next process's exported one.
    call = jax.jit(exported.call, donate_argnums=donate).lower(*call_args).compile()
    return _Executable(call, source)


class StoredFunction:
    """``fn`` jitted per argument signature, through the program store like a :class:`Program`.

    ``fn`` must return built-in containers (tuples, lists, dicts, None) of arrays, so that its
    exported form needs no registered types; ``store_key`` (a ``repr`` of everything static that
    ``fn`` closes over) names its entries. ``last_source`` tells how the last call's executable was
    obtained.
    """

    def __init__(self, fn: Callable, store_key: str):
        self._fn = fn
        self._store_key = store_key
        self._compiled: dict[Hashable, _Executable] = {}
        self.last_source = "traced"

    def __call__(self, *args):
        leaves, tree = jax.tree.flatten(args)
        leaves = tuple(leaves)
        key = (tree, _signature(leaves))
        if key not in self._compiled:
            fn = self._fn
            self._compiled[key] = _executable(self._store_key, "call", tree, (leaves,), leaves,
                                              lambda: lambda flat: fn(*jax.tree.unflatten(tree, flat)))
        exe = self._compiled[key]
        self.last_source = exe.source
        return exe.call(leaves)


_STORED: dict[Hashable, StoredFunction] = {}


def stored_function(key: tuple, fn: Callable) -> StoredFunction:
    """The cached :class:`StoredFunction` for ``key`` (hashable, with a stable ``repr``)."""
    if key not in _STORED:
        _STORED[key] = StoredFunction(fn, repr(key))
    return _STORED[key]


def _entry_name(store_key: str, name: str, args_tree, leaves) -> str:
    text = repr((store_key, name, str(args_tree), [(a.shape, str(a.dtype), a.weak_type) for a in _signature(leaves)],
                 compile_cache.fingerprint()))
    return hashlib.sha256(text.encode()).hexdigest() + compile_cache.PROGRAM_SUFFIX


def build_program(
    solver: Solver,
    terms: Callable[..., dict[str, Array]],
    chunk: int,
    extra: Callable[[Any, Array | None], tuple] | None = None,
) -> Program:
    """Wraps ``solver`` into an init, a chunk of at most ``chunk`` iterations and the final terms.

    Args:
      solver: from :func:`nst_jax.solvers.make_solver` over ``fun(x, *args, *extra)``.
      terms: ``terms(x, *args) -> dict`` of loss terms at the final image.
      chunk: the length of the loss buffer of one chunk; any ``n <= chunk`` runs in the same
        executable (``n`` is traced).
      extra: ``extra(aux, step)`` gives further objective arguments at global iteration ``step``
        (a traced int32), or at the init when ``step`` is None (e.g. the tile grid offset); ``aux``
        is the traced argument the caller passes to :func:`drive` (e.g. a PRNG key).
    """
    extra = extra or (lambda aux, step: ())

    def init_tree(x0, aux, *args):
        return solver.init(x0, *args, *extra(aux, None))

    trees: dict[Hashable, Any] = {}  # state structures seen while tracing init

    def shapes(x0, args_tree, leaves):
        return args_tree, tuple((jnp.shape(a), jnp.result_type(a)) for a in (x0, *leaves))

    def init(x0, leaves, *, args_tree):
        aux, args = jax.tree.unflatten(args_tree, leaves)
        state = init_tree(x0, aux, *args)
        trees[shapes(x0, args_tree, leaves)] = jax.tree.structure(state)
        return tuple(jax.tree.leaves(state)), solver.value(state), solver.evaluations(state)

    def run_chunk(x, state_leaves, start, n, leaves, *, state_tree, args_tree):
        aux, args = jax.tree.unflatten(args_tree, leaves)
        state = jax.tree.unflatten(state_tree, state_leaves)

        def body(i, carry):
            x, state, values = carry
            x, state = solver.update(x, state, *args, *extra(aux, start + i))
            return x, state, values.at[i].set(solver.value(state))

        values = jnp.full((chunk,), jnp.nan, jnp.float32)
        x, state, values = jax.lax.fori_loop(0, n, body, (x, state, values))
        return x, tuple(jax.tree.leaves(state)), values, solver.evaluations(state)

    def final_terms(x, leaves, *, args_tree):
        _, args = jax.tree.unflatten(args_tree, leaves)
        return terms(x, *args)

    def state_tree(x0, args_tree, leaves):
        key = shapes(x0, args_tree, leaves)
        if key not in trees:  # init came from disk: trace it abstractly, for its structure only
            aux, args = jax.tree.unflatten(args_tree, leaves)
            trees[key] = jax.tree.structure(jax.eval_shape(init_tree, x0, aux, *args))
        return trees[key]

    return Program(init, run_chunk, final_terms, state_tree)


# Compiled programs of every caller (gatys.run, tiling.run_tiled, hence multiscale), so repeated runs
# (levels of the same size, a second image in the same process) do not recompile.
_PROGRAMS: dict[Hashable, Program] = {}

# Config fields that never enter a compiled program: the iteration count (a chunk runs any count)
# and colour control (applied to the images before and after the optimization).
PROGRAM_INDEPENDENT_FIELDS: tuple[str, ...] = ("iterations", "color", "color_space", "color_transform")


def program_key(config, *rest: Hashable) -> tuple:
    """``(config with PROGRAM_INDEPENDENT_FIELDS reset to their defaults, *rest)``: the cache key."""
    fields = {f.name: f.default for f in dataclasses.fields(config) if f.name in PROGRAM_INDEPENDENT_FIELDS}
    return (dataclasses.replace(config, **fields), *rest)


def program(key: tuple, build: Callable[[Any], Program]) -> Program:
    """The cached program for ``key`` (from :func:`program_key`); ``build(key[0])`` on a miss.

    ``build`` receives the normalised config, so nothing outside the key can enter the program. The
    key's ``repr`` (a frozen dataclass and plain values) also names the program's exported entries on
    disk, together with the argument shapes and the versions (:func:`nst_jax.compile_cache.fingerprint`).
    """
    if key not in _PROGRAMS:
        prog = build(key[0])
        prog.store_key = repr(key)
        _PROGRAMS[key] = prog
    return _PROGRAMS[key]


def clear_programs() -> None:
    """Forgets every cached program (tests that count traces start from here)."""
    _PROGRAMS.clear()
    _STORED.clear()


# ----------------------------------------------------------------------------------------------
# The host loop.


def finisher(original: Array | np.ndarray, *, color: str, color_space: str) -> Callable[[np.ndarray], np.ndarray]:
    """The hook that turns an optimized (H, W, 3) image into an output: colour restored, clipped.

    ``original`` is the (1, H, W, 3) content before colour preparation (luminance mode puts the
    result's luminance under its chroma, :func:`nst_jax.color.restore_color`).
    """
    if color == "none":
        return lambda image: np.clip(image, 0.0, 1.0)

    def finish(image: np.ndarray) -> np.ndarray:
        out = colormod.restore_color(jnp.asarray(image)[None], original, color, space=color_space)
        return np.asarray(jax.device_get(out))[0]

    return finish


def _strip_weak_types(tree):
    # A jitted loop returns strongly typed leaves; the init state may hold weak ones (optax keeps
    # some), which would make the second chunk's signature differ and recompile.
    return jax.tree.map(lambda a: jnp.asarray(a, a.dtype) if getattr(a, "weak_type", False) else a, tree)


def chunk_length(done: int, iterations: int, chunk: int, snapshot_every: int = 0) -> int:
    """Iterations of the next chunk: at most ``chunk``, ending at the next multiple of ``snapshot_every``."""
    n = min(chunk, iterations - done)
    if snapshot_every > 0:
        n = min(n, snapshot_every - done % snapshot_every)
    return n


def drive(
    prog: Program,
    x: Array,
    args: tuple,
    *,
    iterations: int,
    chunk: int,
    aux: Any = None,
    snapshot_every: int = 0,
    callback: Callable[[Progress, Callable[[], np.ndarray]], None] | None = None,
    finish: Callable[[np.ndarray], np.ndarray] | None = None,
) -> RunResult:
    """Runs ``iterations`` solver iterations from ``x`` in chunks; the host side of every run.

    After each chunk ``callback(progress, get_image)`` is called; chunks end at every multiple of
    ``snapshot_every`` (if > 0) as well as every ``chunk`` iterations. KeyboardInterrupt (Ctrl-C, or
    raised by the callback) stops after the last completed chunk and returns its image with
    ``interrupted=True``.

    Args:
      prog: from :func:`build_program`.
      x: (1, H, W, 3) starting image.
      args: the objective's traced arguments (params, targets, weights).
      iterations, chunk, snapshot_every: see above; ``chunk`` must be the program's.
      aux: traced argument of the program's ``extra`` (None if it has none).
      finish: turns an optimized (H, W, 3) image into the image handed out (default: clip to [0, 1]).

    Raises:
      NonFiniteLossError: a loss became non-finite; ``err.image`` is the last good image (finished)
        and ``err.iteration`` its iteration.
    """
    if finish is None:
        finish = finisher(None, color="none", color_space="ycbcr")
    if snapshot_every < 0:
        raise ValueError(f"snapshot_every must be >= 0, got {snapshot_every}")
    leaves, args_tree = jax.tree.flatten((aux, tuple(args)))
    leaves = tuple(leaves)
    init, compile_seconds = prog.compiled("init", args_tree, x, leaves)
    sources = {init.source}
    state, value, evaluations = init.call(x, leaves)
    state = _strip_weak_types(state)
    curve = [float(jax.device_get(value))]
    timings: list[tuple[int, float]] = []
    last_good = np.asarray(jax.device_get(x))[0]
    done, interrupted = 0, False
    evaluations = int(jax.device_get(evaluations))
    try:
        while done < iterations:
            n = chunk_length(done, iterations, chunk, snapshot_every)
            call_args = (x, state, np.int32(done), np.int32(n), leaves)
            run_chunk, seconds = prog.compiled("run_chunk", args_tree, *call_args)
            compile_seconds += seconds
            sources.add(run_chunk.source)
            t0 = time.perf_counter()
            x, state, values, evals = run_chunk.call(*call_args)
            values, evals = jax.device_get((values, evals))
            dt = time.perf_counter() - t0
            values = np.asarray(values, np.float64)[:n]
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
            evaluations = int(evals)
            last_good = np.asarray(jax.device_get(x))[0]
            if callback is not None:
                callback(Progress(done, float(values[-1]), dt), lambda img=last_good: finish(img))
    except KeyboardInterrupt:
        interrupted = True
    final = jnp.asarray(last_good)[None]
    terms_fn, seconds = prog.compiled("terms", args_tree, final, leaves)
    compile_seconds += seconds
    sources.add(terms_fn.source)
    terms = {k: float(v) for k, v in jax.device_get(terms_fn.call(final, leaves)).items()}
    return RunResult(finish(last_good), curve, terms, done, timings, interrupted, compile_seconds,
                     seconds_per_iteration(timings), evaluations,
                     "traced" if "traced" in sources else "exported")

