"""Per-session storage: a random id, a private temporary folder, removed when the session ends.

A browser tab gets a session when it loads the page. Its uploads are written under names the
server chooses inside the session's folder (the browser's file name is kept only as text for
display and the command line). A session ends when the tab says so (page hide), after
``timeout`` seconds without a request, or when the server stops; its runs are stopped and its
folder deleted. A tab that goes without saying so (killed, crashed, its page-hide request lost)
drops its event stream: when no stream of the session is open again ``stream_grace`` seconds
later, the session's queued and running runs are stopped (a running one after its current
chunk, keeping its image), so the device is free for the others.
"""

from __future__ import annotations

import io
import itertools
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from nst_jax import files
from nst_jax import image as imageio
from nst_jax.app import jobs
from nst_jax.errors import InputImageError

SLOTS: tuple[str, ...] = ("content", "style", "style2")
MAX_UPLOAD_BYTES = 64 << 20  # one uploaded file; the pixel budget is image.max_pixels(), as in the CLIs
THUMB_HEIGHT = 256
NAME_CHARS = 120
MAX_RUNS = 4  # a browser file name is shown (and put in the command line) cut to this length


def display_name(name: str | None, slot: str) -> str:
    """A browser's file name reduced to printable text without folders (display only)."""
    text = "".join(ch for ch in (name or "") if ch.isprintable())
    text = text.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return text[:NAME_CHARS] or f"{slot}.png"


def png_bytes(image: np.ndarray, compress_level: int = 1) -> bytes:
    """8-bit PNG of a float (H, W, 3) image in [0, 1], fast to encode (for display)."""
    from PIL import Image

    pixels = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


class Session:
    def __init__(self, root: Path):
        self.id = secrets.token_urlsafe(24)
        self.dir = Path(tempfile.mkdtemp(prefix="session-", dir=root))
        self.lock = threading.Lock()
        self.last_seen = time.monotonic()
        content, style = imageio.default_content_path(), imageio.default_style_path()
        self.inputs: dict[str, jobs.Input] = {
            "content": jobs.Input(content, None, *imageio.image_size(content, "content image")),
            "style": jobs.Input(style, None, *imageio.image_size(style, "style image")),
        }
        self.thumbs: dict[str, bytes] = {}
        self.versions = dict.fromkeys(SLOTS, 0)
        self.adain_cache = jobs.AdainCache()
        self.results: dict[str, np.ndarray] = {}  # "adain" -> last AdaIN image
        self.commands: dict[str, str] = {}
        self.runs: list[jobs.Run] = []  # the latest MAX_RUNS, so memory does not grow with use
        self.streams = 0  # open event streams (guarded by lock)
        self.stream_epoch = 0  # grows with every stream opened (guarded by lock)
        self._names = itertools.count()

    def add_run(self, run: jobs.Run) -> None:
        with self.lock:
            self.runs.append(run)
            finished = [r for r in self.runs if r.finished]
            for old in finished[:max(len(self.runs) - MAX_RUNS, 0)]:
                self.runs.remove(old)

    def run(self, run_id: str) -> jobs.Run | None:
        with self.lock:
            return next((r for r in self.runs if r.id == run_id), None)

    def styles(self) -> list[jobs.Input]:
        return [self.inputs[k] for k in ("style", "style2") if k in self.inputs]

    def store_upload(self, slot: str, data: bytes, name: str | None) -> jobs.Input:
        """Checks an uploaded image (header first, then a full decode) and makes it the slot's input.

        Raises:
          InputImageError: not an image, damaged, too many pixels, or too large a file.
        """
        what = "content image" if slot == "content" else "style image"
        if not data:
            raise InputImageError(f"the {what} upload is empty; choose an image file")
        path = self.dir / f"{slot}-{next(self._names)}.upload"
        files.atomic_write_bytes(path, data)
        shown = display_name(name, slot)
        ok = False
        try:
            height, width = imageio.image_size(path, what)  # refuses too many pixels before decoding
            thumb = imageio.resize(imageio.load_image(path, what, min_size=(THUMB_HEIGHT, 1)),
                                   height=min(THUMB_HEIGHT, height))
            ok = True
        except InputImageError as err:
            # The library names the file it read; the page names the file the user chose.
            raise InputImageError(str(err).replace(str(path), shown)) from None
        finally:
            if not ok:
                path.unlink(missing_ok=True)
        inp = jobs.Input(path, shown, height, width)
        with self.lock:
            old = self.inputs.get(slot)
            self.inputs[slot] = inp
            self.thumbs[slot] = png_bytes(thumb)
            self.versions[slot] += 1
        if old is not None and old.path.parent == self.dir:
            old.path.unlink(missing_ok=True)
        return inp

    def remove(self, slot: str) -> None:
        with self.lock:
            old = self.inputs.pop(slot, None)
            self.thumbs.pop(slot, None)
            self.versions[slot] += 1
        if old is not None and old.path.parent == self.dir:
            old.path.unlink(missing_ok=True)

    def thumb(self, slot: str) -> bytes | None:
        with self.lock:
            if slot not in self.inputs:
                return None
            if slot not in self.thumbs:  # a built-in asset
                inp = self.inputs[slot]
                img = imageio.load_image(inp.path, slot, min_size=(THUMB_HEIGHT, 1))
                self.thumbs[slot] = png_bytes(imageio.resize(img, height=min(THUMB_HEIGHT, inp.height)))
            return self.thumbs[slot]


