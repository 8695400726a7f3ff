"""The three solvers behind one interface: they minimize, and their evaluation counters are exact.

The reference count is independent of the solvers' bookkeeping: the test objective calls a host
callback (``jax.debug.callback``) every time it is evaluated, inside the same compiled program, and
the callback increments a Python counter.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax import solvers
from nst_jax.errors import ConfigError

# A badly conditioned, nearly non-smooth objective (weighted pseudo-Huber) on which both L-BFGS line
# searches need several trials now and then; (1, 4, 4, 3) like a tiny image.
SHAPE = (1, 4, 4, 3)


def _objective(x, scale):
    w = jnp.arange(1, x.size + 1, dtype=jnp.float32).reshape(x.shape)
    return scale * jnp.sum(w * jnp.sqrt(1e-4 + (x - 2.0) ** 2))


def _counted(calls: list):
    def fun(x, scale):
        jax.debug.callback(lambda: calls.append(1))
        return _objective(x, scale)

    return fun


def _run(optimizer, iterations, calls, lr=None):
    solver = solvers.make_solver(_counted(calls), optimizer=optimizer, learning_rate=lr, history_size=5,
                                 iterations=iterations)
    x0 = jnp.zeros(SHAPE, jnp.float32)
    scale = jnp.float32(1.0)

    @jax.jit
    def go(x, scale):
        state = solver.init(x, scale)
        value0 = solver.value(state)

        def body(_, carry):
            x, state = carry
            return solver.update(x, state, scale)

        x, state = jax.lax.fori_loop(0, iterations, body, (x, state))
        return x, value0, solver.value(state), solver.evaluations(state)

    x, v0, v, evals = jax.block_until_ready(go(x0, scale))
    jax.effects_barrier()
    return x, float(v0), float(v), int(evals)


@pytest.mark.parametrize("optimizer", solvers.OPTIMIZERS)
def test_evaluation_count_equals_the_objective_calls(optimizer):
    calls: list = []
    iterations = 8
    _, v0, v, evals = _run(optimizer, iterations, calls, lr=0.05 if optimizer == "adam" else None)
    assert v < v0
    assert evals == len(calls), (optimizer, evals, len(calls))
    if optimizer == "adam":
        assert evals == iterations + 1
    else:
        # Each L-BFGS iteration evaluates at least once (the accepted point); the objective's shape
        # (a kink at the minimum) makes some line searches try more than one step.
        assert evals > iterations + 1


def test_counter_is_int32_and_starts_at_one():
    for optimizer in solvers.OPTIMIZERS:
        solver = solvers.make_solver(functools.partial(_objective, scale=1.0), optimizer=optimizer,
                                     history_size=3, iterations=2)
        state = solver.init(jnp.zeros(SHAPE, jnp.float32))
        count = solver.evaluations(state)
        assert count.dtype == jnp.int32 and int(count) == 1, optimizer


@pytest.mark.parametrize("optimizer", ["lbfgs", "optax-lbfgs"])
def test_lbfgs_reaches_the_minimum_of_a_quadratic(optimizer):
    a = jnp.asarray(np.linspace(1.0, 10.0, int(np.prod(SHAPE))).reshape(SHAPE), jnp.float32)

    def fun(x):
        return 0.5 * jnp.sum(a * (x - 0.3) ** 2)

    solver = solvers.make_solver(fun, optimizer=optimizer, history_size=10, iterations=30)
    x = jnp.zeros(SHAPE, jnp.float32)
    state = solver.init(x)
    update = jax.jit(solver.update)
    for _ in range(30):
        x, state = update(x, state)
    np.testing.assert_allclose(x, 0.3, atol=1e-3)


def test_default_learning_rates_and_bad_names():
    assert solvers.default_learning_rate("adam") == 0.02
    assert solvers.default_learning_rate("lbfgs") == solvers.default_learning_rate("optax-lbfgs") == 1.0
    with pytest.raises(ConfigError, match='did you mean "adam"'):
        solvers.make_solver(jnp.sum, optimizer="adma")
