"""The driver's program store: programs traced once are exported (jax.export) and later deserialized.

Whether a run traced or deserialized is read from ``RunResult.program_source`` (``--metrics-json``'s
``program_source``), never from timings. In-process tests point the store at ``tmp_path`` and forget
the in-memory programs between runs; one test runs the command line in two processes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax import compile_cache, driver, gatys

ROOT = pathlib.Path(__file__).resolve().parent.parent
WEIGHTS = str(ROOT / "tests" / "fixtures" / "gatys" / "vgg19_narrow.pth")
CONFIG = gatys.GatysConfig(content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"),
                           optimizer="adam", learning_rate=0.05, iterations=3)


@pytest.fixture(scope="module")
def tiny(narrow_vgg19, gatys_reference):
    content = jnp.asarray(gatys_reference["content"])[:, :16, :16]
    style = jnp.asarray(gatys_reference["style"])[:, :16, :20]
    return narrow_vgg19, content, style


@pytest.fixture
def store(tmp_path, monkeypatch):
    where = tmp_path / "programs"
    monkeypatch.setattr(compile_cache, "_programs", [where])
    driver.clear_programs()
    yield where
    driver.clear_programs()


def _entries(where: pathlib.Path) -> set[pathlib.Path]:
    return set(where.glob(f"*{compile_cache.PROGRAM_SUFFIX}"))


def _fresh_run(tiny, config=CONFIG, **kwargs):
    driver.clear_programs()  # as a new process: nothing in memory
    return gatys.run(*tiny, config, chunk=2, **kwargs)


@pytest.mark.parametrize("optimizer", ["optax-lbfgs", "lbfgs", "adam"])
def test_second_run_deserializes_every_program_and_matches(tiny, store, optimizer):
    config = dataclasses.replace(CONFIG, optimizer=optimizer)
    first = _fresh_run(tiny, config)
    assert first.program_source == "traced"
    assert len(_entries(store)) == 4  # the targets, the solver's init, a chunk, the final terms
    second = _fresh_run(tiny, config)
    assert second.program_source == "exported"
    # The same module is compiled either way.
    np.testing.assert_array_equal(first.image, second.image)
    assert first.losses == second.losses and first.terms == second.terms
    assert first.evaluations == second.evaluations


def test_damaged_or_unreadable_entries_are_traced_again_and_rewritten(tiny, store):
    first = _fresh_run(tiny)
    entries = sorted(_entries(store))
    original = {p: p.read_bytes() for p in entries}
    entries[0].write_bytes(original[entries[0]][:-7])  # truncated
    flipped = bytearray(original[entries[1]])
    flipped[len(flipped) // 2] ^= 0x40
    entries[1].write_bytes(bytes(flipped))  # one bit changed
    entries[2].write_bytes(b"")  # emptied
    again = _fresh_run(tiny)
    assert again.program_source == "traced"
    np.testing.assert_array_equal(first.image, again.image)
    assert all(compile_cache.read_entry(p) is not None for p in entries)
    assert _fresh_run(tiny).program_source == "exported"


def test_another_shape_or_config_misses(tiny, store):
    params, content, style = tiny
    assert _fresh_run(tiny).program_source == "traced"
    assert _fresh_run(tiny).program_source == "exported"
    count = len(_entries(store))
    smaller = (params, content[:, :12], style)
    assert _fresh_run(smaller).program_source == "traced"
    assert len(_entries(store)) == count + 4
    assert _fresh_run(tiny, dataclasses.replace(CONFIG, history_size=4)).program_source == "traced"
    assert len(_entries(store)) == count + 8
    # Fields that never enter a program (the iteration count, colour control) share the entries.
    other = dataclasses.replace(CONFIG, iterations=5, color="luminance")
    assert _fresh_run(tiny, other).program_source == "exported"
    assert len(_entries(store)) == count + 8


def test_store_off_traces_and_writes_nothing(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(compile_cache, "_programs", [])
    assert compile_cache.programs_path() is None
    assert _fresh_run(tiny).program_source == "traced"
    assert _fresh_run(tiny).program_source == "traced"
    assert not any(tmp_path.iterdir())


def test_entries_are_checked_and_the_store_is_bounded(tmp_path):
    a, b = tmp_path / f"a{compile_cache.PROGRAM_SUFFIX}", tmp_path / f"b{compile_cache.PROGRAM_SUFFIX}"
    assert compile_cache.read_entry(a) is None  # missing
    assert compile_cache.write_entry(a, b"x" * 1000)
    assert compile_cache.read_entry(a) == b"x" * 1000
    os.utime(a, (1, 1))  # the older one goes first
    # A 1 MB bound gives the store 256 KB: writing 262 KB more evicts the older entry.
    assert compile_cache.write_entry(b, b"y" * 262_000, {compile_cache.ENV_MAX_MB: "1"})
    assert compile_cache.read_entry(b) == b"y" * 262_000 and not a.exists()
    b.write_bytes(b.read_bytes()[:-1] + b"z")
    assert compile_cache.read_entry(b) is None
    (tmp_path / "file").write_bytes(b"")
    assert not compile_cache.write_entry(tmp_path / "file" / "c", b"")  # cannot be written: skipped


_RUN_CLI = "import sys; from nst_jax.cli import gatys; sys.exit(gatys.main(sys.argv[1:]))"


def test_second_process_deserializes_instead_of_tracing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in (compile_cache.ENV, "JAX_COMPILATION_CACHE_DIR")}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])),
               NST_JAX_CACHE=str(tmp_path / "cache"), **{compile_cache.ENV_PROGRAMS: "1"})
    results = []
    for name in ("a", "b"):
        metrics = tmp_path / f"{name}.json"
        proc = subprocess.run([sys.executable, "-c", _RUN_CLI, "--weights", WEIGHTS, "--size", "32",
                               "--iterations", "2", "--optimizer", "adam", "--no-progress",
                               "-o", str(tmp_path / f"{name}.png"), "--metrics-json", str(metrics)],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results.append(json.loads(metrics.read_text()))
    assert [r["program_source"] for r in results] == ["traced", "exported"]
    assert results[0]["losses"] == results[1]["losses"]
    assert len(_entries(tmp_path / "cache" / "xla" / "programs")) == 4
