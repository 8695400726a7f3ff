"""Peak host memory of one Gatys loss-and-gradient evaluation, untiled versus tiled.

Full-width VGG-19 with random weights (memory and time do not depend on the weight values), square
random images, default layers (``relu4_2`` content, ``relu1_1``..``relu5_1`` style). Every case runs
in a fresh child process, so its peak resident set size (``ru_maxrss``) is its own. Prints one JSON
object per case and a JSON list at the end::

    python scripts/tiling_memory.py --cases untiled:512 tiled:512 untiled:1024 tiled:1024 tiled:2048
    python scripts/tiling_memory.py --cases run:1024 --iterations 1   # whole run_tiled (L-BFGS)
    python scripts/tiling_memory.py --cases xla-tiled:8192 xla-lbfgs:8192 xla-untiled:2048

``xla-*`` cases only compile and report XLA's buffer assignment (arguments, outputs, aliased
outputs, temporaries, total) for one evaluation (``xla-tiled``, ``xla-untiled``) or one L-BFGS
iteration with its history (``xla-lbfgs``, ``xla-lbfgs-untiled``; ``--optimizer`` picks the
solver); they take seconds at any size.

The L-BFGS history adds ``2 * history_size`` image-sized float32 arrays (12 bytes per pixel each)
on top of one evaluation; ``run:`` cases measure a whole :func:`nst_jax.tiling.run_tiled` including
it.

Results on a 2-core, 24 GB CPU machine (jax 0.10 CPU, style image 512 px, exact halo 80 px;
"XLA" figures come from compile-only ``xla-*`` cases, the others are measured peak RSS):

* one evaluation,  512 px: untiled 1.67 GB; tile 256: 1.41 GB.
* one evaluation, 1024 px: untiled 4.73 GB (82 s); tile 512: 2.54 GB (140 s), identical loss.
* one evaluation, 2048 / 4096 px, XLA temporaries: untiled 15.6 / 62 GB; tile 512: 1.9 / 2.4 GB.
* one evaluation, 8192 px, tile 512, XLA total: 8.4 GB (2 GB of it the relu4_2 content target).
* one L-BFGS step (line search and history included), XLA total: untiled 2048 px 18.1 GB;
  tile 512 at 4096 px 12.1 GB (jaxopt ``lbfgs``) or 8.1 GB (``optax-lbfgs``); at 8192 px jaxopt
  L-BFGS needs 27.7 GB even with history 5 (does not fit), Adam 10.8 GB.

"XLA total" is arguments + non-aliased outputs + temporaries of the compiled step (``xla-*`` cases;
the measured RSS was about 0.5-0.8 GB above XLA's figure at 512-1024 px). Times are wall seconds on
a shared, loaded machine, compilation included. The Python tile loop unrolled into the program
peaked higher (1.47 vs 1.41 GB at 512 px) and compiled longer than the rolled ``fori_loop`` that
:mod:`nst_jax.tiling` uses.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _analyze(what: str, size: int, args, params, config, weights) -> dict:
    """XLA's buffer assignment for one compiled step, without running it (compile only)."""
    import jax
    import jax.numpy as jnp

    from nst_jax import gatys, tiling

    image = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    style = jax.ShapeDtypeStruct((1, args.style_size, args.style_size, 3), jnp.float32)
    targets = jax.eval_shape(lambda c, s: gatys.compute_targets(params, c, s, config), image, style)
    offset = jax.ShapeDtypeStruct((2,), jnp.int32)
    if what == "untiled":
        fun = jax.jit(jax.value_and_grad(gatys.objective), static_argnums=4)
        lowered = fun.lower(image, params, targets, weights, config)
    elif what == "tiled":
        lowered = tiling.tiled_value_and_grad.lower(image, params, targets, weights, config, args.tile_size,
                                                    args.halo, offset)
    elif what in ("lbfgs", "lbfgs-untiled"):
        # One solver iteration (for L-BFGS: line search included, history as live arguments).
        if what == "lbfgs":
            grid = tiling.tile_grid(image.shape, config.layers, args.tile_size, args.halo)
            solver = gatys.solver_for(tiling.tiled_objective(config, grid), config)
            extra = (offset,)
        else:
            solver = gatys.solver_for(lambda x, *a: gatys.objective(x, *a, config), config)
            extra = ()
        state = jax.eval_shape(solver.init, image, params, targets, weights, *extra)
        # Donated like the driver's chunk step, so the new state reuses the old state's buffers.
        lowered = jax.jit(solver.update, donate_argnums=(0, 1)).lower(image, state, params, targets, weights,
                                                                      *extra)
    else:
        raise SystemExit(f"unknown analysis {what}")
    t0 = time.perf_counter()
    stats = lowered.compile().memory_analysis()
    mb = lambda b: round(b / 2**20)  # noqa: E731
    return {"compile_s": round(time.perf_counter() - t0, 2), "xla_argument_mb": mb(stats.argument_size_in_bytes),
            "xla_output_mb": mb(stats.output_size_in_bytes), "xla_alias_mb": mb(stats.alias_size_in_bytes),
            "xla_temp_mb": mb(stats.temp_size_in_bytes),
            # What must be resident at once: inputs, outputs that do not reuse a donated input, temporaries.
            "xla_total_mb": mb(stats.argument_size_in_bytes + stats.output_size_in_bytes
                               - stats.alias_size_in_bytes + stats.temp_size_in_bytes)}


