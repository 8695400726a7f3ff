"""Benchmark suite for nst_jax: Gatys, AdaIN stylization, AdaIN video, AdaIN training, memory. Writes JSON.

    python scripts/benchmark.py                        # default workloads for this backend
    python scripts/benchmark.py --compare-torch        # also the PyTorch references, with ratios
    python scripts/benchmark.py --quick                # tiny networks and images (tests, ~30 s)
    python scripts/benchmark.py --markdown benchmarks/cpu.json   # the README performance table
    python scripts/benchmark.py --compare-torch --only video --merge benchmarks/cpu.json   # one section

What is measured (every number is a median over repeats or chunks):

* Gatys (``nst_jax.gatys.run``, the chunked driver the CLI uses) per image size and optimizer:
  seconds per iteration, compile seconds (summed from JAX's compile events in a warm-up run, which
  also checks that the timed run compiles nothing), the final loss, iterations to reach a target
  loss and the time that takes, and peak memory (each config again in its own process: peak RSS,
  or the device's ``peak_bytes_in_use`` on an accelerator). One function evaluation
  (value and gradient of the objective) is timed on its own, so ``s_per_iter / s_per_eval`` is the
  number of evaluations an iteration effectively costs. ``--chunks`` compares chunk lengths of
  ``gatys.run`` (1 = a Python loop of jitted steps, N = a ``fori_loop`` of N steps on device).
* AdaIN: ``adain.stylize_jit`` latency and images/s per size and batch; ``train`` step time and
  images/s per device (``train.compiled_train_step``, Adam, "mse" loss as pytorch-AdaIN).
* Video: AdaIN frames/s of ``video_style.run_adain`` (what ``nst-adain`` runs on a clip: the style's
  statistics once per clip, frames in batches by one compiled program) per frame height and batch
  size, on a 16:9 pan, against PyTorch's frame-by-frame loop (pytorch-AdaIN's ``test_video.py``).
* Memory: peak memory against image size with and without ``remat`` and bfloat16 features, a
  linear fit, the largest square image that fits each ``--budget-gib``; the fidelity cost of
  bfloat16 (relative feature, loss and gradient error against float32).

With ``--compare-torch`` the same workloads run in PyTorch (``scripts/torch_reference.py``) with
the same weights and inputs, interleaved with the JAX measurements (A B A B ...) in one process so
that load from other programs hits both alike, and each result gets JAX/PyTorch ratios and a
parity check (relative loss difference at the same point). Weights are random full-width VGG-19 /
AdaIN networks in the layout of ``vgg.init_params`` / ``adain.init_decoder``: speed does not depend
on the values.

Every configuration runs in a subprocess of this script (``--worker``), so peak memory is per
configuration and a crash costs one entry (recorded as ``"error"``), not the run.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCHEMA_VERSION = 1
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

from nst_jax import files  # noqa: E402 (imports no JAX: the parent process stays light)
RESULT_PREFIX = "BENCH-RESULT "
GATYS_OPTIMIZERS = ("lbfgs", "optax-lbfgs", "adam")
LBFGS_OPTIMIZERS = ("lbfgs", "optax-lbfgs")
TORCH_VARIANTS = ("lbfgs", "lbfgs-strong-wolfe", "adam")
# (remat, compute dtype) variants of the memory scan.
MEMORY_VARIANTS = ((False, "float32"), (True, "float32"), (False, "bfloat16"), (True, "bfloat16"))
# Narrow networks of --quick (channels per VGG block); the full networks are VGG-19's.
QUICK_WIDTHS = {1: 8, 2: 16, 3: 16, 4: 32, 5: 32}
# The goals: JAX time / PyTorch time (and final-loss ratio) must not exceed these; the ratios in
# GOALS_AT_LEAST (JAX rate / PyTorch rate) must reach theirs.
GOALS = {"gatys_s_per_iter": 0.8, "gatys_final_loss": 1.0, "adain_latency": 1.0, "train_step": 1.0}
GOALS_AT_LEAST = {"video_frames_per_s": 1.0}
VERSIONED = ("jax", "jaxlib", "flax", "optax", "jaxopt", "numpy", "torch")
SECTIONS = ("gatys", "memory", "adain", "train", "ops", "video")
QUICK_SECTIONS = ("gatys", "adain", "train", "ops", "video")


def _median(values):
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else None


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else float(a) / float(b)


def _rel(a, b):
    return None if a is None or b is None else abs(float(a) - float(b)) / max(abs(float(b)), 1e-30)


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    scale = 1.0 if sys.platform == "darwin" else 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


# ================================================================================================
# Worker side: everything below runs inside one subprocess per configuration.


class CompileClock:
    """Sums JAX's compile-event durations (tracing, lowering, backend compile) while active."""

    EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
              "/jax/core/compile/backend_compile_duration")

    def __init__(self):
        import jax

        self.seconds = 0.0
        self.backend_compiles = 0
        self.active = False
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event, duration, **_):
        if self.active and event in self.EVENTS:
            self.seconds += duration
            self.backend_compiles += event == self.EVENTS[2]

    def __enter__(self):
        self.seconds, self.backend_compiles, self.active = 0.0, 0, True
        return self

    def __exit__(self, *exc):
        self.active = False


def _device_peak_bytes():
    import jax

    stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _memory_record(baseline_mb: float) -> dict:
    return {"peak_rss_mb": round(_peak_rss_mb(), 1), "baseline_rss_mb": round(baseline_mb, 1),
            "device_peak_bytes": _device_peak_bytes()}


def _images(size: int, batch: int = 1, seed: int = 0):
    """Content and style batches (B, size, size, 3) from the packaged photo and painting.

    Batch entries are different random crops of the images resized to 1.5x ``size``.
    """
    import numpy as np

    from nst_jax import image as image_io

    rng = np.random.default_rng(seed)
    out = []
    for path in (image_io.default_content_path(), image_io.default_style_path()):
        big = image_io.resize(image_io.load_image(path), height=size * 3 // 2, width=size * 3 // 2)
        crops = []
        for _ in range(batch):
            y, x = rng.integers(0, big.shape[0] - size + 1), rng.integers(0, big.shape[1] - size + 1)
            crops.append(big[y:y + size, x:x + size])
        out.append(np.stack(crops).astype(np.float32))
    return out


def _he_normal(rng, shape, fan_in: int):
    import numpy as np

    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def _vgg_params(widths, adain_encoder: bool = False) -> dict:
    """Random VGG-19 params (He-normal kernels, bias 0.01), the layout of ``vgg.init_params``.

    Drawn with numpy: ``vgg.init_params`` compiles one random-number program per layer, which
    costs about a minute of CPU time per process; the values do not matter for speed, and both
    frameworks get these same arrays.
    """
    import numpy as np

    from nst_jax import vgg

    import jax

    network = vgg.ADAIN_VGG if adain_encoder else vgg.VGG19
    widths = widths or {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}
    rng = np.random.default_rng(0)
    params, cin = {}, 3
    if network.input_norm == "conv":
        params["preprocess"] = {"kernel": (rng.standard_normal((1, 1, 3, 3)) * 0.5).astype(np.float32),
                                "bias": np.zeros((3,), np.float32)}
    for name in network.layers:
        if name.startswith("conv"):
            cout = widths[int(name[4])]
            params[name] = {"kernel": _he_normal(rng, (3, 3, cin, cout), 9 * cin),
                            "bias": np.full((cout,), 0.01, np.float32)}
            cin = cout
    expected = jax.eval_shape(lambda: vgg.init_params(jax.random.key(0), widths, network))
    if vgg.param_shapes(params) != vgg.param_shapes(expected):
        raise RuntimeError("benchmark params drifted from vgg.init_params; update _vgg_params")
    return params


def _decoder_params(widths) -> dict:
    """Random AdaIN decoder params (He-normal kernels, zero biases) mirroring encoder ``widths``."""
    import numpy as np

    from nst_jax import adain

    w = widths or {1: 64, 2: 128, 3: 256, 4: 512}
    w4, w3, w2, w1 = w[4], w[3], w[2], w[1]
    channels = ((w4, w3), (w3, w3), (w3, w3), (w3, w3), (w3, w2), (w2, w2), (w2, w1), (w1, w1), (w1, 3))
    rng = np.random.default_rng(1)
    params = {name: {"kernel": _he_normal(rng, (3, 3, cin, cout), 9 * cin), "bias": np.zeros((cout,), np.float32)}
              for name, (cin, cout) in zip(adain.DECODER_LAYERS, channels)}
    adain.check_decoder_params(params)
    return params


def _gatys_config(job, optimizer, **overrides):
    from nst_jax import gatys

    settings = {"optimizer": optimizer, "iterations": job["iterations"],
                "history_size": job.get("history_size", 10), "compute_dtype": job.get("dtype", "float32"),
                "remat": job.get("remat", False), **overrides}
    return gatys.GatysConfig(**settings)


def _torch_threads(job):
    import torch

    torch.set_num_threads(job.get("torch_threads") or os.cpu_count() or 1)
    return torch


def work_machine(job) -> dict:
    import jax

    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    cpu = platform.processor() or None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    device = jax.devices()[0]
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "backend": jax.default_backend(), "device_kind": device.device_kind,
            "device_count": jax.device_count(), "versions": versions}


def _assign_partners(optimizers, torch_on):
    """Which PyTorch runs step in lockstep with which JAX run (each torch variant runs once)."""
    partners = {o: [] for o in optimizers}
    if not torch_on:
        return partners
    lbfgs = [o for o in optimizers if o in LBFGS_OPTIMIZERS]
    for i, variant in enumerate(("lbfgs", "lbfgs-strong-wolfe")):
        if lbfgs:
            partners[lbfgs[i % len(lbfgs)]].append(variant)
    if "adam" in optimizers:
        partners["adam"].append("adam")
    return partners


