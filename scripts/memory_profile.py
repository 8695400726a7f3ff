"""Measures the peak host memory of Gatys style transfer per resolution, with and without --remat.

Each measurement runs in a fresh subprocess (peak RSS can only grow within a process): it builds a
FULL-WIDTH VGG-19 with random weights (``vgg.init_params``; the memory of activations depends on the
widths, not on the weight values), runs ``--iterations`` iterations of :func:`nst_jax.gatys.run` on
random square images, and reports its peak resident set size (compilation included), the RSS
before the optimization (Python, JAX, the parameters), XLA's temporary buffers for one loss-and-
gradient evaluation (``xla_temp_mib``: the activations kept for the backward pass, exact and free of
allocator noise) and :func:`nst_jax.memory.gatys_bytes` for comparison. The parent prints
one JSON document.

On the CPU backend the activations live in host memory, so peak RSS is the number that matters
there; on an accelerator use ``device.memory_stats()["peak_bytes_in_use"]`` instead (printed as
``device_peak_mib`` when the backend reports it).

Usage::

    python scripts/memory_profile.py --sizes 256,384,512 --iterations 2 > memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))


def _rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _child(size: int, remat: bool, iterations: int, optimizer: str) -> dict:
    import jax

    from nst_jax import gatys, memory, vgg

    params = vgg.init_params(jax.random.key(0))
    key_c, key_s = jax.random.split(jax.random.key(1))
    content = jax.random.uniform(key_c, (1, size, size, 3))
    style = jax.random.uniform(key_s, (1, size, size, 3))
    config = gatys.GatysConfig(iterations=iterations, remat=remat, optimizer=optimizer)
    jax.block_until_ready((params, content, style))
    before = _rss_mib()
    # XLA's own account of one loss-and-gradient evaluation: the buffers it needs beyond its
    # arguments and outputs are the activations kept for the backward pass (exact, no noise).
    targets = gatys.compute_targets(params, content, style, config)
    value_and_grad = jax.jit(jax.value_and_grad(gatys.objective), static_argnums=4)
    analysis = value_and_grad.lower(content, params, targets, gatys.loss_weights(config), config).compile()
    analysis = analysis.memory_analysis()
    t0 = time.perf_counter()
    result = gatys.run(params, content, style, config, chunk=max(iterations, 1))
    seconds = time.perf_counter() - t0
    out = {
        "size": size,
        "remat": remat,
        "iterations": result.iterations,
        "optimizer": optimizer,
        "peak_rss_mib": round(_rss_mib(), 1),
        "rss_before_run_mib": round(before, 1),
        "xla_temp_mib": None if analysis is None else round(analysis.temp_size_in_bytes / 2**20, 1),
        "estimate_mib": round(memory.gatys_bytes(size, size, params, config) / 2**20, 1),
        "seconds": round(seconds, 1),
        "backend": jax.default_backend(),
    }
    stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        out["device_peak_mib"] = round(stats["peak_bytes_in_use"] / 2**20, 1)
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="256,384,512", help="comma-separated square image sizes")
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--optimizer", default="lbfgs", choices=("lbfgs", "optax-lbfgs", "adam"))
    p.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per measurement")
    p.add_argument("--no-remat-comparison", action="store_true", help="measure without --remat only")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--remat", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.child is not None:
        print(json.dumps(_child(args.child, args.remat, args.iterations, args.optimizer)))
        return 0
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    rows = []
    for size in sizes:
        for remat in (False,) if args.no_remat_comparison else (False, True):
            cmd = [sys.executable, os.path.abspath(__file__), "--child", str(size), "--iterations",
                   str(args.iterations), "--optimizer", args.optimizer] + (["--remat"] if remat else [])
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                rows.append({"size": size, "remat": remat, "error": f"timed out after {args.timeout:g} s"})
                continue
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                rows.append({"size": size, "remat": remat, "error": last})
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr)
    print(json.dumps({"measurements": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
