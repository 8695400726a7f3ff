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
# The Gatys config (layers) and frame sizes (16 px, and 24 px as the finer level) of
# tests/test_video_style.py: in one process (or through the persistent compilation cache) these runs
# reuse its compiled programs.
GATYS_NET = ["--weights", str(FIXTURES / "gatys" / "vgg19_narrow.pth"), "--content-layers", "relu2_1",
             "--style-layers", "relu1_1,relu2_1", "--no-progress"]
GATYS = [*GATYS_NET, "--iterations", "3", "--video-iterations", "2"]
KEYS = {"frames", "fps", "seconds_per_frame", "temporal_error"}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "pan.mp4"
    _clips.write_clip(path, _clips.pan_frames(5, h=32, w=48))
    return path


def test_adain_clip_to_clip(clip, tmp_path, capsys):
    out, metrics = tmp_path / "out.mp4", tmp_path / "m.json"
    rc = adain_cli.main(["--content", str(clip), "-o", str(out), "--size", "32", "--batch", "4",
                         "--temporal-smoothing", "0.5", "--metrics-json", str(metrics), *ADAIN])
    assert rc == 0, capsys.readouterr().err
    src, dst = _clips.streams(clip), _clips.streams(out)
    assert dst["video"] == src["video"] == 5 and dst["rate"] == src["rate"] and dst["audio"] > 0
    m = json.loads(metrics.read_text())
    assert KEYS <= set(m) and m["frames"] == 5 and m["temporal_error"] is not None