class Sessions:
    """All live sessions of one server; ``close`` and ``sweep`` stop their runs and delete their files."""

    def __init__(self, engine: jobs.Engine, timeout: float = 1800.0, stream_grace: float = 10.0):
        self.engine = engine
        self.timeout = timeout
        self.stream_grace = stream_grace
        self._timers: set[threading.Timer] = set()
        self.root = Path(tempfile.mkdtemp(prefix="nst-app-"))
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}

    def create(self) -> Session:
        session = Session(self.root)
        with self._lock:
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        with self._lock:
            session = self._sessions.get(session_id or "")
        if session is not None:
            session.last_seen = time.monotonic()
        return session

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def close(self, session_id: str) -> None:
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is not None:
            for run in session.runs:
                self.engine.stop(run)
            shutil.rmtree(session.dir, ignore_errors=True)

    def stream_opened(self, session: Session) -> None:
        with session.lock:
            session.streams += 1
            session.stream_epoch += 1

    def stream_ended(self, session: Session, dropped: bool) -> None:
        """Counts a stream's end; a dropped last stream starts the grace period of its session."""
        with session.lock:
            session.streams -= 1
            if not dropped or session.streams > 0:
                return
            epoch = session.stream_epoch
            runs = [r for r in session.runs if not r.finished]
        if not runs:
            return
        timer = threading.Timer(self.stream_grace, self._stop_orphaned, (session, epoch, runs))
        timer.daemon = True
        timer.name = "nst-app-stream-grace"
        with self._lock:
            self._timers.add(timer)
        timer.start()

    def _stop_orphaned(self, session: Session, epoch: int, runs: list[jobs.Run]) -> None:
        with self._lock:
            self._timers.discard(threading.current_thread())
        with session.lock:
            if session.streams > 0 or session.stream_epoch != epoch:
                return  # a stream is open again (EventSource reconnected, a new run is watched)
        for run in runs:
            self.engine.stop(run)

    def cancel_timers(self) -> None:
        with self._lock:
            timers, self._timers = list(self._timers), set()
        for timer in timers:
            timer.cancel()

    def sweep(self, now: float | None = None) -> int:
        """Ends the sessions idle for longer than ``timeout``; returns how many."""
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [sid for sid, s in self._sessions.items() if now - s.last_seen > self.timeout]
        for sid in idle:
            self.close(sid)
        return len(idle)

    def close_all(self) -> None:
        with self._lock:
            ids = list(self._sessions)
        for sid in ids:
            self.close(sid)
        shutil.rmtree(self.root, ignore_errors=True)
