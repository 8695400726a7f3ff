"""``nst-app`` / ``python -m nst_jax.app``: serve the web app on this machine."""

from __future__ import annotations

import sys
import threading
import webbrowser
from collections.abc import Sequence

from nst_jax import cli

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(
        prog="nst-app",
        description="A local web page for style transfer: AdaIN with live sliders, Gatys runs that "
        "stream their image and loss curve, downloads and the equivalent command lines. Nothing "
        "leaves this machine.")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="address to listen on; 0.0.0.0 makes the page reachable from other machines")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (0: any free port)")
    p.add_argument("--weights", help="VGG-19 weights for Gatys (default: download once and cache)")
    p.add_argument("--vgg", help="AdaIN encoder weights (default: download once and cache)")
    p.add_argument("--decoder", help="AdaIN decoder weights (default: download once and cache)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_main(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        from nst_jax.errors import ConfigError

        raise ConfigError(f"--port must be between 0 and 65535, got {args.port}")
    try:
        from nst_jax.app import jobs, server
    except ImportError as err:
        from nst_jax.errors import ConfigError

        raise ConfigError(f"the web app needs the 'app' extra ({err.name} is missing); "
                          'install it with pip install "nst_jax[app]"') from None
    from nst_jax import compile_cache

    compile_cache.enable()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: --host {args.host} makes the page reachable from other machines, with no "
              "password; anyone who can reach it can use this machine's device", file=sys.stderr)
    weights = jobs.WeightPaths(vgg19=args.weights, adain_vgg=args.vgg, adain_decoder=args.decoder)
    app = server.App(weights)
    srv = server.Server(app, args.host, args.port)
    print(f"nst-app: serving on {srv.url} (Ctrl-C to stop)", file=sys.stderr)
    if not args.no_browser:
        threading.Timer(0.5, webbrowser.open, (srv.url,)).start()
    try:
        srv.serve_forever()
    finally:
        app.close()
    return 0
