"""nst_jax.compile_cache: the command lines' persistent compilation cache.

The CLI runs happen in subprocesses, since JAX reads the cache setting once per process (and this
test session has its own cache, set up in conftest.py). Reuse is asserted on JAX's own cache-hit
event and on the files in the cache directory, never on timings.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from nst_jax import compile_cache
from nst_jax.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parent.parent
WEIGHTS = str(ROOT / "tests" / "fixtures" / "gatys" / "vgg19_narrow.pth")

# Runs the Gatys CLI in-process and prints how often JAX's persistent cache answered a compile.
_RUN_CLI = """
import json, sys
import jax.monitoring
hits = []
jax.monitoring.register_event_listener(
    lambda name, **kw: hits.append(name) if name == "/jax/compilation_cache/cache_hits" else None)
from nst_jax.cli import gatys
code = gatys.main(sys.argv[1:])
import jax
print(json.dumps({"code": code, "hits": len(hits), "dir": jax.config.jax_compilation_cache_dir}))
"""


def _env(tmp_path, **overrides):
    env = {k: v for k, v in os.environ.items()
           if k not in (compile_cache.ENV, compile_cache.ENV_MAX_MB, "JAX_COMPILATION_CACHE_DIR")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["NST_JAX_CACHE"] = str(tmp_path / "cache")
    env.update(overrides)
    return env


def _gatys(tmp_path, env, name="out.png"):
    args = ["--weights", WEIGHTS, "--size", "32", "--iterations", "2", "--optimizer", "adam",
            "--no-progress", "-o", str(tmp_path / name)]
    proc = subprocess.run([sys.executable, "-c", _RUN_CLI, *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _entries(directory: pathlib.Path) -> set[str]:
    return {p.name for p in directory.glob("*-cache")} if directory.is_dir() else set()


def test_cli_caches_by_default_and_second_run_reuses_it(tmp_path):
    env = _env(tmp_path)  # NST_JAX_COMPILE_CACHE unset: on, under the weights cache
    where = tmp_path / "cache" / "xla"
    first = _gatys(tmp_path, env, "a.png")
    assert first["code"] == 0 and first["dir"] == str(where)
    assert first["hits"] == 0  # a fresh directory
    chunk = {name for name in _entries(where) if name.startswith("jit_run_chunk")}
    assert len(chunk) == 1, sorted(_entries(where))
    second = _gatys(tmp_path, env, "b.png")
    assert second["code"] == 0 and second["hits"] >= 1
    # The optimization loop came from the cache: no second entry for it. (Tiny eager ops near the
    # minimum compile time may or may not be stored, depending on the machine's load.)
    assert {name for name in _entries(where) if name.startswith("jit_run_chunk")} == chunk


@pytest.mark.parametrize("setting", ["0", "moved"])  # other spellings of "off": test_cache_path_resolution
def test_env_turns_cache_off_or_moves_it(tmp_path, setting):
    moved = tmp_path / "elsewhere"
    env = _env(tmp_path, **{compile_cache.ENV: str(moved) if setting == "moved" else setting})
    result = _gatys(tmp_path, env)
    assert result["code"] == 0
    assert not (tmp_path / "cache" / "xla").exists()
    if setting == "moved":
        assert result["dir"] == str(moved) and _entries(moved)
    else:
        assert result["dir"] is None and not moved.exists()


def test_library_import_leaves_jax_config_alone(tmp_path):
    code = ("import jax\nimport nst_jax.gatys, nst_jax.adain, nst_jax.multiscale, nst_jax.tiling\n"
            "import nst_jax.compile_cache\n"
            "print(jax.config.jax_compilation_cache_dir, jax.config.jax_compilation_cache_max_size)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(tmp_path),
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["None", "-1"]  # JAX's defaults: no cache, no bound
    assert not (tmp_path / "cache").exists()


def test_cache_path_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("NST_JAX_CACHE", str(tmp_path / "w"))
    assert compile_cache.cache_path({}) == tmp_path / "w" / "xla"
    assert compile_cache.cache_path({compile_cache.ENV: "on"}) == tmp_path / "w" / "xla"
    for off in ("0", "off", "OFF", "false"):
        assert compile_cache.cache_path({compile_cache.ENV: off}) is None
    assert compile_cache.cache_path({compile_cache.ENV: str(tmp_path / "x")}) == tmp_path / "x"


def test_max_bytes():
    assert compile_cache.max_bytes({}) == compile_cache.DEFAULT_MAX_MB * 2**20
    assert compile_cache.max_bytes({compile_cache.ENV_MAX_MB: "1.5"}) == 3 * 2**19
    for bad in ("x", "0", "-3", "nan"):
        with pytest.raises(ConfigError, match=compile_cache.ENV_MAX_MB):
            compile_cache.max_bytes({compile_cache.ENV_MAX_MB: bad})


def test_bad_size_is_a_one_line_cli_error(tmp_path):
    env = _env(tmp_path, **{compile_cache.ENV_MAX_MB: "lots"})
    proc = subprocess.run([sys.executable, "-m", "nst_jax.gatys", "--weights", WEIGHTS, "--size", "32",
                           "--iterations", "1", "-o", str(tmp_path / "o.png")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {compile_cache.ENV_MAX_MB} must be a number of megabytes, got 'lots'"]
    assert not (tmp_path / "o.png").exists()


def test_trim_removes_oldest_entries_first(tmp_path):
    for i, size in enumerate([300, 200, 100]):  # oldest first
        path = tmp_path / f"k{i}-cache"
        path.write_bytes(b"x" * size)
        os.utime(path, (1000 + i, 1000 + i))
    (tmp_path / "unrelated.txt").write_bytes(b"y" * 1000)
    assert compile_cache.trim(tmp_path, 350) == 300
    assert _entries(tmp_path) == {"k1-cache", "k2-cache"}
    assert compile_cache.trim(tmp_path, 300) == 0
    assert compile_cache.trim(tmp_path, 0) == 300
    assert _entries(tmp_path) == set() and (tmp_path / "unrelated.txt").exists()
