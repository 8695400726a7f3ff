"""The web app over HTTP (no browser): uploads and their bounds, sessions, AdaIN cache, Gatys runs."""

from __future__ import annotations

import json
import pathlib
import shlex
import tempfile
import time
import urllib.request

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the app extra is not installed")
pytest.importorskip("uvicorn", reason="the app extra is not installed")

from app_support import Client, make_images, weight_paths  # noqa: E402


@pytest.fixture(scope="module")
def app_server():
    from nst_jax.app import server

    app = server.App(weight_paths(), max_upload_bytes=1 << 20)
    srv = server.Server(app).start()
    yield app, srv
    srv.stop()
    app.close()


@pytest.fixture
def client(app_server):
    c = Client(app_server[1].url)
    assert c.request("/")[0] == 200  # the page starts a session
    return c


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"))


def _png(data: bytes) -> np.ndarray:
    """Decodes PNG bytes with nst_jax.image (which reads 16-bit PNGs): float (H, W, 3) in [0, 1]."""
    from nst_jax import image as imageio

    with tempfile.TemporaryDirectory() as folder:
        path = pathlib.Path(folder) / "x.png"
        path.write_bytes(data)
        return imageio.load_image(path)


def _png_bits(data: bytes) -> int:
    return data[24]  # IHDR bit depth


