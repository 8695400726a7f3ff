"""Measures the web app: AdaIN click-to-result and slider moves, the live view's cost on Gatys, memory.

Runs the real server on 127.0.0.1 with full-width randomly initialized networks (timing does not
depend on the weights' values) and drives it with headless Chromium, as tests/test_app_browser.py
does. Prints one JSON object.

    python scripts/benchmark_app.py [--adain-size 512] [--gatys-size 256] [--iterations 40]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _seed(engine) -> None:
    import jax

    from nst_jax import adain, vgg

    engine._params.update(vgg19=vgg.init_params(jax.random.key(0)),
                          adain_vgg=vgg.init_params(jax.random.key(1), network=vgg.ADAIN_VGG),
                          adain_decoder=adain.init_decoder(jax.random.key(2)))


def gatys_overhead(engine, size: int, iterations: int, every: int, repeats: int) -> dict:
    """Seconds per iteration of the same run without and with the live view's publishing (same process)."""
    from nst_jax import gatys, multiscale
    from nst_jax import image as imageio
    from nst_jax.app import jobs

    settings = jobs.GatysSettings(size=size, iterations=iterations, update_every=every)
    c, s = imageio.default_content_path(), imageio.default_style_path()
    content = jobs.Input(c, None, *imageio.image_size(c))
    style = jobs.Input(s, None, *imageio.image_size(s))
    config = gatys.GatysConfig(iterations=iterations)
    weights = gatys.loss_weights(config)
    params = engine.params("vgg19")

    def plain() -> float:
        t0 = time.perf_counter()
        multiscale.run_multiscale(params, imageio.load_image(c), [imageio.load_image(s)], config, weights,
                                  sizes=(size,), iterations=iterations, chunk=every)
        return time.perf_counter() - t0

    def live() -> tuple[float, list[float]]:
        run = jobs.Run("bench", settings, content, style)
        stamps: list[float] = []
        publish = run.feed.publish
        run.feed.publish = lambda *a: (stamps.append(time.perf_counter()), publish(*a))
        t0 = time.perf_counter()
        jobs.gatys_run(engine, run)
        return time.perf_counter() - t0, [b - a for a, b in zip(stamps, stamps[1:])]

    plain(), live()  # compile both
    a, b, intervals = [], [], []
    for _ in range(repeats):
        a.append(plain())
        t, iv = live()
        b.append(t)
        intervals += iv
    pa, pb = statistics.median(a) / iterations, statistics.median(b) / iterations
    return {"gatys_size": size, "iterations": iterations, "update_every": every,
            "s_per_it_without_live_view": round(pa, 4), "s_per_it_with_live_view": round(pb, 4),
            "overhead_percent": round(100 * (pb - pa) / pa, 1),
            "update_interval_s_median": round(statistics.median(intervals), 3)}


def browser_timings(url: str, adain_size: int, moves: int) -> dict:
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    out = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        for label in ("cold", "warm"):
            page = browser.new_page()
            page.set_default_timeout(600_000)
            page.goto(url)
            page.fill("#adain-size", str(adain_size))
            t0 = time.perf_counter()
            page.click("#adain-run")
            page.wait_for_function("document.getElementById('adain-image').dataset.version === '1'")
            out[f"adain_click_to_result_{label}_s"] = round(time.perf_counter() - t0, 3)
            if label == "warm":
                page.focus("#alpha")
                times = []
                for i in range(moves):
                    t0 = time.perf_counter()
                    page.keyboard.press("ArrowLeft")
                    page.wait_for_function(f"document.getElementById('adain-image').dataset.version === '{i + 2}'")
                    times.append(time.perf_counter() - t0)
                out["adain_slider_move_s_median"] = round(statistics.median(times[1:]), 3)
            page.close()
        browser.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--adain-size", type=int, default=512)
    p.add_argument("--gatys-size", type=int, default=256)
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--update-every", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--runs", type=int, default=20, help="runs for the memory check")
    args = p.parse_args()

    from nst_jax.app import jobs, server

    app = server.App(jobs.WeightPaths())
    _seed(app.engine)
    srv = server.Server(app).start()
    result = {}
    try:
        result.update(browser_timings(srv.url, args.adain_size, moves=6))
        result.update(app.engine.call(lambda: gatys_overhead(app.engine, args.gatys_size, args.iterations,
                                                             args.update_every, args.repeats)))
        # Memory: many short runs through the HTTP API, one session, as a user would.
        from urllib.request import Request, build_opener, HTTPCookieProcessor

        opener = build_opener(HTTPCookieProcessor())
        opener.open(srv.url).read()
        rss = []
        for i in range(args.runs):
            body = json.dumps({"size": 64, "iterations": 5, "update_every": 5}).encode()
            run = json.loads(opener.open(Request(srv.url + "api/gatys", body,
                                                 {"Content-Type": "application/json"})).read())["run"]
            for line in opener.open(srv.url + f"api/runs/{run}/events"):
                pass
            opener.open(Request(srv.url + "api/adain", json.dumps({"size": 256, "alpha": (i % 10) / 10}).encode(),
                                {"Content-Type": "application/json"})).read()
            rss.append(_rss_mib())
        result.update(rss_mib_after_run_1=round(rss[0], 1), rss_mib_after_run_10=round(rss[9], 1),
                      rss_mib_after_run_20=round(rss[-1], 1))
    finally:
        srv.stop()
        app.close()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
