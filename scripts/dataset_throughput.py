"""Images per second of ``nst-stylize-dataset`` vs a per-image loop of the PyTorch AdaIN reference.

Builds a synthetic content folder (random JPEGs, mixed aspect ratios 4:3, 3:4 and 1:1, the
commonest in ImageNet) and a style folder, then runs, interleaved round by round, each in its own process:

* ``jax1``: :func:`nst_jax.dataset.run` on one CPU device;
* ``jax2``: the same on two fake CPU devices (``--xla_force_host_platform_device_count=2``);
* ``torch``: the loop of ``bethgelab/stylize-datasets`` over the same files with the PyTorch
  reference (``scripts/torch_reference.py``): decode, resize, encode content and style, AdaIN,
  decode, save, one image at a time (the style is encoded again for every image, as there);
* ``torch_cached``: the same loop with each style's statistics computed once (our caching, in torch).

Every process stylizes the folder twice into fresh output folders and reports the second pass
(programs compiled, caches warm) as well as the first (``first_s``, compilation included). Weights
are random at the real widths (speed does not depend on their values). ``decode_s`` and
``stylize_s`` split a JAX pass into waiting for decoded images and running the compiled program.

Usage::

    python scripts/dataset_throughput.py --content-size 256 --count 24 --rounds 2 \\
        --torch-python /path/to/venv-with-torch/bin/python --out dataset_256.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ASPECTS = ((4, 3), (3, 4), (1, 1))


def make_folders(work: Path, count: int, styles: int, short: int, seed: int = 0) -> tuple[Path, Path]:
    """``count`` content JPEGs (short side ``short``, aspects cycling) and ``styles`` style JPEGs (512 px)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    content, style = work / "content", work / "style"
    for i in range(count):
        a, b = ASPECTS[i % len(ASPECTS)]
        w, h = (round(short * a / b), short) if a >= b else (short, round(short * b / a))
        low = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        folder = content / f"class{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC).save(folder / f"img{i:04d}.jpg", quality=90)
    style.mkdir(parents=True, exist_ok=True)
    for j in range(styles):
        low = rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)
        Image.fromarray(low).resize((614, 512), Image.Resampling.BICUBIC).save(style / f"s{j}.jpg", quality=90)
    return content, style


def _nets():
    sys.path.insert(0, str(ROOT / "scripts"))
    from benchmark import _decoder_params, _vgg_params

    return _vgg_params(None, adain_encoder=True), _decoder_params(None)


def worker_jax(args) -> dict:
    import jax

    from nst_jax import dataset

    vgg, dec = _nets()
    out = {"devices": jax.local_device_count(), "passes": []}
    for k in range(2):
        target = Path(args.work) / f"out_{args.worker}_{k}"
        shutil.rmtree(target, ignore_errors=True)
        config = dataset.DatasetConfig(str(Path(args.work) / "content"), str(Path(args.work) / "style"), str(target),
                                       content_size=args.content_size, style_size=args.style_size,
                                       batch_size=args.batch_size, num_threads=args.threads, seed=0)
        t0 = time.perf_counter()
        summary = dataset.run(config, vgg, dec)
        seconds = time.perf_counter() - t0
        out["passes"].append({"seconds": seconds, "images": summary.progress.done,
                              "images_per_s": summary.progress.done / seconds,
                              "decode_s": summary.decode_seconds, "stylize_s": summary.stylize_seconds})
    return out