def _raw_upload(client, slot: str, declared: int | None = None, chunks=()) -> tuple[int, bytes]:
    """An upload sent by hand: a declared length without a body, or a chunked body."""
    import http.client
    import urllib.parse

    url = urllib.parse.urlsplit(client.base)
    cookie = "; ".join(f"{c.name}={c.value}" for h in client.opener.handlers
                       if hasattr(h, "cookiejar") for c in h.cookiejar)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        conn.putrequest("POST", f"/api/upload/{slot}")
        conn.putheader("Cookie", cookie)
        if declared is not None:
            conn.putheader("Content-Length", str(declared))
            conn.endheaders()
        else:
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            for chunk in chunks:
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            conn.send(b"0\r\n\r\n")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_cached_encoder_path_matches_stylize():
    """encode once + transfer + render (the app's slider path) equals adain.stylize."""
    import jax.numpy as jnp

    from nst_jax import adain, weights

    wp = weight_paths()
    vgg_params = weights.load(wp.adain_vgg, "adain_vgg")
    dec = weights.load(wp.adain_decoder, "adain_decoder")
    rng = np.random.default_rng(0)
    content = jnp.asarray(rng.uniform(size=(1, 24, 32, 3)), jnp.float32)
    styles = [jnp.asarray(rng.uniform(size=(1, 24, 32, 3)), jnp.float32) for _ in range(2)]
    from nst_jax.app import jobs

    encode, render, _, _ = jobs._jitted()  # the app's compiled functions
    # Style interpolation with colour preservation: every step of stylized_features is on the path
    # (the plain mode is compared with nst-adain's output in the browser test).
    wts = jnp.asarray([0.25, 0.75])
    got = render(dec, encode(vgg_params, content, styles, preserve_color=True), jnp.float32(0.8), wts,
                 height=24, width=32)
    want = adain.stylize_jit(vgg_params, dec, content, styles, 0.8, interpolation_weights=wts,
                             preserve_color=True)
    # Same operations in the same order; float32 rounding of separately compiled pieces only.
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_bad_uploads_get_one_line_messages_and_the_server_keeps_serving(client, images, app_server, monkeypatch):
    status, body = client.request("/api/upload/content", b"just some text", "POST",
                                  {"X-Filename": "notes.txt"})
    message = json.loads(body)["error"]
    assert status == 400 and "not an image" in message and "notes.txt" in message
    assert app_server[0].sessions.root.as_posix() not in message  # no server path leaks out
    png = images[0].read_bytes()
    status, body = client.request("/api/upload/style", png[: len(png) // 2], "POST", {"X-Filename": "cut.png"})
    assert status == 400 and "cut.png" in json.loads(body)["error"] and "\n" not in json.loads(body)["error"]
    # Bodies over the limit are refused from the declared length before any byte is read, and
    # while streaming when no length is declared.
    status, body = _raw_upload(client, "style", declared=(1 << 20) + 1)
    assert status == 413 and "limit" in json.loads(body)["error"]
    status, body = _raw_upload(client, "style", chunks=[b"\0" * 65536] * 17)
    assert status == 413 and "limit" in json.loads(body)["error"]
    status, body = client.request("/api/upload/../../etc", png, "POST")
    assert status == 404
    # Too many pixels is refused from the header, with the CLIs' budget (image.max_pixels).
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # max_pixels() = 1000 < 40 * 56
    status, body = client.request("/api/upload/content", png, "POST", {"X-Filename": "big.png"})
    assert status == 400 and "pixels" in json.loads(body)["error"]
    monkeypatch.undo()
    for payload in ({"alpha": 2}, {"size": "big"}, {"colour": 1}, [1, 2]):
        status, body = client.json("/api/adain", payload)
        assert status == 400 and body["error"], payload
    status, body = client.request("/api/adain", b"{not json", "POST")
    assert status == 400
    assert client.request("/")[0] == 200
    status, body = client.request("/api/upload/content", png, "POST", {"X-Filename": "ok.png"})
    assert status == 200 and json.loads(body)["width"] == 56


def test_uploads_are_private_to_their_session_and_deleted_with_it(app_server, images):
    app, srv = app_server
    a, b = Client(srv.url), Client(srv.url)
    a.request("/"), b.request("/")
    status, body = a.request("/api/upload/content", images[0].read_bytes(), "POST",
                             {"X-Filename": "..%2F..%2Fescape.png"})
    assert status == 200 and json.loads(body)["name"] == "escape.png"
    session = next(s for s in app.sessions._sessions.values() if s.inputs["content"].name == "escape.png")
    stored = session.inputs["content"].path
    assert stored.parent == session.dir and stored.name.startswith("content-")  # the server's name
    # b sees its own (built-in) content, not a's upload, and cannot reach a's runs.
    assert _png(b.request("/api/input/content")[1]).shape != _png(a.request("/api/input/content")[1]).shape
    status, body = a.json("/api/gatys", {"size": 32, "iterations": 400, "update_every": 4})
    run = body["run"]
    assert b.request(f"/api/runs/{run}/frame")[0] == 404
    assert b.json(f"/api/runs/{run}/stop", {})[0] == 404
    assert Client(srv.url).request("/api/input/content")[0] == 401  # no session cookie
    a.request("/api/session/close", b"", "POST")  # what the page sends when its tab closes
    assert not session.dir.exists()
    assert session.runs[0].cancel.is_set()
    deadline = time.monotonic() + 120
    while not session.runs[0].finished and time.monotonic() < deadline:
        time.sleep(0.05)
    assert session.runs[0].feed.status == "stopped"  # the device is free again
    assert a.request("/api/input/content")[0] == 401


def test_idle_sessions_are_swept(app_server):
    app, srv = app_server
    c = Client(srv.url)
    c.request("/")
    assert c.request("/api/input/style")[0] == 200
    n = len(app.sessions)
    assert app.sessions.sweep(now=time.monotonic() + app.sessions.timeout + 1) >= 1
    assert len(app.sessions) < n
    assert c.request("/api/input/style")[0] == 401


def test_adain_slider_reuses_the_encoder(client, images):
    for slot, path in zip(("content", "style"), images):
        assert client.request(f"/api/upload/{slot}", path.read_bytes(), "POST", {"X-Filename": path.name})[0] == 200
    status, first = client.json("/api/adain", {"size": 32, "alpha": 1.0})
    assert status == 200 and first["encoded"] and (first["height"], first["width"]) == (32, 45)
    status, second = client.json("/api/adain", {"size": 32, "alpha": 0.2})
    assert status == 200 and not second["encoded"] and second["image"] != first["image"]
    assert "--alpha 0.2" in second["command"] and shlex.split(second["command"])[2] == "content photo.png"
    status, body = client.json("/api/adain", {"size": 32, "mix": 0.5})
    assert status == 400 and "second style" in body["error"]
    status, body = client.request("/api/download/adain?bits=16")
    assert status == 200 and _png_bits(body) == 16 and _png(body).shape == (32, 45, 3)


def test_gatys_run_streams_terms_and_matches_the_cli(client, images, tmp_path, monkeypatch):
    """Live updates carry the image and the content/style terms; the download equals the CLI's output."""
    from nst_jax.cli import gatys

    for slot, path in zip(("content", "style"), images):
        client.request(f"/api/upload/{slot}", path.read_bytes(), "POST", {"X-Filename": path.name})
    status, body = client.json("/api/gatys", {"size": 32, "iterations": 12, "update_every": 4})
    assert status == 200
    states = list(client.events(f"/api/runs/{body['run']}/events"))
    assert states[-1]["status"] == "done" and states[-1]["iteration"] == 12
    curves = states[-1]["curves"]
    assert [i for i, _ in curves["total"]] == [4, 8, 12]
    # The weighted content and style terms add up to the total (no TV weight here).
    for (_, c), (_, s), (_, t) in zip(curves["content"], curves["style"], curves["total"]):
        assert c + s == pytest.approx(t, rel=1e-4)
    status, data = client.request(f"/api/download/{body['run']}?bits=16")
    assert _png_bits(data) == 16
    downloaded = _png(data)
    argv = shlex.split(body["command"])
    assert argv[0] == "nst-gatys" and "--chunk" in argv
    monkeypatch.chdir(images[0].parent)
    out = tmp_path / "cli.png"
    assert argv[-2] == "--output"
    assert gatys.main(argv[1:-2] + ["--bits", "16", "--output", str(out), "--no-progress"]) == 0
    expected = _png(out.read_bytes())
    # Same program and inputs; allow float32 reduction-order noise amplified over 12 L-BFGS steps.
    assert downloaded.shape == expected.shape == (32, 45, 3)
    np.testing.assert_allclose(downloaded, expected, atol=2e-3)


def test_runs_queue_and_stop_keeps_the_image(client, images):
    # The same shapes and chunk as the other Gatys tests: one compiled program serves them all.
    for slot, path in zip(("content", "style"), images):
        client.request(f"/api/upload/{slot}", path.read_bytes(), "POST", {"X-Filename": path.name})
    status, first = client.json("/api/gatys", {"size": 32, "iterations": 3000, "update_every": 4})
    status, second = client.json("/api/gatys", {"size": 32, "iterations": 4, "update_every": 4})
    seen_queued = False
    for state in client.events(f"/api/runs/{second['run']}/events"):
        if state["status"] == "queued" and state["position"] >= 1:
            seen_queued = True
            break
    assert seen_queued
    for state in client.events(f"/api/runs/{first['run']}/events"):
        if state["frame"] >= 1:
            break
    assert client.json(f"/api/runs/{first['run']}/stop", {})[0] == 200
    final = list(client.events(f"/api/runs/{first['run']}/events"))[-1]
    assert final["status"] == "stopped" and 0 < final["iteration"] < 3000
    status, data = client.request(f"/api/runs/{first['run']}/frame")
    assert status == 200 and _png(data).shape == (32, 45, 3)
    assert list(client.events(f"/api/runs/{second['run']}/events"))[-1]["status"] == "done"


def _watch(client, run_id: str, until):
    """Opens a run's event stream and reads it until ``until(state)``; returns the open response."""
    f = client.opener.open(f"{client.base}/api/runs/{run_id}/events", timeout=300)
    for line in f:
        if line.startswith(b"data:") and until(json.loads(line[5:])):
            return f
    raise AssertionError(f"run {run_id}'s stream ended before the awaited state")


def _wait(predicate, seconds: float = 120.0) -> float:
    """Polls ``predicate`` until true; returns the time it took (fails after ``seconds``)."""
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < seconds, "timed out"
        time.sleep(0.02)
    return time.monotonic() - t0


def test_dropped_event_streams_stop_the_sessions_runs(app_server, client, images, monkeypatch):
    """A tab that goes without its close request: its last stream drops, the grace passes, its runs stop."""
    app, _ = app_server
    grace = 1.5
    monkeypatch.setattr(app.sessions, "stream_grace", grace)
    for slot, path in zip(("content", "style"), images):
        client.request(f"/api/upload/{slot}", path.read_bytes(), "POST", {"X-Filename": path.name})
    # The shapes and chunk of the other Gatys tests: one compiled program serves them all.
    ids = [client.json("/api/gatys", {"size": 32, "iterations": 3000, "update_every": 4})[1]["run"]
           for _ in range(2)]
    session = next(s for s in app.sessions._sessions.values() if s.run(ids[0]) is not None)
    running, queued = (session.run(i) for i in ids)
    first = _watch(client, ids[0], lambda s: s["frame"] >= 1)
    # Another stream of the session opens before the first drops: nothing is stopped.
    second = _watch(client, ids[1], lambda s: s["status"] == "queued")
    first.close()
    time.sleep(2 * grace)
    assert not running.cancel.is_set() and running.feed.status == "running"
    # The last stream drops (the socket closes, as when the browser is killed): after the grace
    # the running run stops at its next chunk, keeping its image, and the queued one is dropped.
    second.close()
    dropped = time.monotonic()
    _wait(lambda: running.finished and queued.finished)
    assert time.monotonic() - dropped >= grace
    assert running.feed.status == queued.feed.status == "stopped"
    assert 0 < running.feed.iteration < 3000 and running.feed.latest_image()[1] is not None
    assert queued.feed.message == "stopped before it started"
    # The session itself lives on (a reloaded page continues it); the device is free again.
    assert client.request("/api/input/content")[0] == 200
    status, body = client.json("/api/gatys", {"size": 32, "iterations": 4, "update_every": 4})
    assert list(client.events(f"/api/runs/{body['run']}/events"))[-1]["status"] == "done"


def test_live_view_serves_what_is_published():
    from nst_jax.app.live import LiveView

    view = LiveView(port=0, total=100)
    try:
        image = np.linspace(0, 1, 20 * 30 * 3, dtype=np.float32).reshape(20, 30, 3)
        view.publish(10, image, {"total": 5.0, "content": 2.0})
        view.finish("done")
        with urllib.request.urlopen(view.url, timeout=30) as f:
            assert b"live" in f.read()
        c = Client(view.url)
        states = list(c.events("/events"))
        assert states[-1]["iteration"] == 10 and states[-1]["curves"]["content"] == [[10, 2.0]]
        frame = _png(c.request("/frame")[1])
        np.testing.assert_allclose(frame, image, atol=0.5 / 255 + 1e-6)
    finally:
        view.close()


def test_live_view_leaves_the_host_processes_logging_alone():
    """Starting a server must not reconfigure logging: uvicorn's default config shut down every handler."""
    import io
    import logging

    from nst_jax.app.live import LiveView

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.close = lambda: stream.close()  # as absl's handler does with a stream it does not own
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        view = LiveView(port=0, total=1)
        view.close()
        assert handler in root.handlers and not stream.closed
        logging.getLogger("nst_jax.test").warning("still logged")
        assert "still logged" in stream.getvalue()
    finally:
        root.removeHandler(handler)


def test_settings_choices_are_the_librarys():
    from nst_jax import gatys
    from nst_jax.app import jobs

    assert jobs.GATYS_OPTIMIZERS == gatys.OPTIMIZERS


def test_app_command_line_errors(capsys):
    from nst_jax.app import server
    from nst_jax.cli import app as app_cli

    sock = server.bind("127.0.0.1", 0)
    try:
        port = str(sock.getsockname()[1])
        assert app_cli.main(["--port", port, "--no-browser"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: cannot listen on 127.0.0.1:") and err.count("\n") == 1
        assert app_cli.main(["--host", "0.0.0.0", "--port", port, "--no-browser"]) == 2
        assert capsys.readouterr().err.startswith("warning: --host 0.0.0.0 makes the page reachable")
    finally:
        sock.close()
    assert app_cli.main(["--port", "70000"]) == 2
    assert app_cli.main(["--port", "-1"]) == 2


def test_gatys_cli_web_serves_the_run(tmp_path, images, monkeypatch, capsys):
    """nst-gatys --web: the live view gets every chunk's image and serves it while the run goes on."""
    from nst_jax.app import live
    from nst_jax.cli import gatys

    seen = []

    class Recording(live.LiveView):
        def publish(self, iteration, image, losses):
            super().publish(iteration, image, losses)
            if not seen:  # while the run is going on, the page's endpoints answer
                client = Client(self.url)
                seen.append(("page", client.request("/")[0], _png(client.request("/frame")[1]).shape))
            seen.append((iteration, image.shape, sorted(losses)))

        def finish(self, status="done", message=""):
            seen.append((status, message))
            super().finish(status, message)

    monkeypatch.setattr(live, "LiveView", Recording)
    argv = ["--content", str(images[0]), "--style", str(images[1]), "--size", "32", "--iterations", "8",
            "--chunk", "4", "--weights", weight_paths().vgg19, "--output", str(tmp_path / "o.png"),
            "--no-progress"]
    assert gatys.main(argv + ["--web", "--port", "0"]) == 0
    assert "live view: http://127.0.0.1:" in capsys.readouterr().err
    assert seen == [("page", 200, (32, 45, 3)), (4, (32, 45, 3), ["total"]), (8, (32, 45, 3), ["total"]),
                    ("done", "done: 8 iterations")]
    assert gatys.main(argv + ["--port", "9999"]) == 2
    assert "--port is the port of --web" in capsys.readouterr().err
