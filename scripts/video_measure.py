"""Measurements of the video paths for the README (Gatys temporal consistency, AdaIN frames/s, flicker).

Usage:
  python scripts/video_measure.py [--vgg19 PATH] [--adain-vgg PATH --decoder PATH] [--out results.json]
                                  [--parts gatys,adain] [--interpolation lanczos3|bilinear]

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
from nst_jax import flow, gatys, image, video_style, weights  # noqa: E402

FIX = ROOT / "tests" / "fixtures"


def _temporal_errors(frames, outputs, interpolation):
    """Ruder et al.'s measure over a clip with the given warp (run_gatys reports it with bilinear)."""
    errors = []
    for t in range(1, len(frames)):
        back, fwd = flow.flows(frames[t - 1], frames[t])
        mask = flow.consistency_mask(jnp.asarray(back), jnp.asarray(fwd))
        errors.append(float(flow.temporal_error(jnp.asarray(outputs[t]), jnp.asarray(outputs[t - 1]),
                                                jnp.asarray(back), mask, interpolation)))
    return float(np.mean(errors))


def gatys_rows(params, style, size, frames_n, iterations, video_iterations, temporal_weight, interpolation):
    rows = []
    config = gatys.GatysConfig(iterations=iterations)
    h, w = size, int(size * 4 / 3)
    clips = {"pan": _clips.pan_frames(frames_n, h=h, w=w, step=2),
             "zoom": _clips.zoom_frames(frames_n, h=h, w=w),
             "noise": _clips.noise_frames(frames_n, h=h, w=w)}
    for name, frames in clips.items():
        for mode in video_style.VIDEO_MODES[::-1]:
            outs = []
            r = video_style.run_gatys(params, frames, style, config, mode=mode, video_iterations=video_iterations,
                                      temporal_weight=temporal_weight, interpolation=interpolation,
                                      on_frame=lambda i, img: outs.append(img))
            rows.append({"clip": name, "mode": mode, "temporal_error": r.temporal_error, "style_loss": r.style_loss,
                         "temporal_error_lanczos3": _temporal_errors(frames, outs, "lanczos3"),
                         "seconds_per_frame": r.seconds_per_frame})
            print(rows[-1], flush=True)
    return rows


def gatys_table(rows) -> str:
    """The README's table: per clip, TE / style of each mode and the temporal mode's ratios."""
    lines = ["| clip | independent frames TE / style | warm start TE / style | warm start + temporal loss TE / style |",
             "|---|---|---|---|"]
    names = {"pan": "pan", "zoom": "zoom", "noise": "static scene + noise"}
    for clip in dict.fromkeys(r["clip"] for r in rows):
        by = {r["mode"]: r for r in rows if r["clip"] == clip}
        cells = [f"{by[m]['temporal_error']:.3g} / {by[m]['style_loss']:.3g}" for m in ("independent", "warm", "temporal")]
        ind, tmp = by["independent"], by["temporal"]
        cells[2] += (f" ({ind['temporal_error'] / tmp['temporal_error']:.1f}x lower TE at "
                     f"{tmp['style_loss'] / ind['style_loss']:.2f}x the style loss)")
        lines.append(f"| {names.get(clip, clip)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
    p.add_argument("--temporal-weight", type=float, default=video_style.DEFAULT_TEMPORAL_WEIGHT)
    p.add_argument("--interpolation", default=video_style.DEFAULT_INTERPOLATION, choices=flow.INTERPOLATIONS,
                   help="warp of the previous output (start and temporal target); the error is measured with "
                   "the bilinear warp either way (and with Lanczos-3 in temporal_error_lanczos3)")
    p.add_argument("--adain-sizes", default="128,256")
    p.add_argument("--out", default="video_measurements.json")
    p.add_argument("--parts", default="gatys,adain", help="what to measure: gatys, adain (frames/s and flicker)")
    a = p.parse_args()
    parts = set(a.parts.split(","))
    style = jnp.asarray(image.resize(image.load_image(image.default_style_path()), height=128))[None]
    out = {}
    if "gatys" in parts:
        out["gatys"] = gatys_rows(weights.load_vgg19(a.vgg19), style, a.size, a.frames, a.iterations,
                                  a.video_iterations, a.temporal_weight, a.interpolation)
        print(gatys_table(out["gatys"]), flush=True)
    if "adain" in parts:
        vgg_params, dec = weights.load_adain_vgg(a.adain_vgg), weights.load_adain_decoder(a.decoder)
        out["adain_fps"] = adain_rows(vgg_params, dec, style, [int(s) for s in a.adain_sizes.split(",")], 16)
        out["adain_flicker"] = flicker_rows(vgg_params, dec, style, 12)
    pathlib.Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
