"""Shared fixtures: the PyTorch golden files written by scripts/make_fixtures.py.

One persistent compilation cache serves the whole session: this process, xdist workers and the
command lines tests start in subprocesses all read ``$NST_JAX_COMPILE_CACHE``. A CI script may set it
(one directory per CI run); otherwise a fresh temporary directory is made here and removed at the end.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import numpy as np
import pytest

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
_OWN_COMPILE_CACHE: list[str] = []


def pytest_configure(config):
    from nst_jax import compile_cache

    # The controller (not an xdist worker) decides; workers and subprocesses inherit the variable.
    if not hasattr(config, "workerinput") and compile_cache.ENV not in os.environ:
        os.environ[compile_cache.ENV] = tempfile.mkdtemp(prefix="nst_jax_xla_")
        _OWN_COMPILE_CACHE.append(os.environ[compile_cache.ENV])
    # The driver's program store stays off: tests patch library functions (objectives, solvers) that
    # its entries, keyed by config and source, cannot see. tests/test_program_store.py turns it on.
    os.environ.setdefault(compile_cache.ENV_PROGRAMS, "0")
    compile_cache.enable()  # before any test compiles: JAX reads the setting once


def pytest_unconfigure(config):
    for path in _OWN_COMPILE_CACHE:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def gatys_reference():
    """Golden outputs of the narrow torchvision-layout VGG-19 (tests/fixtures/gatys)."""
    with np.load(FIXTURES / "gatys" / "reference.npz") as f:
        return dict(f)


@pytest.fixture(scope="session")
def narrow_vgg19():
    """The narrow VGG-19 params, loaded from a real torchvision-format .pth through nst_jax.weights."""
    from nst_jax import weights

    return weights.load_vgg19(FIXTURES / "gatys" / "vgg19_narrow.pth")