def work_gatys(job) -> dict:
    """Timing of one image size: one evaluation, each optimizer's run, chunk lengths; torch interleaved."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from nst_jax import gatys

    clock = CompileClock()
    size, iterations, chunk = job["size"], job["iterations"], job["chunk"]
    params = _vgg_params(job.get("widths"))
    content, style = _images(size)
    base = _gatys_config(job, "lbfgs")
    weights = gatys.loss_weights(base)
    out: dict = {"size": size, "iterations": iterations, "chunk": chunk}

    # Targets: the driver computes them eagerly (op by op); compare with one jitted call.
    t0 = time.perf_counter()
    targets = jax.block_until_ready(gatys.compute_targets(params, content, style, base))
    out["targets"] = {"eager_first_s": time.perf_counter() - t0}
    if job.get("targets_timing"):
        t0 = time.perf_counter()
        jax.block_until_ready(gatys.compute_targets(params, content, style, base))
        out["targets"]["eager_warm_s"] = time.perf_counter() - t0
        jit_targets = jax.jit(gatys.compute_targets, static_argnums=3)
        for key in ("jit_first_s", "jit_warm_s"):
            t0 = time.perf_counter()
            jax.block_until_ready(jit_targets(params, content, style, base))
            out["targets"][key] = time.perf_counter() - t0

    x0 = gatys.initial_image(jnp.asarray(content), base, jax.random.key(0))
    torch_on = job.get("torch", False)
    model = None
    if torch_on:
        _torch_threads(job)
        from torch_reference import GatysTorch, GatysTorchRun, nchw

        model = GatysTorch(params, content, style, base.content_layers, base.style_layers)

    # One function evaluation (value and gradient), JAX and torch alternating.
    value_and_grad = jax.jit(jax.value_and_grad(lambda x, p, t, w: gatys.objective(x, p, t, w, base)))
    with clock:
        t0 = time.perf_counter()
        jax_value, _ = jax.block_until_ready(value_and_grad(x0, params, targets, weights))
        first = time.perf_counter() - t0
    evals = {"jax_compile_s": clock.seconds, "jax_first_call_s": first, "jax_value_at_init": float(jax_value)}
    jax_times, torch_times = [], []
    x0_np = np.asarray(x0)
    x0_torch = nchw(x0_np) if torch_on else None
    if torch_on:
        model.value_and_grad(x0_torch)  # warm-up
    for _ in range(job["eval_repeats"]):
        t0 = time.perf_counter()
        jax.block_until_ready(value_and_grad(x0, params, targets, weights))
        jax_times.append(time.perf_counter() - t0)
        if torch_on:
            t0 = time.perf_counter()
            torch_value, _ = model.value_and_grad(x0_torch)
            torch_times.append(time.perf_counter() - t0)
    evals["jax_s"] = _median(jax_times)
    if torch_on:
        evals["torch_s"] = _median(torch_times)
        evals["torch_value_at_init"] = torch_value
        evals["ratio"] = _ratio(evals["jax_s"], evals["torch_s"])
        evals["loss_rel_diff"] = _rel(jax_value, torch_value)  # parity of the two objectives
    out["eval"] = evals

    partners = _assign_partners(job["optimizers"], torch_on)
    torch_runs = {}
    runs = []
    for optimizer in job["optimizers"]:
        config = _gatys_config(job, optimizer)
        # Warm-up: compiles init, the chunk program and the final-loss program (cached by gatys).
        with clock:
            t0 = time.perf_counter()
            gatys.run(params, content, style, dataclasses_replace(config, iterations=1), weights, chunk=chunk)
            warmup = time.perf_counter() - t0
        compile_s, compiles = clock.seconds, clock.backend_compiles
        mine = []
        for variant in partners[optimizer]:
            torch_runs[variant] = GatysTorchRun(model, x0_np, variant, history_size=config.history_size)
            mine.append(torch_runs[variant])

        chunk_compiles = []

        def after_chunk(progress, _get_image, mine=mine, last=[0]):  # noqa: B006 - per-run state
            chunk_compiles.append(clock.backend_compiles)  # cumulative, read before torch runs
            n = progress.iteration - last[0]
            last[0] = progress.iteration
            for run in mine:
                run.run(n)

        with clock:
            result = gatys.run(params, content, style, config, weights, chunk=chunk, callback=after_chunk)
        # A chunk that compiled (a program signature that changed after the first chunk) is reported
        # apart from the steady-state rate.
        per_chunk = [b - a for a, b in zip([0] + chunk_compiles[:-1], chunk_compiles)]
        rates = [dt / n for (n, dt), c in zip(result.chunk_seconds, per_chunk) if n > 0 and c == 0]
        runs.append({
            "optimizer": optimizer, "s_per_iter": _median(rates), "s_per_iter_chunks": rates,
            "compile_s": compile_s, "compiles": compiles, "warmup_s": warmup,
            "recompiles_in_timed_run": clock.backend_compiles,
            "recompiling_chunks_s": [dt for (n, dt), c in zip(result.chunk_seconds, per_chunk) if c > 0],
            "final_loss": result.terms["total"],
            "losses": result.losses, "iterations": result.iterations,
            # Counted inside the compiled program (the solver state's counter, the init's one included).
            "evaluations": result.evaluations,
            "evals_per_iter": result.evaluations / max(result.iterations, 1),
            "torch_partners": partners[optimizer],
        })
    out["runs"] = runs
    out["torch"] = {}
    for variant, run in torch_runs.items():
        rates = [dt / n for n, dt in run.seconds if n > 0]
        total_s = sum(dt for _, dt in run.seconds)
        out["torch"][variant] = {
            "s_per_iter": _median(rates), "s_per_iter_chunks": rates, "evals": run.evals,
            "evals_per_iter": run.evals / max(run.iterations, 1),
            "s_per_eval": total_s / max(run.evals, 1), "final_loss": run.current_loss(),
            "losses": run.losses, "iterations": run.iterations,
        }

    # Chunk lengths of the driver, alternating A B A B on the same problem.
    chunks = []
    if job.get("chunks"):
        config = _gatys_config(job, job["optimizers"][0], iterations=job["chunk_iterations"])
        samples = {c: [] for c in job["chunks"]}
        for c in job["chunks"]:  # compile each once
            gatys.run(params, content, style, dataclasses_replace(config, iterations=1), weights, chunk=c)
        for _ in range(job["chunk_repeats"]):
            for c in job["chunks"]:
                t0 = time.perf_counter()
                result = gatys.run(params, content, style, config, weights, chunk=c)
                wall = time.perf_counter() - t0
                samples[c].append({"s_per_iter": _median([dt / n for n, dt in result.chunk_seconds]),
                                   "wall_s": wall, "final_loss": result.terms["total"]})
        for c, s in samples.items():
            chunks.append({"chunk": c, "optimizer": config.optimizer, "iterations": config.iterations,
                           "s_per_iter": _median([x["s_per_iter"] for x in s]),
                           "wall_s": _median([x["wall_s"] for x in s]), "final_loss": s[-1]["final_loss"]})
    out["chunks"] = chunks
    out["process_peak_rss_mb"] = round(_peak_rss_mb(), 1)  # all of the above together, torch included
    return out


def dataclasses_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


def work_gatys_memory(job) -> dict:
    """Peak memory of one Gatys configuration (JAX only) and its loss after a few iterations."""
    import jax

    from nst_jax import gatys
    from nst_jax import memory as nst_memory

    params = _vgg_params(job.get("widths"))
    content, style = _images(job["size"])
    config = _gatys_config(job, job["optimizer"], remat=job.get("remat", False),
                           compute_dtype=job.get("dtype", "float32"))
    weights = gatys.loss_weights(config)
    jax.block_until_ready(jax.device_put(content))
    baseline = _peak_rss_mb()
    t0 = time.perf_counter()
    result = gatys.run(params, content, style, config, weights, chunk=job["chunk"])
    wall = time.perf_counter() - t0
    memory = _memory_record(baseline)
    # Once more, compiled: the time per iteration of this variant.
    again = gatys.run(params, content, style, config, weights, chunk=job["chunk"])
    rates = [dt / n for n, dt in again.chunk_seconds if n > 0]
    return {"size": job["size"], "optimizer": job["optimizer"], "remat": config.remat,
            "dtype": config.compute_dtype, "iterations": result.iterations, "final_loss": result.terms["total"],
            "wall_s": wall, "s_per_iter": _median(rates),
            "estimate_bytes": nst_memory.gatys_bytes(job["size"], job["size"], params, config),
            **memory}


def work_torch_gatys_memory(job) -> dict:
    """Peak memory of one PyTorch Gatys configuration."""
    import jax

    from nst_jax import gatys

    _torch_threads(job)
    from torch_reference import GatysTorch, GatysTorchRun

    params = _vgg_params(job.get("widths"))
    content, style = _images(job["size"])
    base = _gatys_config(job, "lbfgs")
    x0 = jax.device_get(gatys.initial_image(content, base, jax.random.key(0)))
    baseline = _peak_rss_mb()
    model = GatysTorch(params, content, style, base.content_layers, base.style_layers)
    run = GatysTorchRun(model, x0, job["optimizer"], history_size=base.history_size)
    run.run(job["iterations"])
    return {"size": job["size"], "optimizer": job["optimizer"], "iterations": run.iterations,
            "final_loss": run.current_loss(), **_memory_record(baseline)}


def work_memory_static(job) -> dict:
    """Bytes one evaluation (value and gradient) needs, from XLA's buffer assignment, per size and variant.

    Compiled for abstract inputs (nothing runs), so large images cost only compile time. Unlike the
    peak RSS of a run, this excludes the compiler's own memory and allocator slack: it is the memory
    the program itself needs on the device. The L-BFGS state (``2 * history_size + 6`` image-sized
    float32 vectors, :func:`nst_jax.memory.solver_vectors`) is added separately.
    """
    import jax
    import jax.numpy as jnp

    from nst_jax import gatys
    from nst_jax import memory as nst_memory

    params = _vgg_params(job.get("widths"))
    p_abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
    rows = []
    for size in job["sizes"]:  # a square side, or [height, width]
        height, width = (size, size) if isinstance(size, int) else size
        image = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
        for remat, dtype in job["variants"]:
            config = _gatys_config(job, "lbfgs", remat=remat, compute_dtype=dtype)
            weights = gatys.loss_weights(config)
            targets = jax.eval_shape(lambda p, c, s, config=config: gatys.compute_targets(p, c, s, config),
                                     p_abstract, image, image)
            fn = jax.jit(jax.value_and_grad(lambda x, p, t, w, config=config: gatys.objective(x, p, t, w, config)))
            t0 = time.perf_counter()
            stats = fn.lower(image, p_abstract, targets, weights).compile().memory_analysis()
            compile_s = time.perf_counter() - t0
            program = (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
                       - stats.alias_size_in_bytes)
            state = nst_memory.solver_vectors(config.optimizer, config.history_size) * height * width * 3 * 4
            rows.append({"size": size, "remat": remat, "dtype": dtype, "temp_bytes": stats.temp_size_in_bytes,
                         "argument_bytes": stats.argument_size_in_bytes, "program_bytes": program,
                         "lbfgs_state_bytes": state, "peak_bytes": program + state, "compile_s": compile_s,
                         "estimate_bytes": nst_memory.gatys_bytes(height, width, params, config)})
    return {"rows": rows}


def work_gatys_large(job) -> dict:
    """A real run of a few iterations at ``height x width`` (remat, bfloat16, tiling as the job says)."""
    import jax
    import numpy as np

    from nst_jax import gatys, tiling
    from nst_jax import image as image_io
    from nst_jax import memory as nst_memory

    params = _vgg_params(job.get("widths"))
    h, w = job["height"], job["width"]
    content, style = (image_io.resize(image_io.load_image(path), height=h, width=w)[None].astype(np.float32)
                      for path in (image_io.default_content_path(), image_io.default_style_path()))
    config = _gatys_config(job, job["optimizer"])
    weights = gatys.loss_weights(config)
    baseline = _peak_rss_mb()
    t0 = time.perf_counter()
    if job.get("tile_size"):
        result = tiling.run_tiled(params, content, style, config, weights, tile_size=job["tile_size"],
                                  chunk=job["chunk"])
    else:
        result = gatys.run(params, content, style, config, weights, chunk=job["chunk"])
    wall = time.perf_counter() - t0
    rates = [dt / n for n, dt in result.chunk_seconds if n > 0]  # compilation is timed apart
    return {"height": h, "width": w, "optimizer": config.optimizer, "remat": config.remat,
            "dtype": config.compute_dtype, "tile_size": job.get("tile_size"), "iterations": result.iterations,
            "final_loss": result.terms["total"], "finite": bool(np.isfinite(result.terms["total"])),
            "wall_s": wall, "first_chunk_s": result.chunk_seconds[0][1] if result.chunk_seconds else None,
            "s_per_iter": _median(rates) if rates else None,
            "compile_s": result.compile_seconds, "evaluations": result.evaluations,
            "estimate_bytes": nst_memory.gatys_bytes(h, w, params, config), **_memory_record(baseline)}


def work_fidelity(job) -> dict:
    """bfloat16 features (float32 Gram and losses) and remat against float32, at one image size."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from nst_jax import gatys, vgg

    params = _vgg_params(job.get("widths"))
    content, style = _images(job["size"])
    f32 = _gatys_config(job, "lbfgs")
    x0 = gatys.initial_image(jnp.asarray(content), f32, jax.random.key(0))

    @jax.jit
    def feats(x, params):
        a = vgg.features(params, x, f32.layers)
        b = vgg.features(params, x, f32.layers, dtype=jnp.bfloat16)
        return a, b

    a, b = feats(x0, params)
    layer_err = {n: float(jnp.linalg.norm(b[n] - a[n]) / jnp.linalg.norm(a[n])) for n in f32.layers}

    def loss_and_grad(config):
        targets = jax.jit(gatys.compute_targets, static_argnums=3)(params, content, style, config)
        fn = jax.jit(jax.value_and_grad(lambda x, t: gatys.objective(x, params, t, gatys.loss_weights(config),
                                                                       config)))
        return jax.device_get(fn(x0, targets))

    reference = loss_and_grad(f32)
    out = {"size": job["size"], "feature_rel_error_bf16": layer_err}
    for name, config in (("bf16", dataclasses_replace(f32, compute_dtype="bfloat16")),
                         ("remat", dataclasses_replace(f32, remat=True))):
        value, grad = loss_and_grad(config)
        g0 = np.asarray(reference[1]).ravel()
        g1 = np.asarray(grad).ravel()
        out[name] = {"loss_rel_error": _rel(value, reference[0]),
                     "grad_rel_error": float(np.linalg.norm(g1 - g0) / np.linalg.norm(g0)),
                     "grad_cosine": float(g0 @ g1 / (np.linalg.norm(g0) * np.linalg.norm(g1)))}
    return out


