"""The live view of a run in progress that a command line serves (``nst-gatys ... --web``).

Usage from any progress callback::

    view = LiveView(port=7860, total=iterations)   # starts serving at once
    view.publish(iteration, image, {"total": loss})
    view.close()

``publish`` only swaps references under a lock; the PNG is encoded when a browser asks for it, on
the server's threads, so the run is not slowed by encoding.
"""

from __future__ import annotations

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from nst_jax.app import server
from nst_jax.app.feed import Feed


class LiveView:
    """A page at ``url`` showing the latest published image and loss curves."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1", total: int | None = None, title: str = "nst_jax"):
        self.feed = Feed(total=total)
        self.feed.set_status("running", "starting")
        self._title = title
        routes = [
            Route("/", self._index),
            Route("/static/{name}", self._static),
            Route("/events", lambda r: server.feed_stream(r, self.feed)),
            Route("/frame", self._frame),
        ]
        self._server = server.Server(Starlette(routes=routes), host, port).start()

    @property
    def url(self) -> str:
        return self._server.url

    def publish(self, iteration: int, image: np.ndarray | None, losses: dict[str, float]) -> None:
        """Shows ``image`` ((H, W, 3) in [0, 1]) and adds ``losses`` to the curves at ``iteration``."""
        self.feed.publish(iteration, image, losses)

    def finish(self, status: str = "done", message: str = "") -> None:
        self.feed.set_status(status, message)

    def close(self) -> None:
        self._server.stop()

    async def _index(self, request: Request) -> Response:
        return Response(server.asset("live.html"), media_type="text/html", headers={"Cache-Control": "no-store"})

    async def _static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in server.STATIC:
            return Response(status_code=404)
        return Response(server.asset(name), media_type=server.STATIC[name])

    async def _frame(self, request: Request) -> Response:
        return await server.feed_frame(self.feed)
