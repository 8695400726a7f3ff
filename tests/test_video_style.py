"""nst_jax.video_style: the Ruder et al. per-frame step and loop, batched AdaIN frames with smoothing."""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("cv2")

import _clips  # noqa: E402
from nst_jax import adain, gatys, image, video_style, weights  # noqa: E402
from nst_jax.errors import ConfigError  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
# One program config and two tiny frame sizes for every Gatys test here (and the Gatys CLI tests,
# tests/cli/test_video_cli.py): the per-frame programs are compiled once per (config without
# iterations/colour/init, frame size), and compiling dominates these tests. The shallow layers
# compile in half the time of the default ones and allow frames down to 4 px.
CONFIG = gatys.GatysConfig(iterations=20, content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"))
H, W = 16, 24
FINE = (24, 36)  # the finer level of the coarse-to-fine tests, whose coarse level is H x W


@pytest.fixture(scope="module")
def style():
    return jnp.asarray(image.resize(image.load_image(image.default_style_path()), height=48))[None]


@pytest.fixture(scope="module")
def gstyle():
    """The Gatys tests' style: as high as their finest level, as the command line sizes it (the tests
    of tests/cli/test_video_cli.py then reuse the style-target programs compiled here)."""
    return jnp.asarray(image.resize(image.load_image(image.default_style_path()), height=FINE[0]))[None]


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


def test_stylize_frame_is_the_driven_frame_run_as_one_function(narrow_vgg19, gstyle):
    """The research API's pure step: 0 iterations give the warped start (where the temporal term is
    0), and k iterations the iterates of run_frame, the driver-stepped frame run_gatys uses."""
    frame = jnp.asarray(_clips.pan_frames(2, h=H, w=W)[1])[None]
    warped = jnp.asarray(_clips.pan_frames(1, h=H, w=W)[0])
    mask = jnp.zeros((H, W)).at[:, :W // 2].set(1.0)

    @jax.jit  # one program: compiling it beats running VGG and its gradient op by op
    def run(params, frame, gstyle, iterations):
        targets = video_style.style_targets(params, frame, gstyle, CONFIG)
        w = gatys.loss_weights(CONFIG)
        x, loss = video_style.stylize_frame(warped, mask, frame, params, targets, w, CONFIG, temporal_weight=5.0,
                                            iterations=iterations)
        content = video_style.content_features(params, frame, CONFIG)
        return x, loss, gatys.objective(x, params, targets._replace(content=content), w, CONFIG)

    x, loss, objective = run(narrow_vgg19, frame, gstyle, 0)
    np.testing.assert_array_equal(x[0], warped)
    np.testing.assert_allclose(loss, objective, rtol=1e-5)
    x, loss, _ = run(narrow_vgg19, frame, gstyle, 3)
    config = dataclasses.replace(CONFIG, init="image", iterations=3)
    driven = video_style.run_frame(narrow_vgg19, frame, gstyle, config, init=warped[None], warped=np.asarray(warped),
                                   mask=np.asarray(mask), temporal_weight=5.0)
    assert driven.iterations == 3 and np.abs(driven.image - warped).max() > 1e-3  # it moved
    # Two compilations of the same float32 iterates (L-BFGS with line search, 3 steps): rounding only.
    np.testing.assert_allclose(np.clip(x[0], 0, 1), driven.image, atol=1e-5)  # images are handed out clipped
    np.testing.assert_allclose(loss, driven.terms["total"], rtol=1e-5)


def test_run_frame_resizes_the_temporal_target_and_mask_to_its_level(narrow_vgg19, gstyle):
    """The driver-stepped frame (run_gatys' runner) at a coarse level: target and mask resized to it."""
    frame = _clips.pan_frames(1, h=H, w=W)[0]
    fine = np.linspace(0.1, 0.9, FINE[0] * FINE[1] * 3, dtype=np.float32).reshape(*FINE, 3)
    mask = np.zeros(FINE, np.float32)
    mask[:, :FINE[1] // 2] = 1.0  # left half consistent
    target, mask_l = image.resize(fine, H, W), image.resize(mask[..., None], H, W)[..., 0]
    start = jnp.full((1, H, W, 3), 0.5)
    config = dataclasses.replace(CONFIG, init="image", iterations=0)
    kw = dict(warped=fine, mask=mask, temporal_weight=3.0)
    r = video_style.run_frame(narrow_vgg19, jnp.asarray(frame)[None], gstyle, config, init=start, **kw)
    np.testing.assert_array_equal(r.image, start[0])
    # Independent of the program: 1/D sum c (x - w)^2 at the level's size.
    assert r.terms["temporal"] == pytest.approx(float(np.mean(mask_l[..., None] * (0.5 - target) ** 2)), rel=1e-5)
    assert r.terms["total"] == pytest.approx(r.terms["content_weighted"] + r.terms["style_weighted"]
                                             + r.terms["tv_weighted"] + 3.0 * r.terms["temporal"], rel=1e-5)
    at_target = video_style.run_frame(narrow_vgg19, jnp.asarray(frame)[None], gstyle, config,
                                      init=jnp.asarray(target)[None], **kw)
    assert at_target.terms["temporal"] == 0.0
    # A dominant temporal weight holds the consistent (left) pixels at the target; 0 lets them move.
    config = dataclasses.replace(config, iterations=5)
    moved = {}
    for tw in (0.0, 1e6):
        x = video_style.run_frame(narrow_vgg19, jnp.asarray(frame)[None], gstyle, config, init=start,
                                  **{**kw, "temporal_weight": tw}).image
        moved[tw] = float(np.mean(np.abs(x[:, :W // 2 - 2] - target[:, :W // 2 - 2])))
    assert moved[1e6] < 0.1 * moved[0.0]


@pytest.fixture(scope="module")
def pan_runs(narrow_vgg19, gstyle):
    """Independent frames vs warm start + temporal loss on a tiny pan, outputs kept."""
    frames = _clips.pan_frames(4, h=H, w=W)
    runs = {}
    for mode in ("independent", "temporal"):
        outs = []
        r = video_style.run_gatys(narrow_vgg19, frames, gstyle, CONFIG, mode=mode, video_iterations=10,
                                  temporal_weight=100.0, on_frame=lambda i, img: outs.append(img))
        runs[mode] = (r, outs)
    return frames, runs


def test_temporal_loss_lowers_flicker_at_similar_style_loss(pan_runs):
    """Ruder et al.'s claim on a tiny pan: >= 2x lower temporal error, gstyle loss within 1.2x."""
    _, runs = pan_runs
    ind, tmp = runs["independent"][0], runs["temporal"][0]
    assert ind.frames == tmp.frames == 4
    assert tmp.temporal_error * 2 <= ind.temporal_error
    assert tmp.style_loss <= 1.2 * ind.style_loss


def test_histogram_colour_is_the_style_recoloured_to_the_first_frame(narrow_vgg19, gstyle, pan_runs):
    """--color histogram on a clip = the gstyle recoloured to the first frame's colours, for every frame."""
    from nst_jax import color

    frames, runs = pan_runs
    config = dataclasses.replace(CONFIG, color="histogram")
    outs = []
    video_style.run_gatys(narrow_vgg19, frames, gstyle, config, video_iterations=10, temporal_weight=100.0,
                          on_frame=lambda i, img: outs.append(img))
    recoloured = color.match_color(gstyle, jnp.asarray(frames[0])[None], "eig", 1e-5, clip=True)
    ref = []
    video_style.run_gatys(narrow_vgg19, frames, recoloured, CONFIG, video_iterations=10, temporal_weight=100.0,
                          on_frame=lambda i, img: ref.append(img))
    assert len(outs) == len(ref) == 4
    # The same compiled programs on the same inputs; float noise of the eager recolouring at most.
    np.testing.assert_allclose(np.stack(outs), np.stack(ref), atol=1e-4)
    # ...and not the plain run: the recolouring changed the result.
    assert np.abs(np.stack(outs) - np.stack(runs["temporal"][1])).mean() > 1e-3


def test_interrupt_from_callback_stops_after_written_frames(narrow_vgg19, gstyle):
    written = []

    def on_frame(i, img):
        if i == 2:
            raise KeyboardInterrupt
        written.append(img)

    frames = _clips.pan_frames(5, h=H, w=W)
    r = video_style.run_gatys(narrow_vgg19, frames, gstyle, CONFIG, video_iterations=2, on_frame=on_frame)
    assert r.interrupted and r.frames == 2 == len(written)
    assert written[0].shape == (H, W, 3) and 0 <= written[0].min() and written[0].max() <= 1


class _Spy:
    """Wraps video_style.run_frame: records what every level of every frame was given and returned."""

    def __init__(self, real):
        self.real, self.calls = real, []

    def __call__(self, params, content, gstyle, config, weights=None, **kw):
        result = self.real(params, content, gstyle, config, weights, **kw)
        self.calls.append({"shape": content.shape[1:3], "iterations": config.iterations, "init": kw["init"],
                           "warped": kw["warped"], "mask": kw["mask"], "tw": kw["temporal_weight"],
                           "image": result.image})
        return result


def test_coarse_to_fine_per_frame_starts_from_the_warped_previous_frame(narrow_vgg19, gstyle, monkeypatch):
    from nst_jax import flow

    assert video_style.DEFAULT_INTERPOLATION == "lanczos3"
    spy = _Spy(video_style.run_frame)
    monkeypatch.setattr(video_style, "run_frame", spy)
    frames = _clips.zoom_frames(3, h=FINE[0], w=FINE[1])
    outs = []
    r = video_style.run_gatys(narrow_vgg19, frames, gstyle, CONFIG, sizes=(H, FINE[0]), iterations=(3, 2),
                              video_iterations=(2, 1), temporal_weight=50.0, on_frame=lambda i, img: outs.append(img))
    assert r.frames == 3 and [o.shape for o in outs] == [FINE + (3,)] * 3
    calls = [spy.calls[2 * t:2 * t + 2] for t in range(3)]
    assert [[(c["shape"], c["iterations"]) for c in frame] for frame in calls] == (
        [[((H, W), 3), (FINE, 2)]] + [[((H, W), 2), (FINE, 1)]] * 2)
    # Frame 0: the coarse level from the content (config.init), no temporal loss.
    assert calls[0][0]["init"] is None and calls[0][0]["warped"] is None and calls[0][0]["tw"] == 0.0
    for t, (coarse, fine) in enumerate(calls):
        # Every finer level starts from the coarser result upsampled (as multiscale does).
        np.testing.assert_allclose(fine["init"][0], image.resize(coarse["image"], *FINE), atol=1e-6)
        if t == 0:
            continue
        # Frame t: flow at the finest size, the previous output warped by it, then resized to the level.
        back, fwd = flow.flows(frames[t - 1], frames[t])
        # The Lanczos-3 warp (tests/test_flow.py) clipped to the image range, and the mask.
        warped, mask = map(np.asarray, video_style._target_and_mask(outs[t - 1], back, fwd, "lanczos3"))
        assert mask.mean() > 0.5  # a zoom in: most pixels are consistent
        np.testing.assert_allclose(coarse["init"][0], image.resize(warped, H, W), atol=1e-5)
        for level in (coarse, fine):  # each level's temporal loss: the warped frame and mask (resized there)
            np.testing.assert_allclose(level["warped"], warped, atol=1e-5)
            np.testing.assert_array_equal(level["mask"], mask)
            assert level["tw"] == 50.0


def test_luminance_colour_keeps_each_frames_chroma_at_every_level(narrow_vgg19, gstyle):
    from nst_jax import color

    config = dataclasses.replace(CONFIG, color="luminance")
    out = []
    frames = _clips.zoom_frames(2, h=FINE[0], w=FINE[1])
    video_style.run_gatys(narrow_vgg19, frames, gstyle, config, sizes=(H, FINE[0]), iterations=3,
                          video_iterations=2, on_frame=lambda i, img: out.append(img))
    assert len(out) == 2
    for f, o in zip(frames, out):
        # Chroma equals the frame's up to clipping to [0, 1] (few pixels; compare the median).
        diff = np.abs(np.asarray(color.rgb_to_ycbcr(jnp.asarray(o)) - color.rgb_to_ycbcr(jnp.asarray(f))))
        assert np.median(diff[..., 1:]) < 1e-3
        # ...while the luminance was stylized.
        assert np.median(diff[..., 0]) > 1e-3


def test_command_line_defaults_are_the_librarys():
    from nst_jax.cli import video as cli_video

    assert cli_video.DEFAULT_TEMPORAL_WEIGHT == video_style.DEFAULT_TEMPORAL_WEIGHT
    assert cli_video.DEFAULT_VIDEO_ITERATIONS == video_style.DEFAULT_VIDEO_ITERATIONS


def test_bad_video_options(narrow_vgg19, gstyle):
    with pytest.raises(ConfigError, match="temporal"):
        video_style.run_gatys(narrow_vgg19, [], gstyle, CONFIG, temporal_weight=-1.0)
    with pytest.raises(ConfigError, match="video mode"):
        video_style.run_gatys(narrow_vgg19, [], gstyle, CONFIG, mode="smooth")
    with pytest.raises(ConfigError, match="--video-iterations has 3 values for 2 levels"):
        video_style.run_gatys(narrow_vgg19, [], gstyle, CONFIG, sizes=(H, FINE[0]), video_iterations=(1, 2, 3))
    with pytest.raises(ConfigError, match="must be the frame height"):
        video_style.run_gatys(narrow_vgg19, _clips.pan_frames(1, h=H, w=W), gstyle, CONFIG, sizes=(8, 2 * H))


def test_adain_frames_without_smoothing_equal_adain_stylize(adain_nets, style):
    vgg_params, dec = adain_nets
    frames = jnp.asarray(np.stack(_clips.zoom_frames(4, h=H, w=W)))
    stats = video_style.style_stats(vgg_params, [style])
    out = video_style.adain_frames_jit(vgg_params, dec, frames, stats, 0.8)
    ref = adain.stylize_jit(vgg_params, dec, frames, style, 0.8)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_adain_run_batches_pad_and_smoothing_reduces_flicker(adain_nets, style):
    vgg_params, dec = adain_nets
    frames = _clips.noise_frames(7, h=H, w=W)
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
    _clips.write_clip(path, _clips.pan_frames(6, h=H, w=W))
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


def test_gatys_file_interrupt_gives_shorter_valid_video(narrow_vgg19, gstyle, clip_with_audio, tmp_path):
    import functools

    out = tmp_path / "out.mp4"
    out.write_bytes(b"old")

    def progress(done, total):
        assert total == 6
        if done == 3:
            raise KeyboardInterrupt

    run = functools.partial(video_style.run_gatys, narrow_vgg19, style=gstyle, config=CONFIG, video_iterations=2)
    m = video_style.stylize_file(clip_with_audio, out, run, progress=progress)
    assert m["interrupted"] and m["frames"] == 3  # frame 3 was written, its progress call interrupted
    got = _clips.streams(out)
    assert got["video"] == 3 and got["audio"] > 0
    assert m["temporal_error"] is not None and m["style_loss"] > 0
