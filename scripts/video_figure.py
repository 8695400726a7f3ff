"""Figure: frames of independent vs temporally consistent Gatys video, with their temporal error maps.

Rows: the input frames; independent per-frame Gatys and its error map; warm start + temporal loss
(Ruder et al. 2016) and its error map. An error map shows |out_t - warp(out_{t-1})| on pixels where
the flow is consistent (black: masked out or no error; brighter: more flicker; x4 for visibility).

Usage::

    python scripts/video_figure.py --weights vgg19.pth --size 128 --frames 6 -o video_consistency.png

Without --weights it uses the narrow test network (tests/fixtures), which shows the mechanism only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for extra in (ROOT, ROOT / "tests", ROOT / "scripts"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import _clips  # noqa: E402
from figures import grid  # noqa: E402
from nst_jax import flow, gatys, video_style, weights  # noqa: E402
from nst_jax import image as imageio  # noqa: E402


def error_maps(outputs: list[np.ndarray], frames: list[np.ndarray]) -> list[np.ndarray]:
    maps = [np.zeros_like(outputs[0])]
    for t in range(1, len(outputs)):
        back, fwd = flow.flows(frames[t - 1], frames[t])
        warped, mask = video_style._mask_and_warp(jnp.asarray(outputs[t - 1]), back, fwd)
        err = np.mean(np.abs(outputs[t] - np.asarray(warped)), axis=-1) * np.asarray(mask)
        maps.append(np.repeat(np.clip(4 * err, 0, 1)[..., None], 3, axis=-1))
    return maps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=str(ROOT / "tests" / "fixtures" / "gatys" / "vgg19_narrow.pth"))
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--video-iterations", type=int, default=50)
    p.add_argument("--temporal-weight", type=float, default=100.0)
    p.add_argument("-o", "--output", default="video_consistency.png")
    a = p.parse_args(argv)
    params = weights.load_vgg19(a.weights)
    frames = _clips.pan_frames(a.frames, h=a.size, w=a.size * 4 // 3)
    style = jnp.asarray(imageio.resize(imageio.load_image(imageio.default_style_path()), height=2 * a.size))[None]
    config = gatys.GatysConfig(iterations=a.iterations)
    rows = [grid(list(frames), [f"frame {t}" for t in range(a.frames)], "input (pan)")]
    for mode, title in (("independent", "independent frames"), ("temporal", "warm start + temporal loss")):
        outs = []
        r = video_style.run_gatys(params, frames, style, config, mode=mode, video_iterations=a.video_iterations,
                                  temporal_weight=a.temporal_weight, on_frame=lambda i, img: outs.append(img))
        rows.append(grid(outs, [f"t={t}" for t in range(a.frames)], f"{title}: temporal error {r.temporal_error:.4f}"))
        rows.append(grid(error_maps(outs, frames), ["" for _ in outs], "error map x4"))
    width = max(r.width for r in rows)
    canvas = Image.new("RGB", (width, sum(r.height for r in rows)), (255, 255, 255))
    y = 0
    for r in rows:
        canvas.paste(r, (0, y))
        y += r.height
    imageio.save_image(a.output, np.asarray(canvas, np.float32) / 255.0)
    print(a.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
