"""Video input and output: frames in, frames out, audio kept (host side, NumPy and PyAV only).

A video is read one frame at a time (:func:`read_frames`), so memory is bounded by a frame, not by
the clip. Frames are float32 ``(H, W, 3)`` RGB in [0, 1], upright (rotation metadata applied), each
with its presentation time in seconds. :class:`VideoWriter` encodes frames with those times (a
variable-frame-rate clip keeps its timing), copies the input's audio packets without re-encoding,
writes a temporary file in the output folder and renames it into place only when the video is
complete; closing it after an interruption (Ctrl-C) finishes the frames written so far as a valid,
shorter video. A folder of numbered images (``frame_0001.png``, ...) works as input and as output.

PyAV (``pip install "nst_jax[video]"``) ships FFmpeg inside its wheel; it is imported on first use,
so ``import nst_jax.video`` works without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from nst_jax import files
from nst_jax import image as imagemod
from nst_jax.errors import ConfigError, InputImageError, OutputPathError

# Containers read by extension; anything else is probed only when asked (see :func:`is_video`).
READ_EXTENSIONS: tuple[str, ...] = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg",
                                    ".ts")
# extension -> (FFmpeg muxer, video encoder). H.264 in yuv420p plays everywhere; VP9 for WebM.
WRITE_FORMATS: dict[str, tuple[str, str]] = {
    ".mp4": ("mp4", "libx264"),
    ".m4v": ("mp4", "libx264"),
    ".mov": ("mov", "libx264"),
    ".mkv": ("matroska", "libx264"),
    ".webm": ("webm", "libvpx-vp9"),
    ".avi": ("avi", "mpeg4"),
}
WRITE_EXTENSIONS: tuple[str, ...] = tuple(WRITE_FORMATS)
FRAME_NAME = "frame_{:06d}.png"  # names of frames written to a folder
DEFAULT_FOLDER_FPS = Fraction(25)  # frame rate of a folder of images, which has none of its own
_NUMBER = re.compile(r"(\d+)(?!.*\d)")  # the last run of digits in a file name
_PTS_BASE = Fraction(1, 90000)  # output time base: the MPEG clock, fine enough for any frame rate


def _av():
    try:
        import av
    except ImportError:
        raise ConfigError('video needs PyAV; install it with pip install "nst_jax[video]"') from None
    return av


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` finds out about a clip before decoding it."""

    path: Path
    height: int  # upright size, after rotation metadata
    width: int
    fps: Fraction  # average frame rate (exact rational)
    frames: int | None  # frame count from the container, when it declares one
    rotation: int  # degrees counterclockwise applied to each decoded frame (0, 90, 180, 270)
    has_audio: bool
    is_folder: bool = False


@dataclasses.dataclass(frozen=True)
class Frame:
    image: np.ndarray  # (H, W, 3) float32 in [0, 1], upright
    time: Fraction  # presentation time in seconds, as in the container (a folder's start at 0)
    index: int


def is_video_file(path: str | os.PathLike) -> bool:
    """True for a path (not a folder) with a video container's extension (how the CLIs detect a clip)."""
    path = Path(path)
    return not path.is_dir() and path.suffix.lower() in READ_EXTENSIONS


def is_video(path: str | os.PathLike) -> bool:
    """True for a folder (of numbered frames) or a file with a video container's extension."""
    path = Path(path)
    return path.is_dir() or path.suffix.lower() in READ_EXTENSIONS


# ----------------------------------------------------------------------------------------------
# Reading


def _folder_frames(folder: Path) -> list[Path]:
    files = [p for p in imagemod.list_images(folder, recursive=False) if _NUMBER.search(p.stem)]
    if not files:
        raise InputImageError(f"{folder} holds no numbered images (e.g. frame_0001.png); put the frames "
                              "there or pass a video file")
    return sorted(files, key=lambda p: (int(_NUMBER.search(p.stem).group(1)), p.name))