def worker_torch(args, cached: bool) -> dict:
    import torch
    from PIL import Image

    sys.path.insert(0, str(ROOT / "scripts"))
    from torch_reference import AdainTorch, calc_mean_std, nchw, nhwc

    from nst_jax import adain, data, dataset

    torch.set_num_threads(args.torch_threads or len(os.sched_getaffinity(0)))
    vgg, dec = _nets()
    model = AdainTorch(vgg, dec, adain.DECODER_LAYERS)
    content_root, style_root = Path(args.work) / "content", Path(args.work) / "style"
    contents = dataset.list_files(content_root, dataset.DEFAULT_EXTENSIONS, "content")
    styles = dataset.list_files(style_root, dataset.DEFAULT_EXTENSIONS, "style")
    out = {"devices": 1, "threads": torch.get_num_threads(), "passes": []}
    for k in range(2):
        target = Path(args.work) / f"out_{args.worker}_{k}"
        shutil.rmtree(target, ignore_errors=True)
        stats: dict[str, tuple] = {}
        t0 = time.perf_counter()
        for c in contents:
            s = styles[dataset.style_index(0, c, 0, len(styles))]
            content = nchw(data.decode_and_fit((content_root / c).read_bytes(), args.content_size, 0)[None]
                           .astype(np.float32) / 255.0)
            with torch.no_grad():
                if cached:
                    if s not in stats:
                        style = nchw(dataset.load_style(style_root / s, args.style_size))
                        stats[s] = calc_mean_std(model.encode(style))
                    feat = model.encode(content)
                    c_mean, c_std = calc_mean_std(feat)
                    t = (feat - c_mean) / c_std * stats[s][1] + stats[s][0]
                    y = model.decoder(t).clamp(0.0, 1.0)
                else:
                    style = nchw(dataset.load_style(style_root / s, args.style_size))
                    y = model.stylize(content, style)
            pixels = np.round(nhwc(y)[0, :content.shape[2], :content.shape[3]] * 255.0).astype(np.uint8)
            path = target / c
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path, quality=95)
        seconds = time.perf_counter() - t0
        out["passes"].append({"seconds": seconds, "images": len(contents), "images_per_s": len(contents) / seconds})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--content-size", type=int, default=256, help="content short side (images are made at it)")
    p.add_argument("--style-size", type=int, default=512)
    p.add_argument("--count", type=int, default=24, help="content images")
    p.add_argument("--styles", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=4, help="decoding threads of the JAX run")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--runs", default="jax1,jax2,torch,torch_cached")
    p.add_argument("--torch-python", help="python of a venv with torch and nst_jax installed")
    p.add_argument("--torch-threads", type=int, default=0)
    p.add_argument("--out", help="write the results as JSON")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        result = (worker_jax(args) if args.worker.startswith("jax")
                  else worker_torch(args, cached=args.worker == "torch_cached"))
        print(json.dumps(result))
        return 0
    work = Path(tempfile.mkdtemp(prefix="nst_dataset_bench_"))
    try:
        make_folders(work, args.count, args.styles, args.content_size)
        results: dict[str, list] = {}
        runs = args.runs.split(",")
        for r in range(args.rounds):
            for name in runs:
                env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
                devices = 2 if name == "jax2" else 1
                env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
                python = args.torch_python if name.startswith("torch") else sys.executable
                if python is None:
                    continue
                cmd = [python, __file__, "--worker", name, "--work", str(work)] + [
                    f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
                    ("content_size", "style_size", "batch_size", "threads", "torch_threads")]
                done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    print(done.stderr[-3000:], file=sys.stderr)
                    return 1
                row = json.loads(done.stdout.strip().splitlines()[-1])
                results.setdefault(name, []).append(row)
                warm = row["passes"][1]
                print(f"round {r} {name:13s} {warm['images_per_s']:.3f} img/s warm, first pass "
                      f"{row['passes'][0]['seconds']:.1f} s" + (
                          f", decode wait {warm['decode_s']:.1f} s, stylize {warm['stylize_s']:.1f} s"
                          if "decode_s" in warm else ""), flush=True)
        summary = {name: float(np.median([row["passes"][1]["images_per_s"] for row in rows]))
                   for name, rows in results.items()}
        for name, rate in summary.items():
            line = f"{name:13s} median {rate:.3f} images/s"
            if "torch" in summary and name != "torch":
                line += f" ({rate / summary['torch']:.2f}x torch per-image loop)"
            print(line)
        if args.out:
            Path(args.out).write_text(json.dumps({"args": vars(args), "results": results, "median": summary},
                                                 indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