def _adain_nets(job):
    """Random AdaIN encoder and decoder params for the job's widths, and the PyTorch model holding the
    same weights when the job compares with torch (else None)."""
    from nst_jax import adain

    vgg_params = _vgg_params(job.get("widths"), adain_encoder=True)
    decoder_params = _decoder_params(job.get("widths"))
    if not job.get("torch", False):
        return vgg_params, decoder_params, None
    _torch_threads(job)
    from torch_reference import AdainTorch

    return vgg_params, decoder_params, AdainTorch(vgg_params, decoder_params, adain.DECODER_LAYERS)


def work_adain(job) -> dict:
    """AdaIN stylization latency per (size, batch), JAX and torch alternating."""
    import jax
    import numpy as np

    from nst_jax import adain

    clock = CompileClock()
    vgg_params, decoder_params, model = _adain_nets(job)
    torch_on = model is not None
    if torch_on:
        from torch_reference import nchw, nhwc
    rows = []
    for size in job["sizes"]:
        for batch in job["batches"]:
            content, style = _images(size, batch, seed=size + batch)
            with clock:
                t0 = time.perf_counter()
                y = jax.block_until_ready(adain.stylize_jit(vgg_params, decoder_params, content, style))
                first = time.perf_counter() - t0
            row = {"size": size, "batch": batch, "compile_s": clock.seconds, "first_call_s": first}
            jax_times, torch_times = [], []
            if torch_on:
                c_t, s_t = nchw(content), nchw(style)
                y_t = model.stylize(c_t, s_t)  # warm-up, and the parity check
                row["max_abs_diff"] = float(np.max(np.abs(nhwc(y_t) - np.asarray(y))))
            with clock:
                for _ in range(job["repeats"]):
                    t0 = time.perf_counter()
                    jax.block_until_ready(adain.stylize_jit(vgg_params, decoder_params, content, style))
                    jax_times.append(time.perf_counter() - t0)
                    if torch_on:
                        t0 = time.perf_counter()
                        model.stylize(c_t, s_t)
                        torch_times.append(time.perf_counter() - t0)
            row["recompiles"] = clock.backend_compiles
            row["latency_s"] = _median(jax_times)
            row["images_per_s"] = batch / row["latency_s"]
            if torch_on:
                t = _median(torch_times)
                row["torch"] = {"latency_s": t, "images_per_s": batch / t}
                row["ratio_latency"] = _ratio(row["latency_s"], t)
            rows.append(row)
    return {"rows": rows, "peak_rss_mb": round(_peak_rss_mb(), 1), "device_peak_bytes": _device_peak_bytes()}


def video_frame_width(height: int) -> int:
    """Width of the benchmark's 16:9 frames, a multiple of 8 so both frameworks decode the same size."""
    return max(8, 8 * round(height * 16 / 9 / 8))


def _pan(height: int, frames: int):
    """``frames`` (H, W, 3) frames of a 16:9 pan across the packaged photo, 2 px per frame."""
    from nst_jax import image as image_io

    width = video_frame_width(height)
    big = image_io.resize(image_io.load_image(image_io.default_content_path()), height=height,
                          width=width + 2 * (frames - 1))
    return [big[:, 2 * t:2 * t + width] for t in range(frames)]


def work_video(job) -> dict:
    """AdaIN on a clip: frames/s of ``video_style.run_adain`` (what nst-adain runs) per batch size, and torch's
    frame-by-frame loop, interleaved clip by clip.

    The frames are cut into clips of ``max(batches)`` frames; each clip is stylized by every batch size and by
    torch in turn (A B C A B C ...), each side computing the style's statistics once per clip.
    """
    import numpy as np

    from nst_jax import video_style
    from nst_jax import image as image_io

    clock = CompileClock()
    vgg_params, decoder_params, model = _adain_nets(job)
    torch_on = model is not None
    batches = job["batches"]
    clip_len = max(batches)
    rows = []
    for height in job["heights"]:
        frames = [f.astype(np.float32) for f in _pan(height, job["frames"])]
        style = image_io.resize(image_io.load_image(image_io.default_style_path()), height=height)[None]
        clips = [frames[i:i + clip_len] for i in range(0, len(frames), clip_len)]

        def jax_clip(clip, batch, keep=None):
            return video_style.run_adain(vgg_params, decoder_params, clip, [style], batch=batch,
                                         on_frame=None if keep is None else lambda i, img: keep.append(img))

        first = {}
        by_batch = {}
        for batch in batches:
            kept = []
            with clock:
                t0 = time.perf_counter()
                jax_clip(clips[0], batch, kept)  # compiles this batch's program
                first[batch] = (clock.seconds, time.perf_counter() - t0)
            by_batch[batch] = kept
        diffs = {}
        if torch_on:
            reference = model.stylize_frames(clips[0], style)  # warm-up, and the parity check
            diffs = {b: float(max(np.max(np.abs(a - r)) for a, r in zip(by_batch[b], reference))) for b in batches}
        seconds = {b: 0.0 for b in batches}
        torch_seconds = 0.0
        with clock:
            for clip in clips:
                for batch in batches:
                    t0 = time.perf_counter()
                    jax_clip(clip, batch)
                    seconds[batch] += time.perf_counter() - t0
                if torch_on:
                    t0 = time.perf_counter()
                    model.stylize_frames(clip, style)
                    torch_seconds += time.perf_counter() - t0
        n = len(frames)
        for batch in batches:
            row = {"height": height, "width": video_frame_width(height), "batch": batch, "frames": n,
                   "compile_s": first[batch][0], "first_clip_s": first[batch][1],
                   "recompiles": clock.backend_compiles, "s_per_frame": seconds[batch] / n,
                   "frames_per_s": n / seconds[batch]}
            if torch_on:
                row["torch"] = {"s_per_frame": torch_seconds / n, "frames_per_s": n / torch_seconds}
                row["ratio_frames_per_s"] = _ratio(row["frames_per_s"], row["torch"]["frames_per_s"])
                row["max_abs_diff"] = diffs[batch]
            rows.append(row)
    return {"rows": rows, "peak_rss_mb": round(_peak_rss_mb(), 1), "device_peak_bytes": _device_peak_bytes()}