def _child(args) -> dict:
    import jax
    import jax.numpy as jnp

    from nst_jax import gatys, tiling, vgg

    mode, size = args.case.split(":")
    size = int(size)
    config = gatys.GatysConfig(iterations=args.iterations, history_size=args.history_size,
                               remat=args.remat, optimizer=args.optimizer)
    params = jax.jit(vgg.init_params)(jax.random.key(0))
    k = jax.random.split(jax.random.key(1), 2)
    content = jax.random.uniform(k[0], (1, size, size, 3))
    style = jax.random.uniform(k[1], (1, args.style_size, args.style_size, 3))
    weights = gatys.loss_weights(config, tv=1e-4)
    out = {"case": args.case, "tile_size": args.tile_size, "halo": args.halo, "optimizer": args.optimizer,
           "remat": args.remat, "rss_after_setup_mb": round(_rss_mb())}
    t0 = time.perf_counter()
    if mode.startswith("xla-"):
        out.update(_analyze(mode[4:], size, args, params, config, weights))
    elif mode == "run":
        result = tiling.run_tiled(params, content, style, config, weights, tile_size=args.tile_size,
                                  halo=args.halo, chunk=max(args.iterations, 1))
        out["iterations"] = result.iterations
        out["loss"] = result.losses[-1]
    else:
        if mode == "untiled":
            targets = jax.jit(gatys.compute_targets, static_argnums=3)(params, content, style, config)
        else:
            targets = tiling.tiled_targets(params, content, style, config, tile_size=args.tile_size)
        jax.block_until_ready(targets)
        out["targets_s"] = round(time.perf_counter() - t0, 2)
        out["rss_after_targets_mb"] = round(_rss_mb())
        x = content
        if mode == "untiled":
            fun = jax.jit(jax.value_and_grad(gatys.objective), static_argnums=4)
            call = lambda: fun(x, params, targets, weights, config)  # noqa: E731
        else:
            call = lambda: tiling.tiled_value_and_grad(  # noqa: E731
                x, params, targets, weights, config, args.tile_size, args.halo, jnp.array((0, 0)))
        t1 = time.perf_counter()
        value, _ = jax.block_until_ready(call())
        out["first_eval_s"] = round(time.perf_counter() - t1, 2)
        if args.repeat:
            t1 = time.perf_counter()
            jax.block_until_ready(call())
            out["eval_s"] = round(time.perf_counter() - t1, 2)
        out["loss"] = float(value)
    out["total_s"] = round(time.perf_counter() - t0, 2)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["untiled:512", "tiled:512", "untiled:1024", "tiled:1024"],
                   help="MODE:SIZE; MODE: untiled, tiled (one evaluation), run (run_tiled), "
                        "xla-{tiled,untiled,lbfgs,lbfgs-untiled} (compile only)")
    p.add_argument("--tile-size", type=int, default=512)
    p.add_argument("--halo", type=int, default=None)
    p.add_argument("--style-size", type=int, default=512)
    p.add_argument("--iterations", type=int, default=1)
    p.add_argument("--history-size", type=int, default=10)
    p.add_argument("--optimizer", default="lbfgs", help="for run: and xla-lbfgs cases (any of gatys.OPTIMIZERS)")
    p.add_argument("--remat", action="store_true")
    p.add_argument("--repeat", action="store_true", help="time a second (compiled) evaluation too")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.case:
        print(json.dumps(_child(args)), flush=True)
        return 0
    results = []
    for case in args.cases:
        cmd = [sys.executable, __file__, "--case", case, "--tile-size", str(args.tile_size),
               "--style-size", str(args.style_size), "--iterations", str(args.iterations),
               "--history-size", str(args.history_size), "--optimizer", args.optimizer]
        cmd += ["--halo", str(args.halo)] if args.halo is not None else []
        cmd += ["--remat"] if args.remat else []
        cmd += ["--repeat"] if args.repeat else []
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            results.append({"case": case, "error": f"timed out after {args.timeout} s"})
            print(json.dumps(results[-1]), flush=True)
            continue
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode == 0 and lines:
            results.append(json.loads(lines[-1]))
        else:
            # A child killed for memory has no output; report how it ended.
            results.append({"case": case, "error": f"exit {proc.returncode}", "stderr": proc.stderr[-500:]})
        print(json.dumps(results[-1]), flush=True)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
