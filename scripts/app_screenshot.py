"""Screenshot of the web app for the README: the built-in pair, an AdaIN result, a finished Gatys run.

Serves the app on 127.0.0.1 with the given weights (by default the narrow test networks in
tests/fixtures, so the pictures are rough), drives Debian's Chromium with Playwright, and writes
a palette PNG (quantized with Pillow to stay small):

    python scripts/app_screenshot.py --output docs/app.png
"""

from __future__ import annotations

import argparse
import io
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def fixture_weights():
    from nst_jax.app import jobs

    fixtures = pathlib.Path("tests", "fixtures")  # relative: the page's command lines name no folder of this machine
    return jobs.WeightPaths(vgg19=str(fixtures / "gatys" / "vgg19_narrow.pth"),
                            adain_vgg=str(fixtures / "adain" / "vgg_normalised_narrow.pth"),
                            adain_decoder=str(fixtures / "adain" / "decoder_narrow.pth"))


def capture(url: str, width: int, height: int, adain_size: int, gatys_size: int, iterations: int) -> bytes:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(600_000)
            page.goto(url)
            page.fill("#adain-size", str(adain_size))
            page.click("#adain-run")
            page.wait_for_function("document.getElementById('adain-image').dataset.version === '1'")
            page.click("#adain-run")  # again, warm: the timing shown is that of a slider move
            page.wait_for_function("document.getElementById('adain-image').dataset.version === '2'")
            page.fill("#g-size", str(gatys_size))
            page.fill("#g-iterations", str(iterations))
            page.click("#g-start")
            page.wait_for_function("document.getElementById('g-status').dataset.status === 'done'")
            return page.screenshot(full_page=True)  # the window is width x height; the page is taller
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", type=pathlib.Path, default=pathlib.Path("docs", "app.png"))
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=800)
    ap.add_argument("--adain-size", type=int, default=256)
    ap.add_argument("--gatys-size", type=int, default=128)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--colors", type=int, default=96, help="palette size of the PNG")
    ap.add_argument("--real-weights", action="store_true",
                    help="use the downloaded weights instead of the narrow test networks")
    args = ap.parse_args(argv)
    os.chdir(ROOT)
    from PIL import Image

    from nst_jax.app import jobs, server

    app = server.App(jobs.WeightPaths() if args.real_weights else fixture_weights())
    srv = server.Server(app).start()
    try:
        shot = capture(srv.url, args.width, args.height, args.adain_size, args.gatys_size, args.iterations)
    finally:
        srv.stop()
        app.close()
    image = Image.open(io.BytesIO(shot)).convert("RGB")
    image = image.quantize(colors=args.colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.output, optimize=True)
    print(f"{args.output}: {image.width}x{image.height}, {args.output.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