def work_train(job) -> dict:
    """AdaIN decoder training step (Adam, "mse" loss as pytorch-AdaIN), JAX and torch alternating."""
    import jax
    import jax.numpy as jnp

    from nst_jax import adain, train

    clock = CompileClock()
    vgg_params = _vgg_params(job.get("widths"), adain_encoder=True)
    crop, batch = job["crop"], job["batch"]
    content, style = _images(crop, batch, seed=7)
    mesh = train.make_mesh()
    # Constant learning rate and torch's Adam betas: the same update rule as pytorch-AdaIN's train.py.
    spec = train.OptimizerSpec(b1=0.9, b2=0.999, schedule="constant", decay=0.0, plateau_factor=0.5,
                               plateau_patience=5, plateau_window=500)
    hyper = train.Hyper(jnp.asarray(1e-4, jnp.float32), jnp.asarray(10.0, jnp.float32))
    decoder0 = _decoder_params(job.get("widths"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    params = jax.device_put(decoder0, replicated)
    state = train.TrainState(jax.device_put(jnp.zeros((), jnp.int32), replicated), params,
                             jax.device_put(train.make_optimizer(spec).init(params), replicated))
    step = train.compiled_train_step(spec, "mse", mesh)
    data = {"content": jnp.asarray(content), "style": jnp.asarray(style)}
    with clock:
        t0 = time.perf_counter()
        state, metrics = step(state, data, vgg_params, hyper)
        jax_loss = float(metrics["loss"])
        first = time.perf_counter() - t0
    row = {"crop": crop, "batch": batch, "devices": mesh.size, "compile_s": clock.seconds, "first_step_s": first,
           "loss_first_step": jax_loss}
    torch_on = job.get("torch", False)
    if torch_on:
        _torch_threads(job)
        from torch_reference import AdainTorch, nchw

        model = AdainTorch(vgg_params, decoder0, adain.DECODER_LAYERS)
        c_t, s_t = nchw(content), nchw(style)
        torch_loss = model.train_step(c_t, s_t)  # warm-up, and the parity check (same decoder, batch)
        row["torch_loss_first_step"] = torch_loss
        row["loss_rel_diff"] = _rel(jax_loss, torch_loss)
    jax_times, torch_times = [], []
    with clock:
        for _ in range(job["steps"]):
            t0 = time.perf_counter()
            state, metrics = step(state, data, vgg_params, hyper)
            jax.block_until_ready(metrics["loss"])
            jax_times.append(time.perf_counter() - t0)
            if torch_on:
                t0 = time.perf_counter()
                model.train_step(c_t, s_t)
                torch_times.append(time.perf_counter() - t0)
    row["recompiles"] = clock.backend_compiles
    row["step_s"] = _median(jax_times)
    row["images_per_s_per_device"] = batch / row["step_s"] / mesh.size
    if torch_on:
        t = _median(torch_times)
        row["torch"] = {"step_s": t, "images_per_s": batch / t}
        row["ratio_step"] = _ratio(row["step_s"], t)
    row["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    row["device_peak_bytes"] = _device_peak_bytes()
    return row


def work_ops(job) -> dict:
    """The custom-VJP building blocks of nst_jax against JAX's default rules, op by op.

    Each row times the same computation twice: with nst_jax's op (``vgg.conv2d``, ``vgg.conv_layer``,
    ``vgg.max_pool``, ``losses.gram``) and with the plain ``lax``/``jnp`` formulation whose gradient
    JAX derives itself. ``ratio`` = ours / default (lower is better); the values agree (``max_rel_diff``).
    """
    import jax
    import jax.numpy as jnp
    from jax import lax

    from nst_jax import losses, vgg

    s, c, reps = job["size"], job["channels"], job["repeats"]
    dims = ("NHWC", "HWIO", "NHWC")
    same = ((1, 1), (1, 1))
    keys = jax.random.split(jax.random.key(0), 8)
    x = jax.nn.relu(jax.random.normal(keys[0], (1, s, s, c)))
    kernels = [jax.random.normal(k, (3, 3, c, c)) / (3.0 * c ** 0.5) for k in keys[1:5]]

    def lax_conv(x, k, pad=same):
        return lax.conv_general_dilated(x, k, (1, 1), pad, dimension_numbers=dims)

    def stack(conv):  # four conv+relu layers, loss = sum of squares
        def loss(x):
            for k in kernels:
                x = jax.nn.relu(conv(x, k))
            return jnp.sum(x * x)
        return loss

    def in_loop(loss):
        return lambda x: lax.fori_loop(0, 4, lambda i, y: y - 1e-6 * jax.grad(loss)(y), x)

    def lax_reflect(x, k):
        return lax_conv(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect"), k, "VALID")

    def lax_pool(x):
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

    def lax_gram(f):
        f = f.reshape(f.shape[0], -1, f.shape[-1])
        return jnp.einsum("nmi,nmj->nij", f, f)

    bias = {"bias": jnp.zeros((c,))}
    kernel = kernels[0]
    cases = [
        ("conv stack, image gradient, 4 steps in fori_loop", in_loop(stack(lambda x, k: vgg.conv2d(x, k, same))),
         in_loop(stack(lax_conv)), (x,)),
        ("conv stack, image gradient, one step", jax.grad(stack(lambda x, k: vgg.conv2d(x, k, same))),
         jax.grad(stack(lax_conv)), (x,)),
        ("reflection-padded conv, forward", lambda x: vgg.conv_layer(x, {"kernel": kernel, **bias}, "reflect"),
         lambda x: lax_reflect(x, kernel), (x,)),
        ("conv kernel gradient", jax.grad(lambda k, x: jnp.sum(vgg.conv2d(x, k, same) ** 2)),
         jax.grad(lambda k, x: jnp.sum(lax_conv(x, k) ** 2)), (kernel, x)),
        ("max pool, gradient", jax.grad(lambda x: jnp.sum(vgg.max_pool(x) ** 2)),
         jax.grad(lambda x: jnp.sum(lax_pool(x) ** 2)), (x,)),
        ("Gram matrix, gradient", jax.grad(lambda f: jnp.sum(losses.gram(f) ** 2)),
         jax.grad(lambda f: jnp.sum(lax_gram(f) ** 2)), (x,)),
    ]
    rows = []
    for name, ours, default, args in cases:
        fns = {"ours": jax.jit(ours), "default": jax.jit(default)}
        outs = {which: jax.block_until_ready(fn(*args)) for which, fn in fns.items()}  # compiles
        times: dict[str, list[float]] = {}
        for _ in range(reps):  # interleaved
            for which, fn in fns.items():
                t0 = time.perf_counter()
                jax.block_until_ready(fn(*args))
                times.setdefault(which, []).append(time.perf_counter() - t0)
        a, b = outs["ours"], outs["default"]
        diff = float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-30))
        rows.append({"op": name, "shape": [1, s, s, c], "ours_s": _median(times["ours"]),
                     "default_s": _median(times["default"]),
                     "ratio": _ratio(_median(times["ours"]), _median(times["default"])), "max_rel_diff": diff})
    return {"rows": rows}


WORKERS = {"machine": work_machine, "gatys": work_gatys, "gatys-memory": work_gatys_memory,
           "torch-gatys-memory": work_torch_gatys_memory, "fidelity": work_fidelity, "adain": work_adain,
           "memory-static": work_memory_static, "gatys-large": work_gatys_large,
           "train": work_train, "ops": work_ops, "video": work_video}


def worker_main(job_text: str) -> int:
    job = json.loads(job_text)
    if job.get("widths"):
        job["widths"] = {int(k): int(v) for k, v in job["widths"].items()}
    # torch_reference.py sits next to this file.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    result = WORKERS[job["kind"]](job)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


# ================================================================================================
# Parent side: plans the jobs, runs them one at a time, assembles and saves the JSON.


def run_job(job: dict, log, cache_dir: str | None = None, timeout: float | None = None) -> dict:
    """Runs one worker subprocess; returns its result, or ``{"error": ...}`` if it failed.

    With ``cache_dir`` the workers share JAX's persistent compilation cache, so a memory run of a
    configuration that was timed before loads its programs instead of compiling them again.
    """
    env = dict(os.environ)
    if cache_dir:
        env.update(JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)],
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"  {job['kind']} {_describe(job)} stopped at its time box of {timeout:.0f}s")
        return {"error": f"timed out after {timeout:.0f}s", "job": job}
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        log(f"  {job['kind']} failed after {wall:.0f}s: {tail}")
        return {"error": tail, "job": job}
    log(f"  {job['kind']} {_describe(job)} done in {wall:.0f}s (load {os.getloadavg()[0]:.1f})")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def _describe(job: dict) -> str:
    keys = ("size", "sizes", "height", "width", "optimizer", "remat", "dtype", "tile_size", "crop", "batch")
    return " ".join(f"{k}={job[k]}" for k in keys if k in job)


def _first_reaching(losses, target):
    return next((i for i, v in enumerate(losses) if v <= target), None)


def assemble_gatys(timing: dict, memory: dict, torch_memory: dict) -> list[dict]:
    """One entry per (size, optimizer) with its loss curve, torch results and ratios, peak memory."""
    entries = []
    torch_runs = timing.get("torch", {})
    for run in timing["runs"]:
        e = {"size": timing["size"], "optimizer": run["optimizer"], "chunk": timing["chunk"],
             "iterations": run["iterations"], "s_per_iter": run["s_per_iter"], "s_per_eval": timing["eval"]["jax_s"],
             "evaluations": run.get("evaluations"), "evals_per_iter": run["evals_per_iter"], "compile_s": run["compile_s"],
             "recompiles_in_timed_run": run["recompiles_in_timed_run"],
             "recompiling_chunks_s": run.get("recompiling_chunks_s", []), "final_loss": run["final_loss"],
             "losses": run["losses"]}
        mem = memory.get((timing["size"], run["optimizer"]), {})
        e["peak_rss_mb"] = mem.get("peak_rss_mb")
        e["device_peak_bytes"] = mem.get("device_peak_bytes")
        e["estimate_bytes"] = mem.get("estimate_bytes")
        e["timing_process_peak_rss_mb"] = timing.get("process_peak_rss_mb")
        if torch_runs:
            e["torch"] = {}
            for variant, t in torch_runs.items():
                if (variant == "adam") != (run["optimizer"] == "adam"):
                    continue
                e["torch"][variant] = {
                    "s_per_iter": t["s_per_iter"], "s_per_eval": t["s_per_eval"], "evals": t["evals"],
                    "evals_per_iter": t["evals_per_iter"], "final_loss": t["final_loss"], "losses": t["losses"],
                    "interleaved": variant in run["torch_partners"],
                    "peak_rss_mb": torch_memory.get((timing["size"], variant), {}).get("peak_rss_mb"),
                }
            ref = "adam" if run["optimizer"] == "adam" else "lbfgs"
            if ref in torch_runs:
                e["ratio_s_per_iter"] = _ratio(run["s_per_iter"], torch_runs[ref]["s_per_iter"])
                e["ratio_final_loss"] = _ratio(run["final_loss"], torch_runs[ref]["final_loss"])
            if "lbfgs-strong-wolfe" in torch_runs and run["optimizer"] != "adam":
                e["ratio_s_per_iter_vs_strong_wolfe"] = _ratio(run["s_per_iter"],
                                                               torch_runs["lbfgs-strong-wolfe"]["s_per_iter"])
            e["ratio_s_per_eval"] = timing["eval"].get("ratio")
        entries.append(e)
    return entries


