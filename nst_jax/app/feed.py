"""A feed of one optimization's progress: the latest image, the loss curves, status and ETA.

The device thread publishes into it (cheap: a reference swap under a lock, no encoding); web
handlers read snapshots of it and encode the image only when a browser asks for it. Used by the
app's Gatys jobs and by :class:`nst_jax.app.live.LiveView`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping

import numpy as np

STATUSES: tuple[str, ...] = ("queued", "running", "done", "stopped", "error")
FINISHED: tuple[str, ...] = ("done", "stopped", "error")
# The curve keeps at most this many points per term; older points are thinned (every other one
# dropped), so a long run costs bounded memory and event size.
MAX_POINTS = 512


class Feed:
    """Thread-safe progress of one run; ``version`` grows with every change."""

    def __init__(self, total: int | None = None):
        self._lock = threading.Lock()
        self.version = 0
        self.total = total
        self.iteration = 0
        self.image: np.ndarray | None = None  # (H, W, 3) float32 in [0, 1]
        self.image_version = 0
        self.curves: dict[str, list[tuple[int, float]]] = {}
        self.status = "queued"
        self.message = ""
        self.position = 0  # runs ahead of this one in the queue
        self._rates: list[float] = []  # seconds per iteration of each update after the first
        self._last: tuple[int, float] | None = None
        self.closed_at: float | None = None

    def publish(self, iteration: int, image: np.ndarray | None, losses: Mapping[str, float]) -> None:
        """Records the state after ``iteration`` iterations: the image (kept by reference) and losses."""
        now = time.perf_counter()
        with self._lock:
            if self._last is not None and iteration > self._last[0]:
                self._rates.append((now - self._last[1]) / (iteration - self._last[0]))
                del self._rates[:-8]
            self._last = (iteration, now)
            self.iteration = iteration
            if image is not None:
                self.image = image
                self.image_version += 1
            for name, value in losses.items():
                points = self.curves.setdefault(name, [])
                points.append((iteration, float(value)))
                if len(points) > MAX_POINTS:
                    points[:] = points[::2]
            self.status, self.message = "running", ""
            self.version += 1

    def set_status(self, status: str, message: str = "", position: int | None = None) -> None:
        with self._lock:
            self.status, self.message = status, message
            if position is not None:
                self.position = position
            if status in FINISHED:
                self.closed_at = time.monotonic()
            self.version += 1

    def eta_seconds(self) -> float | None:
        """Remaining seconds from the median rate of the recent updates (the first one compiles)."""
        if self.total is None or not self._rates:
            return None
        rate = float(np.median(self._rates))
        return max(self.total - self.iteration, 0) * rate

    def state(self) -> dict:
        """A JSON-ready snapshot (without the image, which the frame endpoint serves)."""
        with self._lock:
            eta = self.eta_seconds() if self.status == "running" else None
            return {
                "version": self.version, "status": self.status, "message": self.message,
                "iteration": self.iteration, "total": self.total, "position": self.position,
                "eta": None if eta is None or not math.isfinite(eta) else round(eta, 1),
                "frame": self.image_version,
                "curves": {k: [[i, v if math.isfinite(v) else None] for i, v in pts]
                           for k, pts in self.curves.items()},
            }

    def latest_image(self) -> tuple[int, np.ndarray | None]:
        with self._lock:
            return self.image_version, self.image
