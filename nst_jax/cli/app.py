"""``nst-app`` / ``python -m nst_jax.app``: serve the web app (:mod:`nst_jax.app`) on this machine."""

from __future__ import annotations

import dataclasses
import sys
import threading
import webbrowser
from collections.abc import Sequence

from nst_jax import cli, compile_cache
from nst_jax.errors import ConfigError

PROG = "nst-app"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
option = cli.option


@dataclasses.dataclass(frozen=True)
class AppOptions:
    host: str = option("127.0.0.1", "address to listen on; 0.0.0.0 makes the page reachable from other machines",
                       group="server")
    port: int = option(7860, "port (0: any free port)", group="server", min=">=0")
    no_browser: bool = option(False, "do not open a browser tab", group="server")
    weights: str | None = option(None, "VGG-19 weights for Gatys (.pth or converted .npz)", group="weights",
                                 metavar="PATH", default_help="download once and cache")
    vgg: str | None = option(None, "AdaIN encoder weights", group="weights", metavar="PATH",
                             default_help="download once and cache")
    decoder: str | None = option(None, "AdaIN decoder weights", group="weights", metavar="PATH",
                                 default_help="download once and cache")


def build_parser() -> cli.ArgumentParser:
    return cli.build_parser(
        PROG,
        "A local web page for style transfer: AdaIN with live sliders, Gatys runs that stream their image and "
        "loss curve, downloads and the equivalent command lines. Nothing leaves this machine.",
        [(AppOptions, ())], groups=(("server", "server"), ("weights", "weights")))


def import_app():
    """The app modules, or a one-line error naming the extra to install."""
    try:
        from nst_jax.app import jobs, live, server
    except ImportError as err:
        raise ConfigError(f"the web app needs the 'app' extra ({err.name} is missing); install it with "
                          'pip install "nst_jax[app]"') from None
    return jobs, live, server


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.port > 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {args.port}")
    jobs, _, server = import_app()
    compile_cache.enable()  # before the first compile; the library itself never sets it
    if args.host not in LOCAL_HOSTS:
        print(f"warning: --host {args.host} makes the page reachable from other machines, with no password; "
              "anyone who reaches it can use this machine's device", file=sys.stderr)
    weights = jobs.WeightPaths(vgg19=args.weights, adain_vgg=args.vgg, adain_decoder=args.decoder)
    srv = server.Server(app := server.App(weights), args.host, args.port)
    print(f"{PROG}: serving on {srv.url} (Ctrl-C to stop)", file=sys.stderr)
    if not args.no_browser:
        threading.Timer(0.5, webbrowser.open, (srv.url,)).start()
    try:
        srv.serve_forever()
    finally:
        app.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``nst-app``; returns the exit status (0, 2 on user errors)."""
    return cli.run_main(_main, argv)


def console() -> None:
    """The ``nst-app`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    console()