def apply_targets(entries: list[dict], target_loss: float | None = None) -> None:
    """Sets the target loss per size and, for every run, the iterations and seconds to reach it.

    Default target: the largest final L-BFGS loss at that size (JAX and torch), so every L-BFGS
    run reaches it. Seconds exclude compilation (iterations times the steady-state s/iter).
    """
    for size in {e["size"] for e in entries}:
        here = [e for e in entries if e["size"] == size]
        finals = [e["final_loss"] for e in here if e["optimizer"] in LBFGS_OPTIMIZERS]
        finals += [t["final_loss"] for e in here for v, t in e.get("torch", {}).items() if v != "adam"]
        target = target_loss if target_loss is not None else (max(finals) if finals else None)
        for run in [e for e in here] + [t for e in here for t in e.get("torch", {}).values()]:
            if "losses" not in run:  # an entry of an older result file: keep what it has
                continue
            k = _first_reaching(run["losses"], target) if target is not None else None
            run["iters_to_target"] = k
            run["s_to_target"] = None if k is None or run["s_per_iter"] is None else k * run["s_per_iter"]
        for e in here:
            e["target_loss"] = target


MERGE_KEYS = {"gatys": ("size", "optimizer"), "gatys_eval": ("size",), "chunks": ("size", "chunk"),
              "adain": ("size", "batch"), "train": ("crop", "batch"), "ops": ("op",), "video": ("height", "batch")}


def merge_results(base: dict, new: dict) -> dict:
    """``base`` with the entries of ``new`` added, replacing those with the same key (e.g. size, optimizer)."""
    merged = json.loads(json.dumps(base))
    for section, keys in MERGE_KEYS.items():
        fresh = {tuple(e.get(k) for k in keys): e for e in new.get(section, [])}
        kept = [e for e in merged.get(section, []) if tuple(e.get(k) for k in keys) not in fresh]
        merged[section] = sorted(kept + list(fresh.values()), key=lambda e: tuple(e.get(k) or 0 for k in keys))
    for key, value in new.get("memory", {}).items():
        if value:
            merged.setdefault("memory", {})[key] = value
    merged["errors"] = merged.get("errors", []) + new.get("errors", [])
    # The machine of each merged run: a later section may come from another host than the base file.
    merged.setdefault("merged_runs", []).append(
        {"settings": new["settings"], "loadavg_start": new["machine"].get("loadavg_start"),
         "loadavg_end": new["machine"].get("loadavg_end"), "wall_s": new.get("wall_s"),
         "cpu": new["machine"].get("cpu"), "cpu_count": new["machine"].get("cpu_count"),
         "versions": new["machine"].get("versions")})
    return merged


def _variant_name(remat: bool, dtype: str) -> str:
    return f"{'remat' if remat else 'no-remat'}/{dtype}"


def fit_memory(scan: list[dict], budgets_gib, key=None) -> dict:
    """Least-squares peak = a + b * pixels per variant; the largest square side within each budget.

    ``key(row)`` gives a row's peak bytes; default: the device peak, else the peak RSS.
    """
    key = key or (lambda r: r["device_peak_bytes"] or r["peak_rss_mb"] * 2**20)
    fits = {}
    for remat, dtype in MEMORY_VARIANTS:
        name = _variant_name(remat, dtype)
        pts = [(r["size"] ** 2, key(r)) for r in scan
               if "error" not in r and r["remat"] == remat and r["dtype"] == dtype]
        if len({p for p, _ in pts}) < 2:
            continue
        n = len(pts)
        mx, my = sum(p for p, _ in pts) / n, sum(m for _, m in pts) / n
        b = sum((p - mx) * (m - my) for p, m in pts) / sum((p - mx) ** 2 for p, _ in pts)
        a = my - b * mx
        largest = {}
        for gib in budgets_gib:
            room = gib * 2**30 - a
            largest[f"{gib:g}"] = int(math.sqrt(room / b)) if b > 0 and room > 0 else None
        fits[name] = {"bytes_fixed": a, "bytes_per_pixel": b, "largest_side": largest,
                      "points": [{"pixels": p, "peak_bytes": m} for p, m in pts]}
    return fits


def check_goals(result: dict) -> list[dict]:
    goals = []

    def add(name, value, where):
        if value is None:
            return
        if name in GOALS_AT_LEAST:
            goals.append({"goal": name, "where": where, "value": value, "min": GOALS_AT_LEAST[name],
                          "met": value >= GOALS_AT_LEAST[name]})
        else:
            goals.append({"goal": name, "where": where, "value": value, "max": GOALS[name],
                          "met": value <= GOALS[name]})

    for e in result["gatys"]:
        if e.get("optimizer") in LBFGS_OPTIMIZERS:
            where = f"{e['size']}px {e['optimizer']}"
            add("gatys_s_per_iter", e.get("ratio_s_per_iter"), where)
            add("gatys_final_loss", e.get("ratio_final_loss"), where)
    for r in result["adain"]:
        add("adain_latency", r.get("ratio_latency"), f"{r.get('size')}px batch {r.get('batch')}")
    for r in result["train"]:
        add("train_step", r.get("ratio_step"), f"{r.get('crop')}px batch {r.get('batch')}")
    for r in result.get("video", []):
        add("video_frames_per_s", r.get("ratio_frames_per_s"), f"{r.get('height')}px frames batch {r.get('batch')}")
    return goals


def plan(args) -> dict:
    """The workloads: defaults per backend, --quick, then explicit flags override."""
    gpu = args.backend not in (None, "cpu")
    p = {
        "sizes": [512, 1024] if gpu else [256, 512], "iterations": 20 if gpu else 8, "chunk": 10 if gpu else 4,
        "optimizers": list(GATYS_OPTIMIZERS), "chunks": [1, 10] if gpu else [1, 4],
        "chunk_iterations": 10 if gpu else 4, "chunk_repeats": 1, "eval_repeats": 5 if gpu else 3,
        "adain_sizes": [256, 512], "adain_batches": [1, 8], "repeats": 5 if gpu else 3,
        "train_crop": 256, "train_batch": 8, "train_steps": 5 if gpu else 3,
        "ops_size": 256 if gpu else 128, "ops_channels": 256 if gpu else 128,
        "memory_sizes": [512, 1024] if gpu else [128, 256], "memory_iterations": 1,
        "memory_static_sizes": [512, 1024, 2048],
        # CPU compiles are slow; Adam's program is the smallest and its peak memory differs from
        # L-BFGS's only by the history (2 * history_size image-sized vectors).
        "memory_optimizer": "lbfgs" if gpu else "adam",
        "memory_variants": [list(v) for v in MEMORY_VARIANTS], "fidelity_size": 256, "widths": None,
        "budgets_gib": [4, 16, 80], "torch_threads": os.cpu_count(),
        # Clips of max(video_batches) frames, interleaved with PyTorch clip by clip.
        "video_heights": [256, 512], "video_batches": [1, 8], "video_frames": 24,
        # Full VGG-19 at 512 px takes several seconds per evaluation on a CPU: few iterations there.
        "size_overrides": {} if gpu else {512: {"iterations": 3, "optimizers": ["lbfgs", "optax-lbfgs"],
                                                             "eval_repeats": 2}},
    }
    if args.quick:
        # Compile time dominates tiny problems: one small program per section, no memory scan.
        p.update(sizes=[32], iterations=2, chunk=1, optimizers=["adam"], chunks=[], eval_repeats=1,
                 adain_sizes=[32], adain_batches=[1], repeats=1, train_crop=32, train_batch=2, train_steps=1,
                 ops_size=16, ops_channels=8,
                 memory_sizes=[], memory_static_sizes=[], memory_iterations=1, fidelity_size=None,
                 widths=QUICK_WIDTHS, video_heights=[32], video_batches=[1, 2], video_frames=4,
                 size_overrides={}, memory_variants=[])
    for key in ("sizes", "iterations", "chunk", "optimizers", "chunks", "chunk_iterations", "chunk_repeats",
                "eval_repeats", "adain_sizes", "adain_batches", "repeats", "train_crop", "train_batch",
                "train_steps", "memory_sizes", "memory_static_sizes", "memory_iterations", "memory_optimizer",
                "fidelity_size",
                "budgets_gib", "torch_threads", "video_heights", "video_batches", "video_frames"):
        value = getattr(args, key)
        if value is not None:
            p[key] = list(value) if isinstance(value, tuple) else value
            for overrides in p["size_overrides"].values():  # an explicit flag wins everywhere
                overrides.pop(key, None)
    p["sections"] = list(args.only or (QUICK_SECTIONS if args.quick else SECTIONS))
    return p


def _at_size(p: dict, size: int, key: str):
    return p["size_overrides"].get(size, {}).get(key, p[key])


