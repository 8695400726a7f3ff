"""``nst-adain`` run in-process on tiny images with the narrow fixture networks."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from PIL import Image

from nst_jax import adain, weights
from nst_jax import image as image_io
from nst_jax.errors import DownloadError
from nst_jax.cli import adain as adain_cli

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "adain"
VGG = str(FIXTURES / "vgg_normalised_narrow.pth")
DECODER = str(FIXTURES / "decoder_narrow.pth")
NETS = ["--vgg", VGG, "--decoder", DECODER]


def write_image(path: pathlib.Path, h: int, w: int, seed: int) -> pathlib.Path:
    """A smooth random RGB image (a blurred noise field upsampled), saved as PNG."""
    rng = np.random.default_rng(seed)
    small = (rng.random((4, 4, 3)) * 255).astype(np.uint8)
    Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC).save(path)
    return path


@pytest.fixture
def files(tmp_path):
    content_dir, style_dir = tmp_path / "contents", tmp_path / "styles"
    content_dir.mkdir()
    style_dir.mkdir()
    contents = [write_image(content_dir / f"c{i}.png", 40, 48, i) for i in range(2)]
    styles = [write_image(style_dir / f"s{i}.png", 36 + 4 * i, 32, 10 + i) for i in range(2)]
    mask = np.zeros((40, 48), np.uint8)
    mask[:, :24] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return {"contents": contents, "styles": styles, "content_dir": content_dir, "style_dir": style_dir,
            "mask": tmp_path / "mask.png", "out": tmp_path / "out"}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = adain_cli.main([*map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def expect_error(capsys, *argv: str, match: str) -> str:
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    assert err.startswith("error: ") and match in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    return err


def load(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0


def test_file_to_file_equals_the_library(capsys, files, tmp_path):
    out = tmp_path / "result.png"
    code, stdout, err = run(capsys, "--content", files["contents"][0], "--style", files["styles"][1],
                            "--size", 32, "--alpha", 0.8, "--output", out, *NETS)
    assert code == 0, err
    assert str(out) in stdout
    result = load(out)
    assert result.shape == (32, 38, 3)  # short side 32, aspect of 40x48 kept
    # The same computation through the library: content resized to short side 32, the style
    # resized to the content's size (report Sec. VI-C).
    content = image_io.resize(image_io.load_image(files["contents"][0]), short_side=32)
    style = image_io.resize(image_io.load_image(files["styles"][1]), height=32, width=38)
    nets = (weights.load_adain_vgg(VGG), weights.load_adain_decoder(DECODER))
    expected = np.asarray(adain.stylize_jit(*nets, content[None], style[None], 0.8))[0]
    np.testing.assert_allclose(result, expected, atol=1.0 / 255 + 1e-6)


def test_folders_write_every_pair_and_a_grid(capsys, files):
    code, _, err = run(capsys, "--content", files["content_dir"], "--style", files["style_dir"],
                       "--size", 24, "--output", files["out"], *NETS)
    assert code == 0, err
    names = sorted(p.name for p in files["out"].iterdir())
    assert names == ["c0_stylized_s0.png", "c0_stylized_s1.png", "c1_stylized_s0.png",
                     "c1_stylized_s1.png", "grid.png"]
    grid = load(files["out"] / "grid.png")
    cell = load(files["out"] / "c1_stylized_s0.png")
    assert cell.shape == (24, 29, 3)
    # Header row of styles + two content rows; header column of contents + two style columns.
    assert grid.shape[0] >= 3 * 24 and grid.shape[1] >= 3 * 29
    assert np.all(grid[:4] == 1.0)  # white gutter
    # The pair (c1, s0) sits in row 2, column 1 of the results, after the headers.
    assert any(np.allclose(grid[y:y + 24, x:x + 29], cell, atol=2 / 255)
               for y in range(grid.shape[0] - 23) for x in range(grid.shape[1] - 28)
               if y > grid.shape[0] // 2 and x < grid.shape[1] * 2 // 3)


def test_interpolation_writes_one_blend_per_content(capsys, files):
    code, _, err = run(capsys, "--content", files["contents"][0], "--style", *files["styles"],
                       "--style-interpolation-weights", 1, 3, "--size", 24, "--output", files["out"],
                       *NETS)
    assert code == 0, err
    assert sorted(p.name for p in files["out"].iterdir()) == ["c0_stylized_s0-0.25_s1-0.75.png"]
    # Weights are normalized: 1, 3 gives the same image as 0.25, 0.75.
    code, _, err = run(capsys, "--content", files["contents"][0], "--style", *files["styles"],
                       "--style-interpolation-weights", 0.25, 0.75, "--size", 24,
                       "--output", files["out"] / "b.png", *NETS)
    assert code == 0, err
    np.testing.assert_array_equal(load(files["out"] / "c0_stylized_s0-0.25_s1-0.75.png"),
                                  load(files["out"] / "b.png"))


def test_mask_and_preserve_color(capsys, files, tmp_path):
    masked = tmp_path / "masked.png"
    code, _, err = run(capsys, "--content", files["contents"][0], "--style", *files["styles"],
                       "--mask", files["mask"], "--size", 24, "--output", masked, *NETS)
    assert code == 0, err
    plain, kept = tmp_path / "plain.png", tmp_path / "kept.png"
    for out, extra in ((plain, []), (kept, ["--preserve-color"])):
        code, _, err = run(capsys, "--content", files["contents"][0], "--style", files["styles"][0],
                           "--size", 24, "--output", out, *extra, *NETS)
        assert code == 0, err
    assert load(masked).shape == load(plain).shape == (24, 29, 3)
    assert not np.allclose(load(plain), load(kept), atol=2 / 255)
    assert not np.allclose(load(plain), load(masked), atol=2 / 255)


@pytest.mark.parametrize("args, match", [
    (["--alpha", "1.5"], "--alpha must be between 0"),
    (["--mask", "MASK"], "--mask needs exactly two style images"),
    (["--style-interpolation-weights", "1", "2"], "2 --style-interpolation-weights for 1 style"),
    (["--size", "-3"], "--size must be >= 0"),
    (["--size", "8"], "at least 16 px"),
    (["--color-transform", "eigen"], 'did you mean "eig"'),
    (["--alpha", "x"], "invalid float value"),
])
def test_bad_options_exit_2(capsys, files, args, match):
    args = [str(files["mask"]) if a == "MASK" else a for a in args]
    expect_error(capsys, "--content", files["contents"][0], "--style", files["styles"][0],
                 "--output", files["out"], *args, *NETS, match=match)


def test_bad_files_exit_2(capsys, files, tmp_path):
    base = ["--content", files["contents"][0], "--style", files["styles"][0]]
    expect_error(capsys, "--content", tmp_path / "missing.jpg", "--style", files["styles"][0], *NETS,
                 match="not found")
    # The decoder file given as the encoder: the loader lists missing and unexpected keys.
    expect_error(capsys, *base, "--vgg", DECODER, "--decoder", DECODER, "--output", files["out"],
                 match="it looks like AdaIN decoder weights")
    # Several results but a single output file.
    expect_error(capsys, "--content", files["content_dir"], "--style", files["styles"][0], *NETS,
                 "--output", tmp_path / "one.png", match="is one file but 2 images")
    expect_error(capsys, *base, *NETS, "--output", tmp_path / "no" / "such" / "dir.png",
                 match="does not exist")


def test_encoder_decoder_width_mismatch_exits_2(capsys, files, tmp_path):
    decoder = weights.load_adain_decoder(DECODER)
    wide = dict(decoder, dec4_1={"kernel": np.zeros((3, 3, 32, 8), np.float32),
                                 "bias": np.zeros(8, np.float32)})
    path = weights.save_adain_decoder(wide, tmp_path / "wide_decoder.npz")
    expect_error(capsys, "--content", files["contents"][0], "--style", files["styles"][0], "--vgg", VGG,
                 "--decoder", path, "--output", files["out"], match="takes 32 channels")


def test_output_path_is_checked_before_any_work(capsys, files, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("stylize ran before the output path was checked")

    monkeypatch.setattr(adain, "stylize_jit", fail)
    expect_error(capsys, "--content", files["contents"][0], "--style", files["styles"][0], *NETS,
                 "--output", tmp_path / "result.gif", match="cannot save")


def test_missing_default_weights_name_the_flag(capsys, files, monkeypatch):
    def unavailable(name, path=None, **kwargs):
        if path is not None:
            return weights.load(path, "adain_vgg" if name == "adain_vgg" else "adain_decoder")
        raise DownloadError(f"cannot download {name} from https://example.invalid/x.pth into the cache; "
                            "pass the file's path", kind=name)

    monkeypatch.setattr(weights, "resolve_weights", unavailable)
    expect_error(capsys, "--content", files["contents"][0], "--style", files["styles"][0], "--vgg", VGG,
                 "--output", files["out"], match="pass the file's path (--decoder PATH)")


def test_ctrl_c_keeps_finished_outputs(capsys, files, monkeypatch):
    calls = []
    real = adain.stylize_jit

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(adain, "stylize_jit", interrupt_second)
    code, _, err = run(capsys, "--content", files["content_dir"], "--style", files["styles"][0],
                       "--size", 24, "--output", files["out"], *NETS)
    assert code == 130
    assert "interrupted" in err and "1 image" in err
    assert sorted(p.name for p in files["out"].iterdir()) == ["c0_stylized_s0.png"]  # no partial files


def test_defaults_use_the_packaged_images(capsys, tmp_path):
    out = tmp_path / "default.png"
    code, _, err = run(capsys, "--size", 16, "--output", out, *NETS)
    assert code == 0, err
    assert min(load(out).shape[:2]) == 16


def test_help_exits_0(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "--style-interpolation-weights" in out