def test_adain_without_size_keeps_the_clips_upright_height(clip, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    # Batch 4 at 32x48: the program of the test above.
    assert adain_cli.main(["--content", str(clip), "-o", str(out), "--batch", "4", *ADAIN]) == 0, \
        capsys.readouterr().err
    assert _clips.streams(out)["size"] == (32, 48)
    assert "note:" not in capsys.readouterr().err
    # A phone clip stored 48 wide and 32 high, shown rotated: the height is the upright one.
    rotated, out = tmp_path / "rotated.mp4", tmp_path / "rotated_out.mp4"
    _clips.write_clip(rotated, _clips.pan_frames(2, h=32, w=48), rotation=90, audio=False)
    assert adain_cli.main(["--content", str(rotated), "-o", str(out), "--batch", "2", *ADAIN]) == 0, \
        capsys.readouterr().err
    assert _clips.streams(out)["size"] == (48, 32)


def test_adain_without_size_lowers_the_height_to_fit_the_budget(clip, tmp_path, capsys):
    from nst_jax import image, memory, weights

    vgg = weights.load_adain_vgg(FIXTURES / "adain" / "vgg_normalised_narrow.pth")
    dec = weights.load_adain_decoder(FIXTURES / "adain" / "decoder_narrow.pth")
    style = tmp_path / "style.png"
    image.save_image(style, _clips.pan_frames(1, h=32, w=48)[0])  # resized to the frames' height and aspect
    # Exactly what a batch of 4 frames of 24x36 (and the style at that size) needs: 24 px fits, 25 does not.
    budget = memory.adain_bytes((24, 36), [(24, 36)], vgg, dec, batch=4)
    assert memory.adain_bytes((25, 38), [(25, 38)], vgg, dec, batch=4) > budget
    out = tmp_path / "out.mp4"
    rc = adain_cli.main(["--content", str(clip), "-o", str(out), "--style", str(style), "--batch", "4",
                         "--max-memory", str(budget / 2**30), *ADAIN])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert _clips.streams(out)["size"] == (24, 36)
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "36x24 px, not the clip's 48x32" in notes[0] and "--size" in notes[0], err


def test_gatys_clip_to_clip(clip, tmp_path, capsys):
    out, metrics = tmp_path / "out.mkv", tmp_path / "m.json"
    rc = gatys_cli.main(["--content", str(clip), "-o", str(out), "--size", "16", "--metrics-json", str(metrics),
                         *GATYS])
    assert rc == 0, capsys.readouterr().err
    dst = _clips.streams(out)
    assert dst["video"] == 5 and dst["audio"] > 0 and dst["size"] == (16, 24)
    m = json.loads(metrics.read_text())
    assert KEYS <= set(m) and m["frames"] == 5 and m["fps"] == float(_clips.streams(clip)["rate"])


def test_gatys_clip_coarse_to_fine_with_colour_control(clip, tmp_path, capsys):
    """--sizes on a clip: every frame runs both levels; the output has the finest level's size."""
    out, metrics = tmp_path / "out.mkv", tmp_path / "m.json"
    rc = gatys_cli.main(["--content", str(clip), "-o", str(out), "--sizes", "16,24", "--iterations", "3,2",
                         "--video-iterations", "2,1", "--color", "luminance", "--metrics-json", str(metrics),
                         *GATYS_NET])
    assert rc == 0, capsys.readouterr().err
    dst = _clips.streams(out)
    assert dst["video"] == 5 and dst["audio"] > 0 and dst["size"] == (24, 36)
    m = json.loads(metrics.read_text())
    assert m["frames"] == 5 and m["temporal_error"] is not None and m["style_loss"] > 0


def test_ctrl_c_keeps_a_shorter_valid_video(clip, tmp_path, monkeypatch, capsys):
    def bar(args, info):
        def progress(done, total):
            if done == 2:
                raise KeyboardInterrupt

        return type("Bar", (), {"close": lambda self: None})(), progress

    monkeypatch.setattr(cli_video, "_bar", bar)
    out = tmp_path / "out.mp4"
    rc = adain_cli.main(["--content", str(clip), "-o", str(out), "--size", "32", "--batch", "4", *ADAIN])
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
    assert "video --content" in _error(capsys, gatys_cli.main(["--content", str(clip), "-o", out, "--tile-size",
                                                                "16", *GATYS]))
    assert "--video-iterations has 3 values for 2 levels" in _error(capsys, gatys_cli.main(
        ["--content", str(clip), "-o", out, "--sizes", "16,24", *GATYS, "--video-iterations", "1,2,3"]))
    assert "either --size or --sizes" in _error(capsys, gatys_cli.main(
        ["--content", str(clip), "-o", out, "--sizes", "16,24", "--size", "24", *GATYS]))
    assert not (tmp_path / "o.mp4").exists()


def test_memory_check_refuses_from_the_header(clip, tmp_path, monkeypatch, capsys):
    from nst_jax import memory, video, weights

    def decoded(*a, **k):
        raise AssertionError("a frame was decoded before the memory check")

    monkeypatch.setattr(video, "probe", decoded)
    monkeypatch.setattr(video, "read_frames", decoded)
    out = tmp_path / "o.mp4"
    err = _error(capsys, gatys_cli.main(["--content", str(clip), "-o", str(out), "--max-memory", "0.001",
                                         "--size", "64", *GATYS]))
    assert "frames at 96x64 px need about" in err and "--max-memory" in err and "--size" in err
    # Coarse to fine: the finest level is the one that must fit.
    err = _error(capsys, gatys_cli.main(["--content", str(clip), "-o", str(out), "--max-memory", "0.001",
                                         "--sizes", "32,64", *GATYS]))
    assert "frames at 96x64 px need about" in err
    # The style image, at the frame height times --style-scale, is checked too.
    gparams = weights.load_vgg19(FIXTURES / "gatys" / "vgg19_narrow.pth")
    config = gatys_cli.GatysConfig(content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"))
    frames_need = max(memory.gatys_bytes(h, w, gparams, config) for h, w in ((32, 48), (32, 21)))
    err = _error(capsys, gatys_cli.main(["--content", str(clip), "-o", str(out), "--size", "32",
                                         "--style-scale", "16", "--max-memory", str(1.01 * frames_need / 2**30),
                                         *GATYS]))
    assert "a style image (--style-scale 16) at" in err and "lower --style-scale" in err
    # AdaIN counts --batch: a budget that holds one 32x48 frame (and its style) refuses a batch of 4.
    vgg = weights.load_adain_vgg(FIXTURES / "adain" / "vgg_normalised_narrow.pth")
    dec = weights.load_adain_decoder(FIXTURES / "adain" / "decoder_narrow.pth")
    one = memory.adain_bytes((32, 48), [(32, 48)], vgg, dec, batch=1)
    budget = str(1.5 * one / 2**30)
    style = tmp_path / "style.png"
    from nst_jax import image

    image.save_image(style, _clips.pan_frames(1, h=32, w=48)[0])
    err = _error(capsys, adain_cli.main(["--content", str(clip), "-o", str(out), "--style", str(style),
                                         "--size", "32", "--batch", "4", "--max-memory", budget, *ADAIN]))
    assert "batches of 4 frames at 48x32 px need about" in err and "--batch" in err
    assert not out.exists()


def test_folder_of_numbered_frames_with_video_flag(tmp_path, capsys):
    from nst_jax import image

    frames = tmp_path / "frames"
    frames.mkdir()
    for i, f in enumerate(_clips.pan_frames(3, h=32, w=48)):
        image.save_image(frames / f"{i + 1:05d}.png", f)
    # nst-gatys: folder in, folder of PNG frames out.
    out = tmp_path / "gatys_frames"
    assert gatys_cli.main(["--content", str(frames), "--video", "-o", str(out), "--size", "16", *GATYS]) == 0, \
        capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [f"frame_{i:06d}.png" for i in (1, 2, 3)]
    # nst-adain: folder in, clip out at the folder rate; without --video the folder is still images.
    clip_out = tmp_path / "out.mp4"
    assert adain_cli.main(["--content", str(frames), "--video", "-o", str(clip_out), "--size", "32",
                           "--batch", "4", *ADAIN]) == 0, capsys.readouterr().err
    got = _clips.streams(clip_out)
    assert got["video"] == 3 and got["rate"] == 25 and got["audio"] == 0
    stills = tmp_path / "stills"
    stills.mkdir()
    assert adain_cli.main(["--content", str(frames), "-o", str(stills), "--size", "32", *ADAIN]) == 0
    assert len(list(stills.glob("0000?_stylized_*.png"))) == 3  # one still per image (plus a grid)
    capsys.readouterr()  # the runs' "saved" lines
    assert "--video needs" in _error(capsys, adain_cli.main(["--content", str(frames / "00001.png"), "--video",
                                                             "-o", str(tmp_path / "x.mp4"), *ADAIN]))