@contextlib.contextmanager
def _opened(path: Path) -> Iterator:
    av = _av()
    if not path.exists():
        raise InputImageError(f"content video not found: {path}; check the path")
    if path.is_file() and path.stat().st_size == 0:
        raise InputImageError(f"{path} is empty (0 bytes); pass a clip with at least one frame")
    try:
        container = av.open(str(path), "r")
    except av.error.EOFError:
        raise InputImageError(f"{path} has no video frames (zero-length or truncated clip); pass a clip "
                              "with at least one frame") from None
    except (av.error.FFmpegError, UnicodeDecodeError) as err:
        raise InputImageError(f"{path} is not a video FFmpeg can read ({_reason(err)}); pass an .mp4, "
                              ".mov, .mkv, .webm or .avi file, or a folder of numbered frames") from None
    try:
        if not container.streams.video:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
            raise InputImageError(f"{path} has no video stream ({kinds}); pass a file with video")
        yield container
    finally:
        container.close()


def _reason(err: BaseException) -> str:
    return str(getattr(err, "strerror", None) or err).splitlines()[0] if str(err) else type(err).__name__


def _rotation(stream, first_frame) -> int:
    degrees = getattr(first_frame, "rotation", 0) if first_frame is not None else 0
    return int(round(degrees / 90.0)) % 4 * 90


def probe(path: str | os.PathLike) -> VideoInfo:
    """Reads a clip's size, rate, frame count, rotation and audio presence (decodes one frame).

    Raises:
      InputImageError: missing path, not a video, no video stream, no frames, frames too large.
    """
    path = Path(path)
    if path.is_dir():
        files = _folder_frames(path)
        h, w = imagemod.image_size(files[0], "first frame")
        return VideoInfo(path, h, w, DEFAULT_FOLDER_FPS, len(files), 0, False, is_folder=True)
    av = _av()
    with _opened(path) as container:
        stream = container.streams.video[0]
        first = None
        try:
            first = next(container.decode(stream), None)
        except av.error.FFmpegError as err:
            raise InputImageError(f"{path}: the first video frame cannot be decoded ({_reason(err)}); "
                                  "re-encode the clip") from None
        if first is None:
            raise InputImageError(f"{path} has no video frames (zero-length clip); pass a clip with at "
                                  "least one frame")
        rotation = _rotation(stream, first)
        h, w = first.height, first.width
        if rotation in (90, 270):
            h, w = w, h
        _check_pixels(path, h, w)
        # FFmpeg's guess prefers the nominal rate (r_frame_rate) to the average over a rounded duration.
        rate = stream.guessed_rate or stream.average_rate or stream.base_rate
        fps = Fraction(rate) if rate else DEFAULT_FOLDER_FPS
        frames = int(stream.frames) if stream.frames else None
        return VideoInfo(path, h, w, fps, frames, rotation, bool(container.streams.audio))


def _check_pixels(path: Path, h: int, w: int) -> None:
    if h * w > imagemod.max_pixels():
        raise InputImageError(f"{path}: frames of {w}x{h} px exceed the {imagemod.max_pixels():.0f}-pixel "
                              "limit; downscale the clip first")


