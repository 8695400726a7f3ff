"""JAX's persistent compilation cache for the command lines: the second run skips XLA's compile.

Only entry points call :func:`enable` (``nst-gatys``, ``nst-adain``, ``scripts/train_decoder.py``,
the benchmark); importing the library never changes JAX's global configuration.

Where it lives: ``$NST_JAX_COMPILE_CACHE`` when it names a directory, ``0``/``off`` turns it off,
anything else (unset, ``1``, ``on``) means ``<weights cache>/xla`` (``nst_jax.weights.cache_dir``,
i.e. under ``$NST_JAX_CACHE``). A ``JAX_COMPILATION_CACHE_DIR`` the user set already wins.

Bounded: ``$NST_JAX_COMPILE_CACHE_MAX_MB`` (default 2048): :func:`enable` trims the directory to the
bound (oldest entries first) before the run. JAX's own LRU eviction is deliberately left off: it
keeps an ``-atime`` file beside every entry and fails (with a warning per compile) when a process
without eviction, or a racing writer, leaves an entry without one, so several processes sharing the
directory, as the test suite's workers and command lines do, would trip over each other. Stale entries are harmless: keys hash the program, the compile
options, the backend and the jax/jaxlib versions, so an entry from another version or device is never
looked up, and an entry that fails to load is recompiled (JAX warns and carries on).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "NST_JAX_COMPILE_CACHE"
ENV_MAX_MB = "NST_JAX_COMPILE_CACHE_MAX_MB"
DEFAULT_MAX_MB = 2048
# Programs that compile faster than this are not worth a file (XLA: a small jit is ~10 ms).
MIN_COMPILE_SECONDS = 0.1
_OFF = {"0", "off", "false", "no", "none"}
_ON = {"", "1", "on", "true", "yes"}
_ENTRY_SUFFIX = "-cache"  # JAX's file names: <key>-cache (and <key>-atime when it evicts)


def cache_path(environ: dict[str, str] | None = None) -> Path | None:
    """The directory the command lines cache compiled programs in, or None when turned off."""
    env = os.environ if environ is None else environ
    value = env.get(ENV, "1").strip()
    if value.lower() in _OFF:
        return None
    if value.lower() in _ON:
        from nst_jax.weights import cache_dir

        return cache_dir() / "xla"
    return Path(value).expanduser()


def max_bytes(environ: dict[str, str] | None = None) -> int:
    """The size bound in bytes (``$NST_JAX_COMPILE_CACHE_MAX_MB``, default 2048 MB)."""
    from nst_jax.errors import ConfigError

    env = os.environ if environ is None else environ
    text = env.get(ENV_MAX_MB, str(DEFAULT_MAX_MB))
    try:
        mb = float(text)
    except ValueError:
        raise ConfigError(f"{ENV_MAX_MB} must be a number of megabytes, got {text!r}") from None
    if not mb > 0:
        raise ConfigError(f"{ENV_MAX_MB} must be > 0, got {text!r}; set {ENV}=0 to turn the cache off")
    return int(mb * 2**20)


def trim(directory: Path, limit: int) -> int:
    """Deletes the oldest cache entries until the directory holds at most ``limit`` bytes.

    Returns the number of bytes removed. Entries another process removes meanwhile are skipped.
    """
    entries = []
    for path in directory.glob(f"*{_ENTRY_SUFFIX}"):
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        entries.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in entries)
    removed = 0
    for _, size, path in sorted(entries):
        if total - removed <= limit:
            break
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        removed += size
    return removed


def enable(environ: dict[str, str] | None = None) -> Path | None:
    """Turns on JAX's persistent compilation cache for this process; returns its directory.

    Call it before the first compilation (JAX reads the setting once). Returns None, and changes
    nothing, when the cache is turned off or the directory cannot be created (the run then just
    compiles as usual).
    """
    import jax

    if jax.config.jax_compilation_cache_dir:  # JAX_COMPILATION_CACHE_DIR or a caller set it
        return Path(jax.config.jax_compilation_cache_dir)
    directory = cache_path(environ)
    if directory is None:
        return None
    limit = max_bytes(environ)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # read-only home, say: caching is an optimisation, never a reason to fail
    trim(directory, limit)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_compilation_cache_max_size", -1)  # no JAX-side eviction: see the module doc
    return directory


__all__ = ["ENV", "ENV_MAX_MB", "cache_path", "enable", "max_bytes", "trim"]
