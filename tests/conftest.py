"""Shared fixtures: the PyTorch golden files written by scripts/make_fixtures.py."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


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
