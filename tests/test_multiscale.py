"""Coarse-to-fine synthesis (report §V-B): level planning, resampling from the sources, the CLI.

The orchestration is checked with a recording runner (no network): each level must see the content
and style resampled from the SOURCE images and start from the previous result upsampled with a
bicubic filter (reference: Pillow's bicubic resize called here directly). The CLI runs in process
on tiny images with the narrow VGG-19 and a shallow layer set.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from nst_jax import gatys, multiscale
from nst_jax import image as imageio
from nst_jax.errors import ConfigError, NonFiniteLossError
from nst_jax.cli import gatys as gatys_cli

NARROW = pathlib.Path(__file__).parent / "fixtures" / "gatys" / "vgg19_narrow.pth"
LAYER_FLAGS = ["--content-layers", "relu2_1", "--style-layers", "relu1_1,relu2_1", "--optimizer", "adam",
               "--learning-rate", "0.05"]
YCBCR = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def test_auto_sizes_halve_down_to_about_256():
    assert multiscale.auto_sizes(1024) == (256, 512, 1024)
    assert multiscale.auto_sizes(2048) == (256, 512, 1024, 2048)
    assert multiscale.auto_sizes(700) == (350, 700)
    assert multiscale.auto_sizes(511) == (511,)
    assert multiscale.auto_sizes(256) == (256,)
    assert multiscale.auto_sizes(40, smallest=10) == (10, 20, 40)


def test_level_iterations_default_one_number_and_errors():
    assert multiscale.level_iterations(3) == (600, 100, 100)
    assert multiscale.level_iterations(1) == (600,)
    assert multiscale.level_iterations(3, [50]) == (50, 50, 50)
    assert multiscale.level_iterations(2, (7, 3)) == (7, 3)
    with pytest.raises(ConfigError, match="--iterations has 3 values for 2 levels"):
        multiscale.level_iterations(2, [1, 2, 3])
    with pytest.raises(ConfigError, match="increase"):
        multiscale.check_sizes([512, 256])
    with pytest.raises(ConfigError, match="positive"):
        multiscale.check_sizes([0, 256])


def _pil_bicubic(image: np.ndarray, height: int, width: int) -> np.ndarray:
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], np.float32))
                        .resize((width, height), Image.Resampling.BICUBIC)) for c in range(3)]
    return np.clip(np.stack(chans, -1), 0, 1)


class Recorder:
    """A runner with gatys.run's contract that records its inputs and returns a known image."""

    def __init__(self, interrupt_at=None, fail_at=None):
        self.calls = []
        self.interrupt_at, self.fail_at = interrupt_at, fail_at

    def __call__(self, params, content, styles, config, weights, *, key, init, blend_weights, chunk, callback,
                 snapshot_every, **masks):
        level = len(self.calls)
        self.calls.append(dict(content=np.asarray(content), styles=[np.asarray(s) for s in styles],
                               config=config, init=None if init is None else np.asarray(init), masks=masks))
        image = np.clip(np.asarray(content)[0] * 0.5 + 0.1 * (level + 1), 0, 1)
        if level == self.fail_at:
            err = NonFiniteLossError("loss became non-finite")
            err.image = image
            raise err
        if callback is not None:
            callback(gatys.Progress(config.iterations, 1.0, 0.1), lambda: image)
        return gatys.RunResult(image, [2.0, 1.0], {"total": 1.0 / (level + 1)}, config.iterations,
                               [(config.iterations, 0.1)], interrupted=level == self.interrupt_at)


SOURCE = np.asarray(np.random.default_rng(0).random((60, 80, 3)), np.float32)
STYLE = np.asarray(np.random.default_rng(1).random((50, 50, 3)), np.float32)