def run_benchmark(args, machine: dict, log) -> dict:
    """Runs the planned jobs one at a time, saving ``args.out`` after each section."""
    args.backend = machine["backend"]
    p = plan(args)
    torch_on = args.compare_torch
    machine["loadavg_start"] = list(os.getloadavg())
    result = {"schema": SCHEMA_VERSION, "machine": machine, "settings": {**p, "compare_torch": torch_on},
              "gatys": [], "gatys_eval": [], "chunks": [], "adain": [], "train": [], "video": [], "memory": {},
              "errors": []}
    common = {"widths": p["widths"], "torch_threads": p["torch_threads"]}
    t_start = time.perf_counter()

    def save():
        machine["loadavg_end"] = list(os.getloadavg())
        result["wall_s"] = time.perf_counter() - t_start
        full = merge_results(args.merge_base, result) if args.merge_base else result
        apply_targets(full["gatys"], args.target_loss)
        full["goals"] = check_goals(full)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        files.atomic_write_text(args.out, json.dumps(full, indent=1) + "\n")
        return full

    def job(**kw):
        r = run_job({**common, **kw}, log, args.cache_dir)
        if "error" in r:
            result["errors"].append(r)
        return r

    if "gatys" in p["sections"]:
        for i, size in enumerate(p["sizes"]):
            iterations = _at_size(p, size, "iterations")
            optimizers = _at_size(p, size, "optimizers")
            log(f"gatys {size}px, {iterations} iterations, {', '.join(optimizers)}")
            timing = job(kind="gatys", size=size, iterations=iterations, chunk=p["chunk"],
                         optimizers=optimizers, torch=torch_on, eval_repeats=_at_size(p, size, "eval_repeats"),
                         chunks=p["chunks"] if i == 0 else [], chunk_iterations=p["chunk_iterations"],
                         chunk_repeats=p["chunk_repeats"], targets_timing=i == 0)
            if "error" in timing:
                continue
            memory, torch_memory = {}, {}
            if "memory" in p["sections"]:
                for optimizer in optimizers:
                    # The timing run's chunk length: the same programs, loaded from the compile cache.
                    m = job(kind="gatys-memory", size=size, optimizer=optimizer, iterations=p["memory_iterations"],
                            chunk=p["chunk"])
                    memory[(size, optimizer)] = m
                    if optimizer == p["memory_optimizer"] and "error" not in m:  # a float32 point of the scan
                        result["memory"].setdefault("scan", []).append(m)
                if torch_on:
                    for variant in timing["torch"]:
                        torch_memory[(size, variant)] = job(kind="torch-gatys-memory", size=size,
                                                            optimizer=variant, iterations=p["memory_iterations"])
            result["gatys"] += assemble_gatys(timing, memory, torch_memory)
            result["gatys_eval"].append({"size": size, "targets": timing["targets"], **timing["eval"]})
            result["chunks"] += [{"size": size, **c} for c in timing["chunks"]]
            save()

    if "memory" in p["sections"]:
        log("memory: remat and bfloat16 against image size")
        done = {(r["size"], r["remat"], r["dtype"]) for r in result["memory"].get("scan", [])
                if r["optimizer"] == p["memory_optimizer"]}
        for size in p["memory_sizes"]:
            for remat, dtype in p["memory_variants"]:
                if (size, remat, dtype) in done:
                    continue
                m = job(kind="gatys-memory", size=size, optimizer=p["memory_optimizer"],
                        iterations=p["memory_iterations"], chunk=p["chunk"], remat=remat, dtype=dtype)
                if "error" not in m:
                    result["memory"].setdefault("scan", []).append(m)
        scan = [r for r in result["memory"].get("scan", []) if r["size"] in p["memory_sizes"]
                and r["optimizer"] == p["memory_optimizer"]]
        result["memory"]["scan"] = scan
        result["memory"]["fit"] = fit_memory(scan, p["budgets_gib"])
        base = {(r["size"]): r for r in scan if not r["remat"] and r["dtype"] == "float32"}
        for r in scan:
            ref = base.get(r["size"])
            if ref is not None:
                r["final_loss_rel_diff_vs_f32"] = _rel(r["final_loss"], ref["final_loss"])
                r["s_per_iter_ratio_vs_f32"] = _ratio(r["s_per_iter"], ref["s_per_iter"])
        if p["memory_static_sizes"]:
            static = job(kind="memory-static", sizes=p["memory_static_sizes"], variants=p["memory_variants"],
                         iterations=1)
            if "error" not in static:
                result["memory"]["static"] = static["rows"]
                result["memory"]["static_fit"] = fit_memory(static["rows"], p["budgets_gib"],
                                                            key=lambda r: r["peak_bytes"])
        if p["fidelity_size"]:
            fid = job(kind="fidelity", size=p["fidelity_size"], iterations=1)
            if "error" not in fid:
                result["memory"]["fidelity"] = fid
        save()

    w = p["widths"]
    adain_widths = {k: w[k] for k in (1, 2, 3, 4)} if w else None  # the encoder stops at relu4_1
    if "adain" in p["sections"]:
        log("adain stylization")
        r = job(kind="adain", sizes=p["adain_sizes"], batches=p["adain_batches"], repeats=p["repeats"],
                torch=torch_on, widths=adain_widths)
        if "error" not in r:
            result["adain"] = r["rows"]
            for row in result["adain"]:
                row["peak_rss_mb_process"] = r["peak_rss_mb"]
        save()

    if "train" in p["sections"]:
        log("adain training step")
        r = job(kind="train", crop=p["train_crop"], batch=p["train_batch"], steps=p["train_steps"],
                torch=torch_on, widths=adain_widths)
        if "error" not in r:
            result["train"] = [r]
        save()

    if "ops" in p["sections"]:
        log("ops: custom-VJP building blocks against JAX's default rules")
        r = job(kind="ops", size=p["ops_size"], channels=p["ops_channels"], repeats=p["repeats"])
        if "error" not in r:
            result["ops"] = r["rows"]
        save()

    if "video" in p["sections"]:
        log(f"video: AdaIN frames/s, {p['video_frames']} frames per height")
        r = job(kind="video", heights=p["video_heights"], batches=p["video_batches"], frames=p["video_frames"],
                torch=torch_on, widths=adain_widths)
        if "error" not in r:
            result["video"] = r["rows"]
            for row in result["video"]:
                row["peak_rss_mb_process"] = r["peak_rss_mb"]
        save()
    return save()


# ================================================================================================
# The GPU suite: one command for a lent GPU (15 minutes of device time in all, no network).


def gpu_plan(smoke: bool) -> dict:
    """Workloads and time boxes (seconds) of ``--suite gpu``; ``--smoke``: the same code paths, tiny, on a CPU."""
    if smoke:
        return {"budget_s": 300, "widths": QUICK_WIDTHS, "sizes": [32], "dtypes": ["float32", "bfloat16"],
                # Adam: the smallest program to compile; the optimizer is only a config field here.
                "optimizers": ["adam"], "large_optimizer": "adam", "iterations": 2, "chunk": 1, "eval_repeats": 1,
                "adain_size": 32, "adain_batches": [1, 2], "repeats": 1,
                "large": [40, 56], "large_static": [[40, 56]], "large_iterations": 2, "large_tile": 32,
                "static_variants": [[False, "float32"], [True, "bfloat16"]],
                "train_crop": 32, "train_batches": [2], "train_steps": 1,
                "boxes": {"gatys": 120, "adain": 60, "static": 60, "large": 60, "train": 60}}
    return {"budget_s": 450, "widths": None, "sizes": [512, 1024], "dtypes": ["float32", "bfloat16"],
            "optimizers": ["optax-lbfgs", "lbfgs"], "large_optimizer": "optax-lbfgs", "iterations": 10, "chunk": 5,
            "eval_repeats": 5, "static_variants": [list(v) for v in MEMORY_VARIANTS],
            "adain_size": 512, "adain_batches": [1, 8, 32], "repeats": 5,
            "large": [2160, 3840], "large_static": [[2160, 3840], 4096, 2048], "large_iterations": 3,
            "large_tile": 1024, "train_crop": 256, "train_batches": [8, 16, 32], "train_steps": 5,
            "boxes": {"gatys": 75, "adain": 45, "static": 45, "large": 35, "train": 30}}


# Real runs at the large size: the plain program first, then what cuts memory.
LARGE_VARIANTS = ({"remat": False, "dtype": "float32"}, {"remat": True, "dtype": "bfloat16"},
                  {"remat": False, "dtype": "float32", "tiled": True})


def run_gpu_suite(args, machine: dict, log) -> dict:
    """Runs ``--suite gpu``: each job time-boxed in its own process, the JSON saved after each section.

    A failing or timed-out job records ``{"error": ...}`` in ``errors`` and the suite goes on; no job
    starts past the overall budget (recorded as skipped).
    """
    p = gpu_plan(args.smoke)
    torch_on = args.compare_torch or (not args.no_torch and importlib.util.find_spec("torch") is not None)
    result = {"schema": SCHEMA_VERSION, "suite": "gpu", "smoke": args.smoke, "machine": machine,
              "settings": {**p, "compare_torch": torch_on}, "gatys": [], "adain": [], "largest": {},
              "train": [], "errors": [], "skipped": []}
    common = {"widths": p["widths"], "torch_threads": os.cpu_count()}
    t_start = time.perf_counter()

    def save():
        result["wall_s"] = time.perf_counter() - t_start
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        files.atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")

    def job(box, **kw):
        left = p["budget_s"] - (time.perf_counter() - t_start)
        if left < 5:
            result["skipped"].append({"kind": kw["kind"], "job": _describe(kw), "reason": "suite budget spent"})
            return {"error": "skipped"}
        r = run_job({**common, **kw}, log, args.cache_dir, timeout=min(box, left))
        if "error" in r:
            result["errors"].append(r)
        return r

    save()
    for size in p["sizes"]:
        for dtype in p["dtypes"]:
            log(f"gatys {size}px {dtype}")
            t = job(p["boxes"]["gatys"], kind="gatys", size=size, dtype=dtype, iterations=p["iterations"],
                    chunk=p["chunk"], optimizers=p["optimizers"], eval_repeats=p["eval_repeats"],
                    torch=torch_on and dtype == "float32", chunks=[], chunk_iterations=1, chunk_repeats=1)
            if "error" not in t:
                for run in t["runs"]:
                    row = {"size": size, "dtype": dtype, **{k: run[k] for k in (
                        "optimizer", "s_per_iter", "compile_s", "final_loss", "iterations", "evaluations",
                        "evals_per_iter")}}
                    torch_lbfgs = t["torch"].get("lbfgs")
                    if torch_lbfgs:
                        row["torch_s_per_iter"] = torch_lbfgs["s_per_iter"]
                        row["ratio_vs_torch"] = _ratio(run["s_per_iter"], torch_lbfgs["s_per_iter"])
                    result["gatys"].append(row)
            save()

    log(f"adain {p['adain_size']}px")
    a = job(p["boxes"]["adain"], kind="adain", sizes=[p["adain_size"]], batches=p["adain_batches"],
            repeats=p["repeats"], torch=torch_on, widths=_adain_widths(p["widths"]))
    if "error" not in a:
        result["adain"] = a["rows"]
    save()

    h, w = p["large"]
    log(f"largest image: XLA's memory plan, then real runs at {h}x{w}")
    static = job(p["boxes"]["static"], kind="memory-static", sizes=p["large_static"],
                 variants=p["static_variants"], iterations=1)
    if "error" not in static:
        result["largest"]["static"] = static["rows"]
    save()
    runs = result["largest"].setdefault("runs", [])
    for variant in LARGE_VARIANTS:
        r = job(p["boxes"]["large"], kind="gatys-large", height=h, width=w, optimizer=p["large_optimizer"],
                iterations=p["large_iterations"], chunk=1, remat=variant["remat"], dtype=variant["dtype"],
                tile_size=p["large_tile"] if variant.get("tiled") else None)
        runs.append(r if "error" not in r else {**variant, "height": h, "width": w, "error": r["error"]})
        save()

    for batch in p["train_batches"]:
        log(f"training step, batch {batch}")
        r = job(p["boxes"]["train"], kind="train", crop=p["train_crop"], batch=batch, steps=p["train_steps"],
                torch=torch_on, widths=_adain_widths(p["widths"]))
        if "error" not in r:
            result["train"].append(r)
        save()
    save()
    return result


