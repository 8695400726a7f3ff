"""Shared by the web app tests: a real server on a free 127.0.0.1 port, a cookie-keeping client, images."""

from __future__ import annotations

import http.cookiejar
import json
import pathlib
import urllib.error
import urllib.request

import numpy as np

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def weight_paths():
    from nst_jax.app import jobs

    return jobs.WeightPaths(vgg19=str(FIXTURES / "gatys" / "vgg19_narrow.pth"),
                            adain_vgg=str(FIXTURES / "adain" / "vgg_normalised_narrow.pth"),
                            adain_decoder=str(FIXTURES / "adain" / "decoder_narrow.pth"))


def make_images(folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A small content photo stand-in (40x56) and a striped style (48x48), as PNG files."""
    from nst_jax import image as imageio

    y, x = np.mgrid[0:40, 0:56] / np.array([40.0, 56.0])[:, None, None]
    content = np.stack([y, x, 0.5 + 0.4 * np.sin(6 * x * y)], axis=-1)
    content[10:25, 15:35] = [0.9, 0.2, 0.1]
    sy, sx = np.mgrid[0:48, 0:48]
    style = np.stack([(sx // 4) % 2, (sy // 6) % 2, ((sx + sy) // 5) % 2], axis=-1) * 0.8 + 0.1
    return (imageio.save_image(folder / "content photo.png", content.astype(np.float32)),
            imageio.save_image(folder / "style.png", style.astype(np.float32)))


class Client:
    """urllib with its own cookie jar: one client is one browser session."""

    def __init__(self, base: str):
        self.base = base.rstrip("/")
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def request(self, path: str, data: bytes | None = None, method: str | None = None,
                headers: dict | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})
        try:
            with self.opener.open(req, timeout=120) as f:
                return f.status, f.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def json(self, path: str, payload=None, method: str = "POST") -> tuple[int, dict]:
        status, body = self.request(path, json.dumps(payload).encode() if payload is not None else None,
                                    method, {"Content-Type": "application/json"})
        return status, json.loads(body) if body else {}

    def events(self, path: str):
        """The states a server-sent event stream sends, until it ends."""
        with self.opener.open(self.base + path, timeout=300) as f:
            for line in f:
                if line.startswith(b"data:"):
                    yield json.loads(line[5:])
