"""The web app: a Starlette application over :mod:`nst_jax.app.jobs`, served by uvicorn.

Routes (JSON errors are ``{"error": "<one line>"}`` with status 4xx; no traceback ever reaches a
page):

* ``GET /`` the page (starts a session: an HttpOnly cookie holding a random id);
* ``POST /api/upload/{content|style|style2}`` the raw file as the body (bounded);
* ``GET /api/input/{slot}`` a thumbnail of what the server decoded;
* ``POST /api/adain`` settings -> result image (data URL), timings and the CLI command;
* ``POST /api/gatys`` settings -> a queued run; ``GET /api/runs/{id}/events`` its progress as
  server-sent events; ``GET /api/runs/{id}/frame`` its latest image; ``POST /api/runs/{id}/stop``;
* ``GET /api/download/{adain|run id}?bits=8|16`` the result as a PNG file;
* ``POST /api/session/close`` the tab is going away: stop its runs, delete its files.

A tab that goes without saying so is noticed by its event stream dropping: when none of the
session's streams comes back within ``stream_grace`` seconds, the session's runs are stopped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.resources
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from nst_jax import image as imageio
from nst_jax.app import jobs
from nst_jax.app.feed import FINISHED, Feed
from nst_jax.app.sessions import MAX_UPLOAD_BYTES, SLOTS, Session, Sessions, png_bytes
from nst_jax.errors import ConfigError, NSTError

COOKIE = "nst_session"
MAX_JSON_BYTES = 16 << 10
EVENT_POLL_S = 0.05
KEEPALIVE_S = 15.0
# A session whose last event stream dropped and did not come back within this many seconds has
# lost its tab (closed without its page-hide request, crashed, network gone): its runs are stopped.
STREAM_GRACE_S = 10.0
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}


class RequestError(Exception):
    """A bad request: answered with its status and one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def asset(name: str) -> bytes:
    return importlib.resources.files("nst_jax.app").joinpath("static", name).read_bytes()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it exceeds ``limit`` bytes, declared or not."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestError(400, "bad Content-Length header")
        if int(declared) > limit:
            raise RequestError(413, f"the upload is {int(declared) / 2**20:.1f} MiB; the limit is "
                               f"{limit / 2**20:.0f} MiB: choose a smaller file")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the upload is over the {limit / 2**20:.0f} MiB limit; choose a smaller file")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request):
    body = await read_body(request, MAX_JSON_BYTES)
    try:
        return json.loads(body or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RequestError(400, "the settings are not valid JSON") from None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def feed_stream(request: Request, feed: Feed, touch: Callable[[], None] = lambda: None,
                on_open: Callable[[], None] = lambda: None,
                on_end: Callable[[bool], None] = lambda dropped: None) -> StreamingResponse:
    """Server-sent events: the feed's state after every change, until it finishes or the tab goes.

    ``on_open()`` is called when the stream starts and ``on_end(dropped)`` once when it ends;
    ``dropped`` is true when it ended before its feed finished: the browser went away (a closed
    tab, a lost connection) or the server is stopping.
    """

    async def events():
        on_open()
        complete = False
        try:
            async for chunk in states():
                yield chunk
            complete = feed.status in FINISHED
        finally:  # also reached when the server cancels the stream on a client disconnect
            on_end(not complete)

    async def states():
        seen, last_sent = -1, time.monotonic()
        while True:
            if feed.version != seen:
                state = feed.state()
                seen = state["version"]
                touch()
                yield f"data: {json.dumps(state)}\n\n"
                last_sent = time.monotonic()
                if state["status"] in FINISHED:
                    return
            elif time.monotonic() - last_sent > KEEPALIVE_S:
                touch()
                yield ": keep-alive\n\n"
                last_sent = time.monotonic()
            if await request.is_disconnected():
                return
            await asyncio.sleep(EVENT_POLL_S)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def feed_frame(feed: Feed) -> Response:
    _, image = feed.latest_image()
    if image is None:
        return Response(status_code=204)
    data = await run_in_threadpool(png_bytes, image)
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})