def _adain_widths(widths):
    return {k: widths[k] for k in (1, 2, 3, 4)} if widths else None  # the encoder stops at relu4_1


def render_gpu_markdown(result: dict) -> str:
    """The tables of a ``--suite gpu`` result."""
    m = result["machine"]
    lines = [f"### GPU: {m.get('device_kind')} (jax {m.get('versions', {}).get('jax')})", ""]
    lines += _table(["size", "dtype", "optimizer", "ms/iteration", "PyTorch ms/iteration", "JAX/PyTorch",
                     "compile s", "final loss"],
                    [[r["size"], r["dtype"], r["optimizer"], _fmt(_ms(r.get("s_per_iter"))),
                      _fmt(_ms(r.get("torch_s_per_iter"))), _fmt(r.get("ratio_vs_torch")), _fmt(r.get("compile_s")),
                      _fmt(r.get("final_loss"))] for r in result["gatys"]])
    lines += [""] + _table(["AdaIN size", "batch", "images/s", "PyTorch images/s"],
                           [[r["size"], r["batch"], _fmt(r.get("images_per_s")),
                             _fmt(r.get("torch", {}).get("images_per_s"))] for r in result["adain"]])
    static = result["largest"].get("static", [])
    lines += [""] + _table(["plan size", "remat", "dtype", "XLA plan GiB"],
                           [[s["size"] if isinstance(s["size"], int) else "x".join(map(str, s["size"])),
                             s["remat"], s["dtype"], _fmt(s["peak_bytes"] / 2**30)] for s in static])
    lines += [""] + _table(["run", "remat", "dtype", "tile", "s/iteration", "device peak GiB", "result"],
                           [[f"{r.get('height')}x{r.get('width')}", r.get("remat"), r.get("dtype"),
                             r.get("tile_size") or ("yes" if r.get("tiled") else "-"), _fmt(r.get("s_per_iter")),
                             _fmt((r.get("device_peak_bytes") or 0) / 2**30 or None), r.get("error", "ok")]
                            for r in result["largest"].get("runs", [])])
    lines += [""] + _table(["train crop", "batch", "images/s", "PyTorch images/s"],
                           [[r["crop"], r["batch"], _fmt(r["batch"] / r["step_s"]),
                             _fmt(r.get("torch", {}).get("images_per_s"))] for r in result["train"]])
    if result["errors"] or result.get("skipped"):
        lines += ["", f"{len(result['errors'])} failed job(s), {len(result.get('skipped', []))} skipped"]
    return "\n".join(lines) + "\n"


def _ms(seconds):
    return None if seconds is None else 1000 * seconds


# ================================================================================================
# Markdown


def _fmt(v, spec=".3g"):
    if v is None:
        return "–"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def _table(header, rows) -> list[str]:
    """Markdown table lines: the header, its separator, one line per row (cells already formatted)."""
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def render_markdown(result: dict) -> str:
    """The README performance table: machine, versions, Gatys, AdaIN, training, memory, goals."""
    m = result["machine"]
    v = m.get("versions", {})
    lines = ["### Performance", ""]
    vers = ", ".join(f"{k} {v[k]}" for k in VERSIONED if v.get(k))
    load = m.get("loadavg_start")
    lines += [f"Machine: {m.get('cpu') or m.get('platform')}, {m.get('cpu_count')} cores, backend "
              f"`{m.get('backend')}` ({m.get('device_kind')}); {vers}. Load average at start: "
              f"{_fmt(load[0], '.1f') if load else '–'}. "
              + ("Narrow random networks (--quick). " if result.get("settings", {}).get("widths")
                 else "Random full-width VGG-19 / AdaIN weights. ")
              + "Ratios are JAX / PyTorch measured interleaved in one process (lower is better).", ""]
    for run in result.get("merged_runs", []):
        if run.get("cpu") and (run["cpu"], run.get("cpu_count")) != (m.get("cpu"), m.get("cpu_count")):
            start = run.get("loadavg_start")
            lines += [f"Merged later from another machine: {', '.join(run['settings'].get('sections', []))} on "
                      f"{run['cpu']}, {run.get('cpu_count')} cores, load average at start "
                      f"{_fmt(start[0], '.1f') if start else '–'}.", ""]
    if result.get("gatys"):
        lines += ["Gatys (`gatys.run`, L-BFGS history 10): seconds per iteration and per evaluation, compile "
                  "seconds, peak RSS, final loss after equal iterations.", ""]
        rows = []
        for e in result["gatys"]:
            ref = e.get("torch", {}).get("adam" if e["optimizer"] == "adam" else "lbfgs", {})
            rows.append((e["size"], e["optimizer"], e["iterations"], _fmt(e["s_per_iter"]), _fmt(e["s_per_eval"]),
                         _fmt(e["evals_per_iter"], ".2f"), _fmt(e["compile_s"], ".1f"),
                         e.get("recompiles_in_timed_run", "–"), _fmt(e.get("peak_rss_mb"), ".0f"),
                         _fmt(e["final_loss"], ".4g"), _fmt(ref.get("s_per_iter")),
                         _fmt(e.get("ratio_s_per_iter"), ".2f"), _fmt(e.get("ratio_final_loss"), ".2f")))
        lines += _table(("size", "optimizer", "iters", "s/iter", "s/eval", "evals/iter", "compile s", "recompiles",
                         "peak MB", "final loss", "torch s/iter", "ratio s/iter", "ratio final loss"), rows)
        torch_rows: dict[tuple, dict] = {}
        for e in result["gatys"]:  # one row per (size, variant), from the first entry that has it
            for k, t in e.get("torch", {}).items():
                torch_rows.setdefault((e["size"], k), t)
        if torch_rows:
            lines += ["", "PyTorch references (`torch.optim.LBFGS(lr=1, max_iter=1)` per iteration, Adam lr 0.02):",
                      ""]
            lines += _table(("size", "torch optimizer", "s/iter", "s/eval", "evals/iter", "final loss",
                             "iters to target", "s to target"),
                            [(size, k, _fmt(t["s_per_iter"]), _fmt(t["s_per_eval"]), _fmt(t["evals_per_iter"], ".2f"),
                              _fmt(t["final_loss"], ".4g"), _fmt(t.get("iters_to_target")),
                              _fmt(t.get("s_to_target"), ".1f")) for (size, k), t in torch_rows.items()])
        lines += ["", "Time to the target loss (the largest final L-BFGS loss at that size, so every L-BFGS run "
                  "reaches it), excluding compilation:", ""]
        lines += _table(("size", "optimizer", "target", "iters", "s"),
                        [(e["size"], e["optimizer"], _fmt(e["target_loss"], ".4g"), _fmt(e["iters_to_target"]),
                          _fmt(e["s_to_target"], ".1f")) for e in result["gatys"]])
    if result.get("chunks"):
        lines += ["", "`gatys.run(chunk=N)`: 1 = Python loop of jitted steps, N > 1 = `fori_loop` on device:", ""]
        lines += _table(("size", "optimizer", "chunk", "iterations", "s/iter", "wall s"),
                        [(c["size"], c["optimizer"], c["chunk"], c["iterations"], _fmt(c["s_per_iter"]),
                          _fmt(c["wall_s"], ".1f")) for c in result["chunks"]])
    if result.get("adain"):
        lines += ["", "AdaIN stylization (`adain.stylize_jit`, encoder + AdaIN + decoder):", ""]
        lines += _table(("size", "batch", "latency s", "images/s", "compile s", "torch latency s", "ratio"),
                        [(r["size"], r["batch"], _fmt(r["latency_s"]), _fmt(r["images_per_s"]),
                          _fmt(r["compile_s"], ".1f"), _fmt(r.get("torch", {}).get("latency_s")),
                          _fmt(r.get("ratio_latency"), ".2f")) for r in result["adain"]])
    if result.get("video"):
        lines += ["", "AdaIN video (`video_style.run_adain`, what `nst-adain` runs on a clip: the style's statistics "
                  "once per clip, frames in batches) against PyTorch's frame-by-frame loop (pytorch-AdaIN "
                  "`test_video.py`, style encoded once), 16:9 frames, clips interleaved; speed-up = JAX frames/s / "
                  "PyTorch frames/s (higher is better):", ""]
        lines += _table(("height", "frame", "batch", "frames", "frames/s", "s/frame", "compile s", "torch frames/s",
                         "speed-up"),
                        [(r["height"], f"{r['width']}x{r['height']}", r["batch"], r["frames"],
                          _fmt(r["frames_per_s"]), _fmt(r["s_per_frame"]), _fmt(r["compile_s"], ".1f"),
                          _fmt(r.get("torch", {}).get("frames_per_s")), _fmt(r.get("ratio_frames_per_s"), ".2f"))
                         for r in result["video"]])
    if result.get("train"):
        lines += ["", "AdaIN decoder training step (Adam, batch of crops):", ""]
        lines += _table(("crop", "batch", "devices", "step s", "images/s/device", "compile s", "torch step s",
                         "ratio"),
                        [(r["crop"], r["batch"], r["devices"], _fmt(r["step_s"]), _fmt(r["images_per_s_per_device"]),
                          _fmt(r["compile_s"], ".1f"), _fmt(r.get("torch", {}).get("step_s")),
                          _fmt(r.get("ratio_step"), ".2f")) for r in result["train"]])
    if result.get("ops"):
        lines += ["", "Building blocks with custom VJPs against the gradients JAX derives itself (same values; "
                  "ratio = ours / default, interleaved runs):", ""]
        lines += _table(("op", "shape", "ours s", "default s", "ratio", "max rel. diff"),
                        [(r["op"], "x".join(map(str, r["shape"])), _fmt(r["ours_s"]), _fmt(r["default_s"]),
                          _fmt(r["ratio"], ".2f"), _fmt(r["max_rel_diff"], ".1e")) for r in result["ops"]])
    mem = result.get("memory", {})
    for key, title in (("static_fit", "Memory one evaluation needs (XLA buffer assignment of the compiled value "
                        "and gradient, plus the L-BFGS state), linear in pixels; largest square image per budget:"),
                       ("fit", "Peak RSS of whole runs (compiler, runtime and allocator included) fitted the same "
                        "way over the scanned sizes:")):
        fits = mem.get(key)
        if not fits or (key == "fit" and mem.get("static_fit")):
            continue  # at CPU-sized images the RSS fit is dominated by fixed costs; prefer the static one
        budgets = list(next(iter(fits.values()))["largest_side"])
        lines += ["", title, ""]
        lines += _table(("variant", "MB fixed", "KB/pixel", *(f"{b} GiB" for b in budgets)),
                        [(name, f"{f['bytes_fixed'] / 2**20:.0f}", f"{f['bytes_per_pixel'] / 1024:.2f}",
                          *(_fmt(f["largest_side"][b]) for b in budgets)) for name, f in fits.items()])
    if mem.get("scan"):
        lines += ["", "Measured runs of the memory scan (peak RSS including the compiler; one-sample time per "
                  "iteration and loss after the run, relative to float32 without remat):", ""]
        lines += _table(("size", "optimizer", "variant", "peak RSS MB", "s/iter ratio", "loss rel. diff"),
                        [(r["size"], r["optimizer"], _variant_name(r["remat"], r["dtype"]),
                          _fmt(r["peak_rss_mb"], ".0f"), _fmt(r.get("s_per_iter_ratio_vs_f32"), ".2f"),
                          _fmt(r.get("final_loss_rel_diff_vs_f32"), ".2g"))
                         for r in sorted(mem["scan"], key=lambda r: (r["size"], r["remat"], r["dtype"]))])
    fid = mem.get("fidelity")
    if fid:
        worst = max(fid["feature_rel_error_bf16"].values())
        lines += ["", f"Fidelity at {fid['size']}px: bfloat16 features (float32 Gram/loss) relative feature error "
                  f"≤ {worst:.2g}, loss error {_fmt(fid['bf16']['loss_rel_error'], '.2g')}, gradient error "
                  f"{_fmt(fid['bf16']['grad_rel_error'], '.2g')} (cosine {_fmt(fid['bf16']['grad_cosine'], '.4f')}); "
                  f"remat loss error {_fmt(fid['remat']['loss_rel_error'], '.2g')}."]
    if result.get("goals"):
        lines.append("")
        lines += _table(("goal", "where", "JAX/PyTorch", "target", "met"),
                        [(g["goal"], g["where"], f"{g['value']:.2f}",
                          f"≥ {g['min']}" if "min" in g else f"≤ {g['max']}", "yes" if g["met"] else "no")
                         for g in result["goals"]])
    return "\n".join(lines) + "\n"


