"""Measurements of the video paths for the README (Gatys temporal consistency, AdaIN frames/s, flicker).

Usage:
  python scripts/video_measure.py [--vgg19 PATH] [--adain-vgg PATH --decoder PATH] [--out results.json]

Without weight paths it uses the narrow test networks in tests/fixtures (numbers then describe the
method on a small network, not the quality of the real one). Clips are made from the built-in
images as in the tests: a pan, a zoom and noise on a static scene.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import _clips  # noqa: E402
from nst_jax import gatys, image, video_style, weights  # noqa: E402

FIX = ROOT / "tests" / "fixtures"


def gatys_rows(params, style, size, frames_n, iterations, video_iterations, temporal_weight):
    rows = []
    config = gatys.GatysConfig(iterations=iterations)
    h, w = size, int(size * 4 / 3)
    clips = {"pan": _clips.pan_frames(frames_n, h=h, w=w, step=2),
             "zoom": _clips.zoom_frames(frames_n, h=h, w=w),
             "noise": _clips.noise_frames(frames_n, h=h, w=w)}
    for name, frames in clips.items():
        for mode in video_style.VIDEO_MODES[::-1]:
            r = video_style.run_gatys(params, frames, style, config, mode=mode, video_iterations=video_iterations,
                                      temporal_weight=temporal_weight)
            rows.append({"clip": name, "mode": mode, "temporal_error": r.temporal_error, "style_loss": r.style_loss,
                         "seconds_per_frame": r.seconds_per_frame})
            print(rows[-1], flush=True)
    return rows


def adain_rows(vgg_params, dec, style, sizes, frames_n):
    rows = []
    for size in sizes:
        # The pan is cut from the 96-px built-in scene, then upscaled to the measured size.
        frames = [image.resize(f, height=size) for f in _clips.pan_frames(frames_n, h=48, w=64)]
        for batch in (1, 8):
            video_style.run_adain(vgg_params, dec, frames[:batch], [style], batch=batch)  # compile
            best = float("inf")
            for _ in range(3):  # best of 3: the machine may be shared
                t = time.perf_counter()
                r = video_style.run_adain(vgg_params, dec, frames, [style], batch=batch)
                best = min(best, time.perf_counter() - t)
            rows.append({"size": size, "batch": batch, "frames_per_second": r.frames / best})
            print(rows[-1], flush=True)
    return rows


def flicker_rows(vgg_params, dec, style, frames_n):
    rows = []
    for name, frames in (("noise", _clips.noise_frames(frames_n)), ("pan", _clips.pan_frames(frames_n))):
        for s in (0.0, 0.5, 0.8):
            r = video_style.run_adain(vgg_params, dec, frames, [style], smoothing=s, measure=True)
            rows.append({"clip": name, "smoothing": s, "temporal_error": r.temporal_error})
            print(rows[-1], flush=True)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vgg19", default=str(FIX / "gatys" / "vgg19_narrow.pth"))
    p.add_argument("--adain-vgg", default=str(FIX / "adain" / "vgg_normalised_narrow.pth"))
    p.add_argument("--decoder", default=str(FIX / "adain" / "decoder_narrow.pth"))
    p.add_argument("--size", type=int, default=48, help="Gatys clip height")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--video-iterations", type=int, default=50)
    p.add_argument("--temporal-weight", type=float, default=100.0)
    p.add_argument("--adain-sizes", default="128,256")
    p.add_argument("--out", default="video_measurements.json")
    a = p.parse_args()
    style = jnp.asarray(image.resize(image.load_image(image.default_style_path()), height=128))[None]
    out = {"gatys": gatys_rows(weights.load_vgg19(a.vgg19), style, a.size, a.frames, a.iterations,
                               a.video_iterations, a.temporal_weight)}
    vgg_params, dec = weights.load_adain_vgg(a.adain_vgg), weights.load_adain_decoder(a.decoder)
    out["adain_fps"] = adain_rows(vgg_params, dec, style, [int(s) for s in a.adain_sizes.split(",")], 16)
    out["adain_flicker"] = flicker_rows(vgg_params, dec, style, 12)
    pathlib.Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
