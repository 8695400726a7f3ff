"""scripts/figures.py --figures video: independent vs temporally consistent Gatys frames, with error maps."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("cv2")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NARROW = ROOT / "tests" / "fixtures" / "gatys" / "vgg19_narrow.pth"


def _figures():
    spec = importlib.util.spec_from_file_location("figures_video", ROOT / "scripts" / "figures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _find(picture: np.ndarray, tile: np.ndarray) -> bool:
    """True when ``tile`` (uint8) appears pixel for pixel somewhere in ``picture``."""
    h, w = tile.shape[:2]
    ys, xs = np.nonzero(np.all(picture[: picture.shape[0] - h + 1, : picture.shape[1] - w + 1] == tile[0, 0],
                               axis=-1))
    return any(np.array_equal(picture[y:y + h, x:x + w], tile) for y, x in zip(ys, xs))


def _u8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)  # as figures.grid draws a tile


def test_video_figure_shows_less_flicker_with_the_temporal_loss(tmp_path, monkeypatch):
    figures = _figures()
    seen = []
    draw = figures.video_figure

    def spy(*args, **kwargs):
        seen.append(draw(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(figures, "video_figure", spy)
    out = tmp_path / "figs"
    # The frame size (32 high) and config of the video tests: their compiled programs are reused.
    assert figures.main(["--figures", "video", "--weights", str(NARROW), "--size", "32", "--iterations", "20",
                         "--video-iterations", "10", "--video-frames", "3", "--output-dir", str(out)]) == 0
    (fig,) = seen
    assert sorted(p.name for p in out.iterdir()) == ["video_consistency.png"]
    with Image.open(out / "video_consistency.png") as im:
        saved = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(saved, np.asarray(fig.picture))
    p = fig.panels
    assert [len(p[k]) for k in ("input", "independent", "independent error", "temporal", "temporal error")] == [3] * 5
    h, w = p["input"][0].shape[:2]
    assert h == 32 and all(x.shape == (h, w, 3) for row in p.values() for x in row)
    # Five rows of three panels, each under its labels.
    assert saved.shape[0] > 5 * h and saved.shape[1] >= 3 * w
    for row in p.values():
        for panel in row[1:]:
            assert _find(saved, _u8(panel))
    # The pan moves; the two methods agree on frame 0 (same start, same iterations) and differ after it.
    assert not np.array_equal(p["input"][0], p["input"][1])
    np.testing.assert_array_equal(p["independent"][0], p["temporal"][0])
    assert all(np.abs(a - b).mean() > 1e-3 for a, b in zip(p["independent"][1:], p["temporal"][1:]))
    # The temporal loss pulls each frame toward the previous one warped: darker error maps.
    independent = np.mean(p["independent error"][1:])
    temporal = np.mean(p["temporal error"][1:])
    assert 0 < temporal < 0.5 * independent, (temporal, independent)
    assert fig.temporal_error["temporal"] < fig.temporal_error["independent"]


def test_video_figure_refuses_a_pan_wider_than_the_image(tmp_path, capsys):
    figures = _figures()
    code = figures.main(["--figures", "video", "--weights", str(NARROW), "--size", "32", "--video-frames", "40",
                         "--output-dir", str(tmp_path / "figs")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --video-frames 40") and err.count("\n") == 1, err
