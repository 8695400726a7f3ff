"""jaxopt L-BFGS, optax L-BFGS and Adam behind one pure ``init``/``update`` interface.

Every solver minimizes ``fun(x, *args) -> scalar`` over an array ``x`` and keeps in its state the
loss at the current iterate and an int32 count of the objective evaluations made inside the
compiled program (each value or value-and-gradient evaluation counts once, line-search trials
included), so callers read exact evaluation counts instead of guessing them from timings:

* ``"lbfgs"``: jaxopt's L-BFGS with its zoom line search; the count is jaxopt's own
  ``num_fun_eval`` (the init's evaluation plus every line-search trial).
* ``"optax-lbfgs"``: ``optax.lbfgs`` (zoom line search); the init evaluates once, then every
  line-search step evaluates value and gradient once (``info.num_linesearch_steps``).
* ``"adam"``: ``optax.adam``; the init evaluates the value once, every update value and gradient once.

The counts are checked against an independent count (a host callback inside a test objective) in
tests/test_solvers.py.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from nst_jax.errors import check_choice

Array = jax.Array

OPTIMIZERS: tuple[str, ...] = ("lbfgs", "optax-lbfgs", "adam")


def default_learning_rate(optimizer: str) -> float:
    """1.0 for L-BFGS (the maximum step of its line search, as in the report), 0.02 for Adam."""
    check_choice("optimizer", optimizer, OPTIMIZERS, "--optimizer")
    return 0.02 if optimizer == "adam" else 1.0


class Solver(NamedTuple):
    """One optimizer as pure functions.

    ``init(x, *args) -> state``; ``update(x, state, *args) -> (x, state)``; ``value(state)`` is the
    loss recorded at the current iterate (Adam: at the previous one, see :func:`make_solver`);
    ``evaluations(state)`` the int32 number of objective evaluations so far, init included.
    """

    init: Callable[..., Any]
    update: Callable[..., tuple[Array, Any]]
    value: Callable[[Any], Array]
    evaluations: Callable[[Any], Array]


class _LBFGSState(NamedTuple):
    opt: Any
    value: Array
    grad: Array
    evaluations: Array  # int32


class _AdamState(NamedTuple):
    opt: Any
    value: Array
    evaluations: Array  # int32


def _import_jaxopt():
    # jaxopt warns at import that it is unmaintained; we depend on it deliberately for its L-BFGS.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="JAXopt is no longer maintained", category=DeprecationWarning)
        import jaxopt
    return jaxopt


def _count(n) -> Array:
    return jnp.asarray(n, jnp.int32)


def make_solver(
    fun: Callable[..., Array],
    *,
    optimizer: str,
    learning_rate: float | None = None,
    history_size: int = 10,
    iterations: int = 1,
) -> Solver:
    """Builds the optimizer ``optimizer`` (one of :data:`OPTIMIZERS`) for ``fun(x, *args) -> scalar``.

    Args:
      fun: the objective; differentiable in its first argument.
      optimizer: ``"lbfgs"`` (jaxopt), ``"optax-lbfgs"`` or ``"adam"``.
      learning_rate: Adam's step size, or the L-BFGS line search's maximum step (jaxopt; optax's
        zoom search starts at 1 and is not capped); None: :func:`default_learning_rate`.
      history_size: L-BFGS memory (pairs of image-sized vectors).
      iterations: jaxopt's ``maxiter`` (it runs with ``tol=0``, so the caller's loop decides).

    All three record the loss at the *current* iterate in their state, so ``value(state)`` after
    ``k`` updates is the loss after ``k`` iterations; Adam evaluates the loss only where it takes
    the gradient, so its recorded value lags one step behind the iterate.
    """
    check_choice("optimizer", optimizer, OPTIMIZERS, "--optimizer")
    lr = default_learning_rate(optimizer) if learning_rate is None else learning_rate
    if optimizer == "lbfgs":
        jaxopt = _import_jaxopt()
        # tol=0: run exactly the requested number of iterations, as the paper's fixed budget.
        solver = jaxopt.LBFGS(fun=fun, maxiter=max(iterations, 1), tol=0.0, history_size=history_size,
                              linesearch="zoom", max_stepsize=lr, implicit_diff=False)

        def init(x, *args):
            return solver.init_state(x, *args)

        def update(x, state, *args):
            x, state = solver.update(x, state, *args)  # an OptStep: unpack to a plain pair
            return x, state

        # jaxopt counts in its state: 1 for the init, then every zoom trial (and the safe step it
        # takes when the search fails).
        return Solver(init, update, lambda s: s.value, lambda s: _count(s.num_fun_eval))

    value_and_grad = jax.value_and_grad(fun)

    if optimizer == "optax-lbfgs":
        opt = optax.lbfgs(memory_size=history_size)

        def init(x, *args):
            value, grad = value_and_grad(x, *args)
            return _LBFGSState(opt.init(x), value, grad, _count(1))

        def update(x, state, *args):
            updates, opt_state = opt.update(state.grad, state.opt, x, value=state.value, grad=state.grad,
                                            value_fn=lambda y: fun(y, *args))
            x = optax.apply_updates(x, updates)
            # The zoom line search already evaluated f and its gradient at the accepted point; each
            # of its steps is one value-and-gradient evaluation.
            value = optax.tree.get(opt_state, "value")
            grad = optax.tree.get(opt_state, "grad")
            steps = optax.tree.get(opt_state, "num_linesearch_steps")
            return x, _LBFGSState(opt_state, value, grad, state.evaluations + _count(steps))

        return Solver(init, update, lambda s: s.value, lambda s: s.evaluations)

    opt = optax.adam(lr)

    def init_adam(x, *args):
        return _AdamState(opt.init(x), fun(x, *args), _count(1))

    def update_adam(x, state, *args):
        value, grad = value_and_grad(x, *args)
        updates, opt_state = opt.update(grad, state.opt, x)
        x = optax.apply_updates(x, updates)
        # The recorded value is at the iterate before this step; the driver recomputes the final
        # losses exactly.
        return x, _AdamState(opt_state, value, state.evaluations + 1)

    return Solver(init_adam, update_adam, lambda s: s.value, lambda s: s.evaluations)