def read_frames(path: str | os.PathLike, *, height: int | None = None,
                fps: Fraction | None = None) -> Iterator[Frame]:
    """Yields the frames of a video file or a folder of numbered images, one at a time.

    Args:
      path: a video file, or a folder of images numbered by the last digits in their names.
      height: resize every frame to this height (width keeps the aspect ratio); None keeps the size.
      fps: frame rate given to a folder of images (default :data:`DEFAULT_FOLDER_FPS`); ignored for
        video files, whose frames keep their own timestamps.

    Raises:
      InputImageError: see :func:`probe`; a frame that cannot be decoded mid-clip.
    """
    path = Path(path)
    info = probe(path)  # the errors above come before the first frame is yielded

    def sized(img: np.ndarray) -> np.ndarray:
        return img if height is None else imagemod.resize(img, height=height)

    if info.is_folder:
        rate = Fraction(fps) if fps is not None else info.fps
        for i, file in enumerate(_folder_frames(path)):
            img = imagemod.load_image(file, "video frame")
            if img.shape[:2] != (info.height, info.width):
                raise InputImageError(f"{file} is {img.shape[1]}x{img.shape[0]} px but the first frame is "
                                      f"{info.width}x{info.height}; all frames must have one size")
            yield Frame(sized(img), i / rate, i)
        return
    av = _av()
    with _opened(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for i, frame in enumerate(container.decode(stream)):
                img = frame.to_ndarray(format="rgb24")
                if info.rotation:
                    img = np.rot90(img, k=info.rotation // 90)
                if img.shape[:2] != (info.height, info.width):
                    raise InputImageError(f"{path}: frame {i} is {img.shape[1]}x{img.shape[0]} px but the "
                                          f"first is {info.width}x{info.height}; re-encode the clip at one "
                                          "size")
                pts = frame.pts if frame.pts is not None else i * (1 / (info.fps * stream.time_base))
                # Times stay as in the container (not shifted to 0) so the copied audio stays in sync.
                t = Fraction(pts) * stream.time_base
                yield Frame(sized(np.ascontiguousarray(img, dtype=np.float32) / 255.0), t, i)
        except av.error.FFmpegError as err:
            raise InputImageError(f"{path}: video frame cannot be decoded ({_reason(err)}); re-encode the "
                                  "clip") from None


# ----------------------------------------------------------------------------------------------
# Writing


def check_output(path: str | os.PathLike, source: str | os.PathLike | None = None) -> Path:
    """Checks a video output path (file or frame folder) before a long job starts.

    A path without an extension is a folder of numbered PNG frames (created if missing).

    Raises:
      OutputPathError: same path as the input, missing or unwritable folder, unknown extension.
    """
    path = Path(path)
    if source is not None and _same_file(path, Path(source)):
        raise OutputPathError(f"the output {path} is the input video; choose another --output, the "
                              "input must stay intact")
    if path.is_dir() or not path.suffix:
        parent = path if path.is_dir() else path.parent
    else:
        if path.suffix.lower() not in WRITE_FORMATS:
            raise OutputPathError(f'cannot write a video with extension "{path.suffix}": {path}; use one '
                                  f"of {', '.join(WRITE_EXTENSIONS)} or a folder name for PNG frames")
        parent = path.parent
    if not parent.is_dir():
        raise OutputPathError(f"output folder does not exist: {parent}; create it or choose another "
                              "--output")
    if not os.access(parent, os.W_OK):
        raise OutputPathError(f"output folder is not writable: {parent}; choose another --output")
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.clip(np.asarray(img, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8))


class VideoWriter:
    """Encodes frames to ``path`` with their timestamps, copying ``audio_from``'s audio packets.

    Use as a context manager. Frames go to a temporary file in the output folder; leaving the
    ``with`` block normally finishes the video and renames it over ``path`` (also after fewer frames
    than the input had: the caller catches Ctrl-C, stops writing and leaves the block normally, and
    the audio is cut at the last frame). Leaving it with an exception removes the temporary file, so
    an existing ``path`` is never replaced by a half-written video.

    H.264 and VP9 in yuv420p need even frame sizes: an odd height or width is cropped by its last
    row or column (deviation from the input size by one pixel, never a resampling).

    Args:
      path: output video (extension in :data:`WRITE_EXTENSIONS`) or a folder for PNG frames.
      fps: nominal frame rate (exact rational); frames without a time get ``index / fps``.
      audio_from: a video whose first audio stream is copied (remuxed, not re-encoded), or None.
      quality: x264 CRF (lower is better; 18 is visually lossless).
    """

    def __init__(self, path: str | os.PathLike, fps: Fraction, *, audio_from: str | os.PathLike | None = None,
                 quality: int = 18):
        self.path = Path(path)
        self.fps = Fraction(fps)
        self.audio_from = None if audio_from is None or Path(audio_from).is_dir() else Path(audio_from)
        self.quality = quality
        self.frames = 0
        self.last_time: Fraction | None = None
        self.size: tuple[int, int] | None = None
        self._container = self._stream = self._last_pts = None
        self._folder = not self.path.suffix

    def __enter__(self) -> VideoWriter:
        if self._folder:
            self.path.mkdir(exist_ok=True)
            return self
        av = _av()
        muxer, self._codec = WRITE_FORMATS[self.path.suffix.lower()]
        # files.atomic_write: a temporary file renamed over the path only when the block succeeds.
        self._atomic = files.atomic_write(self.path)
        handle = self._atomic.__enter__()
        try:
            self._container = av.open(handle, "w", format=muxer)
        except (av.error.FFmpegError, OSError) as err:
            self._atomic.__exit__(type(err), err, None)
            raise OutputPathError(f"cannot create {self.path} ({_reason(err)}); check the folder's "
                                  "permissions and free space") from None
        return self

    def _open_stream(self, h: int, w: int) -> None:
        av = _av()
        stream = self._container.add_stream(self._codec, rate=self.fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.time_base = _PTS_BASE
        stream.codec_context.time_base = _PTS_BASE
        if self._codec == "libx264":
            stream.options = {"crf": str(self.quality)}
        self._stream = stream
        self._audio_in = self._audio_out = None
        if self.audio_from is not None:
            source = av.open(str(self.audio_from), "r")
            if source.streams.audio:
                self._audio_in = source
                try:
                    self._audio_out = self._container.add_stream_from_template(source.streams.audio[0])
                except (av.error.FFmpegError, ValueError) as err:
                    source.close()
                    raise OutputPathError(
                        f"the input's audio ({source.streams.audio[0].codec_context.name}) cannot be copied "
                        f"into {self.path.suffix} ({_reason(err)}); use .mkv or .mp4 for --output") from None
            else:
                source.close()

    def write(self, image: np.ndarray, time: Fraction | float | None = None) -> None:
        """Appends one (H, W, 3) float frame in [0, 1] shown at ``time`` seconds (default index/fps)."""
        image = np.asarray(image)
        if image.ndim == 4 and image.shape[0] == 1:
            image = image[0]
        if time is None:
            time = self.frames / self.fps
        time = Fraction(time).limit_denominator(1 << 20)
        if self._folder:
            imagemod.save_image(self.path / FRAME_NAME.format(self.frames + 1), image)
        else:
            h, w = image.shape[:2]
            h, w = h - h % 2, w - w % 2
            if h < 2 or w < 2:
                raise InputImageError(f"a video frame of {image.shape[1]}x{image.shape[0]} px is too small "
                                      "to encode; use a larger --size")
            if self._stream is None:
                self._open_stream(h, w)
                self.size = (h, w)
            if (h, w) != self.size:
                raise ConfigError(f"frame {self.frames} is {w}x{h} px but the video is "
                                  f"{self.size[1]}x{self.size[0]}; every frame must have one size")
            frame = _av().VideoFrame.from_ndarray(_to_uint8(image[:h, :w]), format="rgb24")
            pts = int(round(time / _PTS_BASE))
            if self._last_pts is not None and pts <= self._last_pts:
                pts = self._last_pts + 1  # two times closer than the clock: keep the order
            frame.pts, frame.time_base = pts, _PTS_BASE
            self._last_pts = pts
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        self.frames += 1
        self.last_time = time

    def _copy_audio(self) -> None:
        if self._audio_out is None:
            return
        # Keep the audio up to where the video ends (the last frame's time plus one frame).
        end = (self.last_time or Fraction(0)) + 1 / self.fps
        in_stream = self._audio_in.streams.audio[0]
        for packet in self._audio_in.demux(in_stream):
            if packet.dts is None:
                continue
            if packet.pts is not None and packet.pts * in_stream.time_base >= end:
                break
            packet.stream = self._audio_out
            self._container.mux(packet)

    def __exit__(self, kind, err, tb) -> None:
        if self._folder:
            return
        failure = (kind, err, tb)
        try:
            if kind is None and self.frames == 0:
                raise InputImageError(f"no frames were written to {self.path}; the input had none")
            if kind is None:
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
                self._copy_audio()
        except BaseException as exc:  # noqa: BLE001 - re-raised below after the temp file is removed
            failure = (type(exc), exc, exc.__traceback__)
            raise
        finally:
            self._container.close()
            if getattr(self, "_audio_in", None) is not None:
                self._audio_in.close()
            # Renames the temporary file over the path on success, removes it on failure.
            self._atomic.__exit__(*failure)


def even_size(height: int, width: int) -> tuple[int, int]:
    """The frame size a yuv420p encoder keeps: each side rounded down to even."""
    return height - height % 2, width - width % 2

