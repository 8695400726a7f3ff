"""``nst-gatys`` and ``nst-adain`` with a video as --content, in-process, on a tiny clip with audio."""

from __future__ import annotations

import json
import pathlib
import sys

import pytest

pytest.importorskip("av")
pytest.importorskip("cv2")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tests/_clips.py
import _clips  # noqa: E402
from nst_jax.cli import adain as adain_cli  # noqa: E402
from nst_jax.cli import gatys as gatys_cli  # noqa: E402
from nst_jax.cli import video as cli_video  # noqa: E402

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"
ADAIN = ["--vgg", str(FIXTURES / "adain" / "vgg_normalised_narrow.pth"),
         "--decoder", str(FIXTURES / "adain" / "decoder_narrow.pth"), "--no-progress"]
GATYS = ["--weights", str(FIXTURES / "gatys" / "vgg19_narrow.pth"), "--iterations", "3", "--video-iterations", "2",
         "--no-progress"]
KEYS = {"frames", "fps", "seconds_per_frame", "temporal_error"}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "pan.mp4"
    _clips.write_clip(path, _clips.pan_frames(5, h=32, w=48))
    return path


def test_adain_clip_to_clip(clip, tmp_path, capsys):
    out, metrics = tmp_path / "out.mp4", tmp_path / "m.json"
    rc = adain_cli.main(["--content", str(clip), "-o", str(out), "--size", "32", "--temporal-smoothing", "0.5",
                         "--metrics-json", str(metrics), *ADAIN])
    assert rc == 0, capsys.readouterr().err
    src, dst = _clips.streams(clip), _clips.streams(out)
    assert dst["video"] == src["video"] == 5 and dst["rate"] == src["rate"] and dst["audio"] > 0
    m = json.loads(metrics.read_text())
    assert KEYS <= set(m) and m["frames"] == 5 and m["temporal_error"] is not None


def test_gatys_clip_to_clip(clip, tmp_path, capsys):
    out, metrics = tmp_path / "out.mkv", tmp_path / "m.json"
    rc = gatys_cli.main(["--content", str(clip), "-o", str(out), "--metrics-json", str(metrics), *GATYS])
    assert rc == 0, capsys.readouterr().err
    dst = _clips.streams(out)
    assert dst["video"] == 5 and dst["audio"] > 0 and dst["size"] == (32, 48)
    m = json.loads(metrics.read_text())
    assert KEYS <= set(m) and m["frames"] == 5 and m["fps"] == float(_clips.streams(clip)["rate"])


def test_ctrl_c_keeps_a_shorter_valid_video(clip, tmp_path, monkeypatch, capsys):
    def bar(args, info):
        def progress(done, total):
            if done == 2:
                raise KeyboardInterrupt

        return type("Bar", (), {"close": lambda self: None})(), progress

    monkeypatch.setattr(cli_video, "_bar", bar)
    out = tmp_path / "out.mp4"
    rc = adain_cli.main(["--content", str(clip), "-o", str(out), "--size", "32", "--batch", "2", *ADAIN])
    assert rc == 130
    assert "interrupted: 2 frame(s)" in capsys.readouterr().err
    got = _clips.streams(out)
    assert got["video"] == 2 and got["audio"] > 0


def _error(capsys, rc):
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_bad_inputs_exit_2(clip, tmp_path, capsys):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    out = str(tmp_path / "o.mp4")
    assert "not a video" in _error(capsys, adain_cli.main(["--content", str(text), "-o", out, *ADAIN]))
    assert "extension" in _error(capsys, adain_cli.main(["--content", str(clip), "-o", str(tmp_path / "o.xyz"),
                                                         *ADAIN]))
    assert "is the input" in _error(capsys, gatys_cli.main(["--content", str(clip), "-o", str(clip), *GATYS]))
    assert "video --content" in _error(capsys, gatys_cli.main(["--content", str(clip), "-o", out, "--multiscale",
                                                                *GATYS]))
    assert not (tmp_path / "o.mp4").exists()
