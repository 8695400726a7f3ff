"""nst_jax.video: reading frames, writing clips with audio, atomic output, bad input."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

pytest.importorskip("av")

import _clips  # noqa: E402
from nst_jax import image, video  # noqa: E402
from nst_jax.errors import InputImageError, OutputPathError  # noqa: E402

# 8-bit yuv420p with CRF 10 and chroma subsampling: a smooth photo comes back within a few levels.
CODEC_TOL = 0.06


@pytest.fixture(scope="module")
def pan_clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clips") / "pan.mp4"
    frames = _clips.pan_frames()
    _clips.write_clip(path, frames)
    return path, frames


def test_read_matches_source_frames_and_times(pan_clip):
    path, frames = pan_clip
    info = video.probe(path)
    assert (info.height, info.width, info.fps, info.frames, info.has_audio) == (48, 64, Fraction(12), 12, True)
    got = list(video.read_frames(path))
    assert len(got) == len(frames)
    # The muxer's clock may not hold 1/12 s exactly: times agree to its tick (at most 1 ms here).
    assert np.allclose([float(f.time) for f in got], np.arange(12) / 12, atol=1e-3)
    for f, ref in zip(got, frames):
        assert f.image.dtype == np.float32 and f.image.shape == (48, 64, 3)
        assert np.mean(np.abs(f.image - ref)) < CODEC_TOL / 4
        assert np.percentile(np.abs(f.image - ref), 99) < 3 * CODEC_TOL


def test_read_is_lazy(pan_clip):
    """Frames are decoded on demand: taking two does not decode the clip."""
    it = video.read_frames(pan_clip[0])
    first, second = next(it), next(it)
    assert (first.index, second.index) == (0, 1)
    it.close()


def test_roundtrip_keeps_frames_rate_and_audio(pan_clip, tmp_path):
    path, frames = pan_clip
    out = tmp_path / "out.mp4"
    with video.VideoWriter(out, video.probe(path).fps, audio_from=path) as w:
        for f in video.read_frames(path):
            w.write(1.0 - f.image, f.time)
    src, dst = _clips.streams(path), _clips.streams(out)
    assert dst["video"] == src["video"] == 12
    assert dst["rate"] == src["rate"]
    assert dst["times"] == src["times"]
    assert dst["audio_codec"] == "aac" and dst["audio"] >= src["audio"] - 1 > 0
    back = [f.image for f in video.read_frames(out)]
    assert np.mean(np.abs(back[5] - (1.0 - frames[5]))) < CODEC_TOL / 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_variable_frame_rate_keeps_timestamps(tmp_path):
    times = [0, Fraction(1, 10), Fraction(3, 10), Fraction(35, 100), Fraction(7, 10), 1]
    src = tmp_path / "vfr.mkv"
    _clips.write_clip(src, _clips.pan_frames(6), times=times, audio=False)
    out = tmp_path / "out.mkv"
    with video.VideoWriter(out, video.probe(src).fps) as w:
        for f in video.read_frames(src):
            w.write(f.image, f.time)
    assert [f.time for f in video.read_frames(out)] == [Fraction(t) for t in times]


def test_rotation_metadata_is_applied(tmp_path):
    frames = _clips.pan_frames(3)
    src = tmp_path / "phone.mp4"
    _clips.write_clip(src, frames, rotation=90, audio=False)
    info = video.probe(src)
    assert (info.rotation, info.height, info.width) == (90, 64, 48)
    first = next(video.read_frames(src)).image
    # Display matrix rotation is counterclockwise (FFmpeg's convention, as PyAV documents it).
    assert np.mean(np.abs(first - np.rot90(frames[0]))) < CODEC_TOL / 4


def test_interrupted_writer_leaves_valid_shorter_video(pan_clip, tmp_path):
    path, _ = pan_clip
    out = tmp_path / "out.mp4"
    with video.VideoWriter(out, Fraction(12), audio_from=path) as w:
        try:
            for f in video.read_frames(path):
                if f.index == 5:
                    raise KeyboardInterrupt
                w.write(f.image, f.time)
        except KeyboardInterrupt:
            pass
    got = _clips.streams(out)
    assert got["video"] == 5 and got["audio"] > 0
    # The audio is cut where the video ends (within one AAC packet of 1024 samples).
    full = _clips.streams(path)["audio"]
    assert got["audio"] < full


def test_failed_write_keeps_existing_output(pan_clip, tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")
    with pytest.raises(RuntimeError):
        with video.VideoWriter(out, Fraction(12)) as w:
            w.write(_clips.pan_frames(1)[0])
            raise RuntimeError("crash mid-way")
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_odd_frame_size_is_cropped_to_even(tmp_path):
    out = tmp_path / "odd.mp4"
    frames = [f[:47, :63] for f in _clips.pan_frames(3)]
    with video.VideoWriter(out, Fraction(12)) as w:
        for f in frames:
            w.write(f)
    assert _clips.streams(out)["size"] == (46, 62)


def test_frame_folder_in_and_out(pan_clip, tmp_path):
    folder = tmp_path / "frames"
    with video.VideoWriter(folder, Fraction(12)) as w:
        for f in video.read_frames(pan_clip[0]):
            w.write(f.image, f.time)
    names = sorted(p.name for p in folder.iterdir())
    assert names[0] == "frame_000001.png" and len(names) == 12
    back = list(video.read_frames(folder, fps=Fraction(6)))
    assert len(back) == 12 and back[2].time == Fraction(1, 3)
    assert np.array_equal(back[3].image, image.load_image(folder / "frame_000004.png"))
    assert video.is_video(folder)


def test_resize_on_read(pan_clip):
    f = next(video.read_frames(pan_clip[0], height=24))
    assert f.image.shape == (24, 32, 3)


def test_not_a_video(tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("hello")
    with pytest.raises(InputImageError, match="not a video"):
        video.probe(bad)


def test_no_video_stream(tmp_path):
    import av

    path = tmp_path / "audio.m4a"
    with av.open(str(path), "w", format="mp4") as c:
        a = c.add_stream("aac", rate=8000)
        a.layout = "mono"
        af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        af.sample_rate, af.pts = 8000, 0
        for p in list(a.encode(af)) + list(a.encode(None)):
            c.mux(p)
    with pytest.raises(InputImageError, match="no video stream"):
        video.probe(path)


def test_zero_length_clip(tmp_path):
    import av

    path = tmp_path / "empty.mkv"
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=12)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        c.start_encoding()  # header only
    with pytest.raises(InputImageError, match="no video frames"):
        list(video.read_frames(path))


def test_empty_file(tmp_path):
    (tmp_path / "zero.mp4").write_bytes(b"")
    with pytest.raises(InputImageError, match="empty"):
        video.probe(tmp_path / "zero.mp4")


def test_missing_and_empty_folder(tmp_path):
    with pytest.raises(InputImageError, match="not found"):
        video.probe(tmp_path / "nope.mp4")
    with pytest.raises(InputImageError, match="no numbered images"):
        video.probe(tmp_path)


@pytest.mark.parametrize("name", ["out.xyz", "out.png"])
def test_output_extension_refused(tmp_path, name):
    with pytest.raises(OutputPathError, match="cannot write a video"):
        video.check_output(tmp_path / name)


def test_output_equal_to_input_refused(pan_clip):
    path = pan_clip[0]
    with pytest.raises(OutputPathError, match="is the input"):
        video.check_output(path.parent / ".." / path.parent.name / path.name, source=path)


def test_output_folder_missing(tmp_path):
    with pytest.raises(OutputPathError, match="does not exist"):
        video.check_output(tmp_path / "no" / "out.mp4")
