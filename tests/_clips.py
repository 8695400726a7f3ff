"""Tiny test clips made from the built-in images: a pan, a zoom, and noise on a static scene.

Shared by the video tests (imported as a plain module; pytest puts tests/ on sys.path).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from nst_jax import image

SAMPLE_RATE = 8000


def _scene(height: int = 96) -> np.ndarray:
    return image.resize(image.load_image(image.default_content_path()), height=height)


def pan_frames(n: int = 12, h: int = 48, w: int = 64, step: int = 2) -> list[np.ndarray]:
    """Frame t is the scene shifted left by ``step * t`` pixels (an exact integer translation)."""
    scene = _scene()
    return [scene[10:10 + h, step * t:step * t + w] for t in range(n)]


def zoom_frames(n: int = 12, h: int = 48, w: int = 64) -> list[np.ndarray]:
    """Frame t is a centred crop of the scene magnified by 1 + 0.03 t."""
    scene = _scene()
    cy, cx = scene.shape[0] // 2, scene.shape[1] // 2
    out = []
    for t in range(n):
        z = 1.0 + 0.03 * t
        ch, cw = int(round(h / z)), int(round(w / z))
        crop = scene[cy - ch // 2:cy - ch // 2 + ch, cx - cw // 2:cx - cw // 2 + cw]
        out.append(image.resize(crop, height=h, width=w))
    return out


def noise_frames(n: int = 12, h: int = 48, w: int = 64, sigma: float = 0.05, seed: int = 0) -> list[np.ndarray]:
    """A static scene with fresh Gaussian noise in every frame (flicker with no motion)."""
    rng = np.random.default_rng(seed)
    base = _scene()[10:10 + h, :w]
    return [np.clip(base + sigma * rng.standard_normal(base.shape), 0, 1).astype(np.float32) for _ in range(n)]


def flicker_frames(n: int = 12, h: int = 48, w: int = 64, amount: float = 0.15, seed: int = 0) -> list[np.ndarray]:
    """A static scene whose exposure changes from frame to frame (global flicker, no motion)."""
    rng = np.random.default_rng(seed)
    base = _scene()[10:10 + h, :w]
    return [np.clip(base * (1 + amount * rng.uniform(-1, 1)), 0, 1).astype(np.float32) for _ in range(n)]


def write_clip(path, frames, fps=Fraction(12), *, audio: bool = True, times=None, rotation: int = 0,
               codec: str = "libx264") -> None:
    """Encodes float frames (and a 440 Hz sine as AAC) with PyAV, independently of nst_jax.video."""
    import av

    with av.open(str(path), "w") as c:
        v = c.add_stream(codec, rate=fps)
        v.height, v.width = frames[0].shape[:2]
        v.pix_fmt = "yuv420p"
        v.options = {"crf": "10"} if codec == "libx264" else {}
        tb = Fraction(1, 12000)  # holds 1/12 s and 1/100 s exactly
        v.codec_context.time_base = tb
        if rotation:
            v.set_display_rotation(rotation)
        a = None
        if audio:
            a = c.add_stream("aac", rate=SAMPLE_RATE)
            a.layout = "mono"
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray((np.clip(f, 0, 1) * 255 + 0.5).astype(np.uint8), format="rgb24")
            t = Fraction(i) / fps if times is None else Fraction(times[i])
            vf.pts, vf.time_base = int(t / tb), tb
            for p in v.encode(vf):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
        if a is not None:
            n = int(SAMPLE_RATE * len(frames) / fps)
            s = (0.2 * np.sin(2 * np.pi * 440 * np.arange(n) / SAMPLE_RATE)).astype(np.float32)
            for k in range(0, n, 1024):
                af = av.AudioFrame.from_ndarray(s[None, k:k + 1024], format="fltp", layout="mono")
                af.sample_rate, af.pts = SAMPLE_RATE, k
                for p in a.encode(af):
                    c.mux(p)
            for p in a.encode(None):
                c.mux(p)


def streams(path) -> dict:
    """{"video": frames, "audio": packets, "rate": Fraction, "size": (h, w)} read with PyAV directly."""
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        out = {"rate": Fraction(v.guessed_rate), "audio_codec": None}
        frames = list(c.decode(v))
        out["video"] = len(frames)
        out["size"] = (frames[0].height, frames[0].width) if frames else None
        out["times"] = [f.time for f in frames]
    with av.open(str(path)) as c:
        out["audio"] = sum(1 for p in c.demux(audio=0) if p.size) if c.streams.audio else 0
        if c.streams.audio:
            out["audio_codec"] = c.streams.audio[0].codec_context.name
    return out