class App:
    """The application state: the engine (device thread), the sessions, the weights to use."""

    def __init__(self, weights: jobs.WeightPaths = jobs.WeightPaths(), *, session_timeout: float = 1800.0,
                 max_upload_bytes: int = MAX_UPLOAD_BYTES, stream_grace: float = STREAM_GRACE_S):
        self.weights = weights
        self.engine = jobs.Engine(weights)
        self.sessions = Sessions(self.engine, timeout=session_timeout, stream_grace=stream_grace)
        self.max_upload_bytes = max_upload_bytes
        self._janitor_stop = threading.Event()
        self._janitor = threading.Thread(target=self._sweep, name="nst-app-sessions", daemon=True)
        self._janitor.start()
        self.starlette = Starlette(routes=[
            Route("/", self.index),
            Route("/static/{name}", self.static),
            Route("/api/session/close", self.close_session, methods=["POST"]),
            Route("/api/upload/{slot}", self.upload, methods=["POST", "DELETE"]),
            Route("/api/input/{slot}", self.input_thumb),
            Route("/api/adain", self.adain, methods=["POST"]),
            Route("/api/gatys", self.gatys, methods=["POST"]),
            Route("/api/runs/{run_id}/events", self.run_events),
            Route("/api/runs/{run_id}/frame", self.run_frame),
            Route("/api/runs/{run_id}/stop", self.run_stop, methods=["POST"]),
            Route("/api/download/{what}", self.download),
        ], exception_handlers={RequestError: self._request_error, NSTError: self._nst_error})

    async def __call__(self, scope, receive, send):
        await self.starlette(scope, receive, send)

    def close(self) -> None:
        self._janitor_stop.set()
        self.sessions.cancel_timers()
        self.sessions.close_all()
        self.engine.close()

    def _sweep(self) -> None:
        while not self._janitor_stop.wait(min(60.0, self.sessions.timeout / 4)):
            self.sessions.sweep()

    @staticmethod
    async def _request_error(request: Request, err: RequestError) -> JSONResponse:
        return _error(err.status, str(err))

    @staticmethod
    async def _nst_error(request: Request, err: NSTError) -> JSONResponse:
        return _error(400, str(err))

    def _session(self, request: Request) -> Session:
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            raise RequestError(401, "this page's session has ended; reload the page")
        return session

    # -- routes

    async def index(self, request: Request) -> Response:
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            session = await run_in_threadpool(self.sessions.create)
        response = Response(asset("index.html"), media_type="text/html",
                            headers={"Cache-Control": "no-store"})
        response.set_cookie(COOKIE, session.id, httponly=True, samesite="strict")
        return response

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:  # a fixed list: no path from the request reaches the file system
            return _error(404, "not found")
        return Response(asset(name), media_type=STATIC[name])

    async def close_session(self, request: Request) -> Response:
        sid = request.cookies.get(COOKIE)
        if sid:
            await run_in_threadpool(self.sessions.close, sid)
        return Response(status_code=204)

    @staticmethod
    def _slot(request: Request) -> str:
        slot = request.path_params["slot"]
        if slot not in SLOTS:
            raise RequestError(404, f"unknown image slot {slot[:40]!r}; one of {', '.join(SLOTS)}")
        return slot

    async def upload(self, request: Request) -> Response:
        session = self._session(request)
        slot = self._slot(request)
        if request.method == "DELETE":
            if slot != "style2":
                raise RequestError(400, "only the second style can be removed")
            session.remove(slot)
            return JSONResponse({"slot": slot, "version": session.versions[slot]})
        data = await read_body(request, self.max_upload_bytes)
        name = urllib.parse.unquote(request.headers.get("x-filename", ""))  # display text only
        inp = await run_in_threadpool(session.store_upload, slot, data, name)
        return JSONResponse({"slot": slot, "name": inp.name, "width": inp.width, "height": inp.height,
                             "version": session.versions[slot]})

    async def input_thumb(self, request: Request) -> Response:
        session = self._session(request)
        data = await run_in_threadpool(session.thumb, self._slot(request))
        if data is None:
            return _error(404, "no image in that slot")
        return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})

    async def adain(self, request: Request) -> Response:
        session = self._session(request)
        settings = jobs.AdainSettings.from_json(await read_json(request))
        content, styles = session.inputs["content"], session.styles()
        if len(styles) == 1 and settings.mix:
            raise ConfigError("the style mix needs a second style image")
        t0 = time.perf_counter()

        def work():
            return jobs.adain_render(self.engine, session.adain_cache, content, styles, settings)

        image, encoded = await run_in_threadpool(self.engine.call, work)
        seconds = time.perf_counter() - t0
        session.results["adain"] = image
        session.commands["adain"] = jobs.adain_command(settings, content, styles, self.weights)
        data = await run_in_threadpool(png_bytes, image)
        return JSONResponse({
            "image": "data:image/png;base64," + base64.b64encode(data).decode(),
            "width": image.shape[1], "height": image.shape[0], "seconds": round(seconds, 4),
            "encoded": encoded, "command": session.commands["adain"],
        })

    async def gatys(self, request: Request) -> Response:
        session = self._session(request)
        settings = jobs.GatysSettings.from_json(await read_json(request))
        run = jobs.Run(session.id, settings, session.inputs["content"], session.inputs["style"])
        session.add_run(run)
        self.engine.submit(run)
        return JSONResponse({"run": run.id, "command": jobs.gatys_command(settings, run.content, run.style,
                                                                          self.weights)})

    def _run(self, request: Request) -> tuple[Session, jobs.Run]:
        session = self._session(request)
        run = session.run(request.path_params["run_id"])
        if run is None:
            raise RequestError(404, "no such run in this session")
        return session, run

    async def run_events(self, request: Request) -> Response:
        session, run = self._run(request)
        return feed_stream(request, run.feed, touch=lambda: setattr(session, "last_seen", time.monotonic()),
                           on_open=lambda: self.sessions.stream_opened(session),
                           on_end=lambda dropped: self.sessions.stream_ended(session, dropped))

    async def run_frame(self, request: Request) -> Response:
        _, run = self._run(request)
        return await feed_frame(run.feed)

    async def run_stop(self, request: Request) -> Response:
        _, run = self._run(request)
        self.engine.stop(run)
        return JSONResponse({"run": run.id})

    async def download(self, request: Request) -> Response:
        session = self._session(request)
        what = request.path_params["what"]
        bits = request.query_params.get("bits", "8")
        if bits not in ("8", "16"):
            raise RequestError(400, "bits must be 8 or 16")
        if what == "adain":
            image = session.results.get("adain")
        else:
            run = session.run(what)
            image = None if run is None else run.feed.latest_image()[1]
        if image is None:
            raise RequestError(404, "there is no result to download yet")
        path = session.dir / f"result-{what}-{bits}.png"
        await run_in_threadpool(imageio.save_image, path, image, bits=int(bits))
        return FileResponse(path, media_type="image/png", filename="stylized.png",
                            headers={"Cache-Control": "no-store"})


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, so a busy port is a one-line error and port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({err.strerror}); pass another --port or --host") from None
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


class Server:
    """Serves an ASGI app on a socket from a background thread (tests, ``LiveView``, ``nst-app``)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.sock = bind(host, port)
        self.host, self.port = host, self.sock.getsockname()[1]
        # log_config=None: uvicorn's own config would run logging.config.dictConfig, which shuts down
        # every handler the host process has (a LiveView started from research code would silently
        # drop the user's logging set-up, and close the streams of handlers such as absl's).
        config = uvicorn.Config(app, log_level="warning", log_config=None, lifespan="off",
                                timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> Server:
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self.sock]},
                                        name="nst-app-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def serve_forever(self) -> None:
        self._server.run(sockets=[self.sock])

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        with contextlib.suppress(OSError):
            self.sock.close()
