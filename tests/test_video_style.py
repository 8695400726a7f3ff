"""nst_jax.video_style: the Ruder et al. per-frame step and loop, batched AdaIN frames with smoothing."""

from __future__ import annotations

import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("cv2")

import _clips  # noqa: E402
from nst_jax import adain, gatys, image, video_style, weights  # noqa: E402
from nst_jax.errors import ConfigError  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
CONFIG = gatys.GatysConfig(iterations=20)


@pytest.fixture(scope="module")
def style():
    return jnp.asarray(image.resize(image.load_image(image.default_style_path()), height=48))[None]


@pytest.fixture(scope="module")
def adain_nets():
    return (weights.load_adain_vgg(FIXTURES / "adain" / "vgg_normalised_narrow.pth"),
            weights.load_adain_decoder(FIXTURES / "adain" / "decoder_narrow.pth"))


def test_temporal_loss_closed_form():
    x = jnp.ones((2, 3, 3))
    w = jnp.zeros((2, 3, 3))
    mask = jnp.asarray([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    # 1/D sum c (x - w)^2 with D = 2*3*3 and three consistent pixels of 3 channels each.
    assert float(video_style.temporal_loss(x, w, mask)) == pytest.approx(9 / 18)


def test_stylize_frame_zero_iterations_returns_the_warped_start(narrow_vgg19, style):
    frame = jnp.asarray(_clips.pan_frames(1, h=32, w=48)[0])[None]
    targets = video_style.style_targets(narrow_vgg19, frame, style, CONFIG)
    warped = jnp.full((32, 48, 3), 0.25)
    prog = video_style.frame_program(CONFIG, first=False)  # the program run_gatys uses
    w = gatys.loss_weights(CONFIG)
    x, loss = prog(warped, jnp.ones((32, 48)), frame, narrow_vgg19, targets, w, 1.0, 0)
    np.testing.assert_array_equal(x[0], warped)
    expected = gatys.objective(x, narrow_vgg19, targets._replace(
        content=video_style.content_features(narrow_vgg19, frame, CONFIG)), gatys.loss_weights(CONFIG), CONFIG)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)  # temporal term is 0 at the warped frame
    # A dominant temporal weight holds the consistent pixels at the warped frame.
    mask = jnp.zeros((32, 48)).at[:, :24].set(1.0)
    free, _ = prog(warped, mask, frame, narrow_vgg19, targets, w, 0.0, 5)
    held, _ = prog(warped, mask, frame, narrow_vgg19, targets, w, 1e6, 5)
    moved = lambda x, cols: float(jnp.mean(jnp.abs(x[0, :, cols] - warped[:, cols])))  # noqa: E731
    assert moved(held, slice(0, 24)) < 0.1 * moved(free, slice(0, 24))


def test_temporal_loss_lowers_flicker_at_similar_style_loss(narrow_vgg19, style):
    """Ruder et al.'s claim on a tiny pan: >= 2x lower temporal error, style loss within 1.2x."""
    frames = _clips.pan_frames(4, h=32, w=48)
    common = dict(video_iterations=10, temporal_weight=100.0)
    ind = video_style.run_gatys(narrow_vgg19, frames, style, CONFIG, mode="independent", **common)
    tmp = video_style.run_gatys(narrow_vgg19, frames, style, CONFIG, mode="temporal", **common)
    assert ind.frames == tmp.frames == 4
    assert tmp.temporal_error * 2 <= ind.temporal_error
    assert tmp.style_loss <= 1.2 * ind.style_loss


def test_interrupt_from_callback_stops_after_written_frames(narrow_vgg19, style):
    written = []

    def on_frame(i, img):
        if i == 2:
            raise KeyboardInterrupt
        written.append(img)

    frames = _clips.pan_frames(5, h=32, w=48)
    r = video_style.run_gatys(narrow_vgg19, frames, style, CONFIG, video_iterations=2, on_frame=on_frame)
    assert r.interrupted and r.frames == 2 == len(written)
    assert written[0].shape == (32, 48, 3) and 0 <= written[0].min() and written[0].max() <= 1


def test_luminance_colour_keeps_each_frames_chroma(narrow_vgg19, style):
    from nst_jax import color

    config = gatys.GatysConfig(iterations=3, color="luminance")
    out = []
    frames = _clips.zoom_frames(2, h=32, w=48)
    video_style.run_gatys(narrow_vgg19, frames, style, config, video_iterations=2,
                          on_frame=lambda i, img: out.append(img))
    assert len(out) == 2
    for f, o in zip(frames, out):
        # Chroma equals the frame's up to clipping to [0, 1] (few pixels; compare the median).
        diff = np.abs(np.asarray(color.rgb_to_ycbcr(jnp.asarray(o)) - color.rgb_to_ycbcr(jnp.asarray(f))))
        assert np.median(diff[..., 1:]) < 1e-3


def test_bad_video_options(narrow_vgg19, style):
    with pytest.raises(ConfigError, match="temporal"):
        video_style.run_gatys(narrow_vgg19, [], style, CONFIG, temporal_weight=-1.0)
    with pytest.raises(ConfigError, match="video mode"):
        video_style.run_gatys(narrow_vgg19, [], style, CONFIG, mode="smooth")


def test_adain_frames_without_smoothing_equal_adain_stylize(adain_nets, style):
    vgg_params, dec = adain_nets
    frames = jnp.asarray(np.stack(_clips.zoom_frames(4, h=32, w=48)))
    stats = video_style.style_stats(vgg_params, [style])
    out = video_style.adain_frames_jit(vgg_params, dec, frames, stats, 0.8)
    ref = adain.stylize_jit(vgg_params, dec, frames, style, 0.8)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_adain_run_batches_pad_and_smoothing_reduces_flicker(adain_nets, style):
    vgg_params, dec = adain_nets
    frames = _clips.noise_frames(7, h=32, w=48)
    outs, errors = {}, {}
    for s in (0.0, 0.8):
        got = []
        r = video_style.run_adain(vgg_params, dec, frames, [style], smoothing=s, batch=4, measure=True,
                                  on_frame=lambda i, img: got.append(img))
        errors[s] = r.temporal_error
        assert r.frames == 7 == len(got)
        outs[s] = np.stack(got)
    stats = video_style.style_stats(vgg_params, [style])
    direct = video_style.adain_frames_jit(vgg_params, dec, jnp.asarray(np.stack(frames[4:] + frames[-1:])),
                                          stats, 1.0)
    np.testing.assert_allclose(outs[0.0][4:], direct[:3], atol=1e-5)  # the padded last batch
    # Static noisy scene: flicker = mean absolute change between consecutive output frames. An EMA
    # with weight 0.8 of independent noise keeps sqrt((1 - s) / (1 + s)) = 1/3 of its deviation.
    flicker = {s: np.mean(np.abs(np.diff(o, axis=0))) for s, o in outs.items()}
    assert flicker[0.8] < 0.6 * flicker[0.0]
    assert errors[0.8] < 0.6 * errors[0.0]


def test_adain_bad_smoothing(adain_nets, style):
    with pytest.raises(ConfigError, match="temporal-smoothing"):
        video_style.run_adain(*adain_nets, [], [style], smoothing=1.0)


@pytest.fixture(scope="module")
def clip_with_audio(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "pan.mp4"
    _clips.write_clip(path, _clips.pan_frames(6, h=32, w=48))
    return path


def test_adain_file_keeps_frames_rate_and_audio(adain_nets, style, clip_with_audio, tmp_path):
    import functools

    out = tmp_path / "out.mp4"
    run = functools.partial(video_style.run_adain, *adain_nets, styles=[style], batch=4, smoothing=0.5,
                            measure=True)
    m = video_style.stylize_file(clip_with_audio, out, run)
    src, dst = _clips.streams(clip_with_audio), _clips.streams(out)
    assert m["frames"] == dst["video"] == src["video"] == 6
    assert dst["rate"] == src["rate"] and m["fps"] == float(src["rate"])
    assert dst["audio_codec"] == "aac" and dst["audio"] > 0
    assert m["temporal_error"] is not None and not m["interrupted"]


def test_gatys_file_interrupt_gives_shorter_valid_video(narrow_vgg19, style, clip_with_audio, tmp_path):
    import functools

    out = tmp_path / "out.mp4"
    out.write_bytes(b"old")

    def progress(done, total):
        assert total == 6
        if done == 3:
            raise KeyboardInterrupt

    run = functools.partial(video_style.run_gatys, narrow_vgg19, style=style, config=CONFIG, video_iterations=2)
    m = video_style.stylize_file(clip_with_audio, out, run, progress=progress)
    assert m["interrupted"] and m["frames"] == 3  # frame 3 was written, its progress call interrupted
    got = _clips.streams(out)
    assert got["video"] == 3 and got["audio"] > 0
    assert m["temporal_error"] is not None and m["style_loss"] > 0