def test_each_level_resamples_the_sources_and_starts_from_the_upsampled_result():
    rec = Recorder()
    seen = []
    out = multiscale.run_multiscale(None, SOURCE, [STYLE], gatys.GatysConfig(), sizes=(12, 24, 48),
                                    iterations=(5, 3, 2), style_scale=0.5, runner=rec,
                                    callback=lambda level, p, get: seen.append((level, p.iteration, get().shape)))
    assert [c["config"].iterations for c in rec.calls] == [5, 3, 2]
    assert [c["config"].init for c in rec.calls] == ["content", "image", "image"]
    assert rec.calls[0]["init"] is None
    for call, size in zip(rec.calls, (12, 24, 48)):
        content = call["content"][0]
        assert content.shape == (size, round(80 * size / 60), 3)
        np.testing.assert_allclose(content, _pil_bicubic(SOURCE, *content.shape[:2]), atol=1e-5)
        assert call["styles"][0].shape == (1, size // 2, size // 2, 3)
        np.testing.assert_allclose(call["styles"][0][0], _pil_bicubic(STYLE, size // 2, size // 2), atol=1e-5)
    # Level k starts from level k-1's result, upsampled.
    for level, (prev, call) in enumerate(zip(rec.calls, rec.calls[1:])):
        previous = np.clip(prev["content"][0] * 0.5 + 0.1 * (level + 1), 0, 1)
        np.testing.assert_allclose(call["init"][0], _pil_bicubic(previous, *call["content"].shape[1:3]), atol=1e-5)
    # Resampling from the source is not the same as upsampling the coarse content.
    coarse_up = _pil_bicubic(rec.calls[0]["content"][0], 48, 64)
    assert np.abs(coarse_up - rec.calls[2]["content"][0]).mean() > 0.05
    assert out.result.image.shape == (48, 64, 3)
    assert [(lv.size, lv.iterations) for lv in out.levels] == [(12, 5), (24, 3), (48, 2)]
    assert [lv.as_dict()["final_loss"] for lv in out.levels] == [1.0, 0.5, 1.0 / 3]
    assert seen == [(0, 5, (12, 16, 3)), (1, 3, (24, 32, 3)), (2, 2, (48, 64, 3))]


def test_luminance_mode_is_applied_at_every_level():
    rec = Recorder()
    config = gatys.GatysConfig(color="luminance")
    out = multiscale.run_multiscale(None, SOURCE, [STYLE], config, sizes=(12, 24), iterations=1, runner=rec)
    for call in rec.calls:  # the runner sees gray images and is told no colour mode
        assert call["config"].color == "none"
        for img in [call["content"], *call["styles"]] + ([call["init"]] if call["init"] is not None else []):
            np.testing.assert_allclose(img[..., 0], img[..., 2], atol=0)
    image = out.result.image
    content = _pil_bicubic(SOURCE, 24, 32)
    inside = np.all((image > 1e-4) & (image < 1 - 1e-4), axis=-1)
    np.testing.assert_allclose((image @ YCBCR.T)[inside][:, 1:], (content @ YCBCR.T)[inside][:, 1:], atol=1e-5)


def test_interruption_and_failure_stop_at_their_level():
    rec = Recorder(interrupt_at=0)
    out = multiscale.run_multiscale(None, SOURCE, [STYLE], gatys.GatysConfig(), sizes=(12, 24), runner=rec)
    assert out.interrupted and len(out.levels) == 1 and out.result.image.shape[0] == 12
    with pytest.raises(NonFiniteLossError) as info:
        multiscale.run_multiscale(None, SOURCE, [STYLE], gatys.GatysConfig(), sizes=(12, 24), runner=Recorder(fail_at=1))
    assert info.value.level == 1 and info.value.image.shape == (24, 32, 3)


def test_content_masks_are_resampled_to_each_level():
    rec = Recorder()
    masks = np.zeros((2, 60, 80), np.float32)
    masks[0, :, :40], masks[1, :, 40:] = 1.0, 1.0
    multiscale.run_multiscale(None, SOURCE, [STYLE, STYLE], gatys.GatysConfig(), sizes=(12, 24), iterations=1,
                              content_masks=masks, runner=rec)
    for call, (h, w) in zip(rec.calls, ((12, 16), (24, 32))):
        m = np.asarray(call["masks"]["content_masks"])
        assert m.shape == (2, h, w)
        np.testing.assert_allclose(m.sum(0), 1.0, atol=1e-6)
        np.testing.assert_allclose(m[0, :, : w // 2 - 1], 1.0, atol=1e-6)
        np.testing.assert_allclose(m[0, :, w // 2 + 1:], 0.0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Command line


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("multiscale")
    rng = np.random.default_rng(0)
    for name, shape in (("content", (48, 64, 3)), ("style", (40, 40, 3))):
        Image.fromarray((rng.random(shape) * 255).astype(np.uint8)).save(d / f"{name}.png")
    return d


def _cli(d, *extra):
    argv = ["--content", str(d / "content.png"), "--style", str(d / "style.png"), "--weights", str(NARROW),
            "--chunk", "2", "--no-progress", "-o", str(d / "out.png"), "--metrics-json", str(d / "m.json"),
            *LAYER_FLAGS, *extra]
    return gatys_cli.main(argv)


def test_cli_sizes_reports_every_level(files):
    assert _cli(files, "--sizes", "16,32", "--iterations", "3,2") == 0
    assert imageio.load_image(files / "out.png").shape == (32, 43, 3)
    metrics = json.loads((files / "m.json").read_text())
    assert [(lv["size"], lv["iterations"]) for lv in metrics["levels"]] == [(16, 3), (32, 2)]
    assert all(set(lv) == {"size", "iterations", "final_loss", "seconds"} for lv in metrics["levels"])
    assert metrics["levels"][-1]["final_loss"] == metrics["final_loss"]
    assert metrics["iterations"] == 2 and len(metrics["losses"]) == 3 and metrics["total_iterations"] == 5
    assert metrics["config"]["sizes"] == [16, 32] and metrics["config"]["level_iterations"] == [3, 2]


def test_cli_multiscale_picks_the_levels(files, monkeypatch):
    monkeypatch.setattr(multiscale, "SMALLEST_AUTO_SIZE", 16)
    assert _cli(files, "--size", "32", "--multiscale", "--iterations", "2") == 0
    metrics = json.loads((files / "m.json").read_text())
    assert [(lv["size"], lv["iterations"]) for lv in metrics["levels"]] == [(16, 2), (32, 2)]
    assert imageio.load_image(files / "out.png").shape == (32, 43, 3)


def test_cli_tiled_levels_match_untiled(files):
    assert _cli(files, "--sizes", "16,32", "--iterations", "3,2") == 0
    untiled = imageio.load_image(files / "out.png")
    # relu2_1 is one pooling deep: tiles are multiples of 2; the default halo is exact.
    assert _cli(files, "--sizes", "16,32", "--iterations", "3,2", "--tile-size", "16") == 0
    tiled = imageio.load_image(files / "out.png")
    np.testing.assert_allclose(tiled, untiled, atol=2 / 255)
    assert json.loads((files / "m.json").read_text())["config"]["tile_size"] == 16


@pytest.mark.parametrize("extra, message", [
    (["--size", "32", "--sizes", "16,32"], "either --size or --sizes"),
    (["--sizes", "32,16"], "must increase"),
    (["--sizes", "16,32", "--iterations", "1,2,3"], "--iterations has 3 values for 2 levels"),
    (["--sizes", "16,32", "--multiscale"], "drop it when giving --sizes"),
    (["--size", "16", "--tile-halo", "4"], "--tile-halo needs --tile-size"),
])
def test_cli_level_errors(files, capsys, extra, message):
    assert _cli(files, *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