# ================================================================================================
# Command line


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 0, got {text!r}")
    return values


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _optimizers(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    for n in names:
        if n not in GATYS_OPTIMIZERS:
            raise argparse.ArgumentTypeError(f"unknown optimizer {n!r}; choose from {', '.join(GATYS_OPTIMIZERS)}")
    return names


def _nonnegative(text: str) -> int:
    values = _ints(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"expected one integer >= 0, got {text!r}")
    return values[0]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python scripts/benchmark.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="JSON output (default: benchmarks/<backend>.json, or benchmarks/quick.json "
                   "with --quick)")
    p.add_argument("--markdown", metavar="JSON", help="print the README performance table of a result file and exit")
    p.add_argument("--merge", metavar="JSON", help="start from this result file: entries measured now replace "
                   "those with the same key (size, optimizer, ...), the others are kept; --out defaults to it")
    p.add_argument("--compare-torch", action="store_true", help="also run the PyTorch references (needs torch)")
    p.add_argument("--quick", action="store_true", help="tiny networks and images, JAX only unless --compare-torch")
    p.add_argument("--only", type=lambda s: tuple(x for x in s.split(",") if x), metavar="SECTIONS",
                   help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--sizes", type=_ints, help="Gatys image sizes (square, px)")
    p.add_argument("--iterations", type=_positive, help="Gatys iterations per run")
    p.add_argument("--chunk", type=_positive, help="gatys.run chunk length of the timed runs")
    p.add_argument("--chunks", type=_ints, help="chunk lengths compared at the first size (empty: skip)")
    p.add_argument("--chunk-iterations", type=_positive, help="iterations of each chunk-comparison run")
    p.add_argument("--chunk-repeats", type=_positive, help="A B rounds of the chunk comparison")
    p.add_argument("--optimizers", type=_optimizers, help=f"Gatys optimizers, from {','.join(GATYS_OPTIMIZERS)}")
    p.add_argument("--eval-repeats", type=_positive, help="timed function evaluations per framework")
    p.add_argument("--target-loss", type=float, help="Gatys loss for time-to-target (default: the largest "
                   "final L-BFGS loss at each size)")
    p.add_argument("--adain-sizes", type=_ints, help="AdaIN stylization sizes")
    p.add_argument("--adain-batches", type=_ints, help="AdaIN stylization batch sizes")
    p.add_argument("--repeats", type=_positive, help="timed repeats per AdaIN configuration")
    p.add_argument("--video-heights", type=_ints, help="AdaIN video frame heights (16:9 frames)")
    p.add_argument("--video-batches", type=_ints, help="AdaIN video batch sizes (frames per compiled call)")
    p.add_argument("--video-frames", type=_positive, help="frames stylized per height and batch size")
    p.add_argument("--train-crop", type=_positive, help="training crop size")
    p.add_argument("--train-batch", type=_positive, help="training batch size")
    p.add_argument("--train-steps", type=_positive, help="timed training steps")
    p.add_argument("--memory-sizes", type=_ints, help="sizes of the remat/bfloat16 memory scan")
    p.add_argument("--memory-iterations", type=_positive, help="iterations of each memory run")
    p.add_argument("--memory-static-sizes", type=_ints,
                   help="sizes of the compiled-program memory analysis (compile only, no run)")
    p.add_argument("--memory-optimizer", choices=GATYS_OPTIMIZERS,
                   help="optimizer of the remat/bfloat16 memory scan (default: lbfgs on accelerators, adam on CPU)")
    p.add_argument("--fidelity-size", type=_nonnegative, help="image size of the bfloat16 fidelity check (0: skip)")
    p.add_argument("--torch-threads", type=_positive, help="torch.set_num_threads (default: the CPU count)")
    p.add_argument("--budget-gib", dest="budgets_gib", type=_floats, help="memory budgets for the largest image")
    p.add_argument("--suite", choices=("gpu",), help="gpu: the one-command GPU suite (Gatys 512/1024 px float32 and "
                   "bfloat16 against PyTorch, AdaIN 512 px batches 1/8/32, the largest image incl. 3840x2160, "
                   "training batches 8/16/32) in under 8 minutes, writing benchmarks/gpu.json and gpu.md; "
                   "see scripts/gpu_wheels.sh for the wheels a device image without network needs")
    p.add_argument("--smoke", action="store_true", help="with --suite gpu: the same code paths at tiny sizes (CPU, tests)")
    p.add_argument("--no-torch", action="store_true", help="with --suite gpu: skip PyTorch even when installed")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    if args.markdown:
        try:
            result = json.loads(Path(args.markdown).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            print(f"error: cannot read {args.markdown} ({err}); pass a JSON file written by this script",
                  file=sys.stderr)
            return 2
        sys.stdout.write(render_markdown(result))
        return 0
    if args.smoke and args.suite != "gpu":
        print("error: --smoke goes with --suite gpu", file=sys.stderr)
        return 2
    if args.only and not set(args.only) <= set(SECTIONS):
        print(f"error: --only takes {', '.join(SECTIONS)}, got {','.join(args.only)}", file=sys.stderr)
        return 2
    if args.compare_torch and importlib.util.find_spec("torch") is None:
        print("error: --compare-torch needs PyTorch, which is not installed; pip install torch==2.13.0 "
              "(or the nst_jax[torch] extra), or drop --compare-torch", file=sys.stderr)
        return 2
    args.backend = None

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    args.merge_base = None
    if args.merge:
        try:
            args.merge_base = json.loads(Path(args.merge).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            print(f"error: cannot read --merge {args.merge} ({err}); pass a JSON file written by this script",
                  file=sys.stderr)
            return 2
        args.out = args.out or args.merge
    t0 = time.perf_counter()
    machine = run_job({"kind": "machine"}, log)
    if "error" in machine:
        print(f"error: a JAX worker failed to start ({machine['error']}); check the JAX installation",
              file=sys.stderr)
        return 2
    if args.suite == "gpu":
        from nst_jax import compile_cache

        args.out = args.out or str(ROOT / "benchmarks" / ("gpu-smoke.json" if args.smoke else "gpu.json"))
        # Programs compiled by one worker are loaded by the next (and by a rerun of the suite).
        cache = compile_cache.cache_path()
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
        args.cache_dir = str(cache) if cache is not None else None
        result = run_gpu_suite(args, machine, log)
        Path(args.out).with_suffix(".md").write_text(render_gpu_markdown(result), encoding="utf-8")
        log(f"wrote {args.out} in {time.perf_counter() - t0:.0f}s; {len(result['errors'])} failed job(s)")
        return 1 if result["errors"] or result["skipped"] else 0
    if args.out is None:
        args.out = str(ROOT / "benchmarks" / ("quick.json" if args.quick else f"{machine['backend']}.json"))
    with tempfile.TemporaryDirectory(prefix="nst-bench-cache-") as cache_dir:
        args.cache_dir = cache_dir
        result = run_benchmark(args, machine, log)
    new_errors = len(result["errors"]) - len((args.merge_base or {}).get("errors", []))
    log(f"wrote {args.out} in {time.perf_counter() - t0:.0f}s; {new_errors} failed job(s)")
    return 1 if new_errors else 0


if __name__ == "__main__":
    sys.exit(main())
