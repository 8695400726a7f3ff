"""``nst-stylize-dataset``: the command line of :mod:`nst_jax.dataset` (parsing, progress, exit codes).

Moves to ``nst_jax/cli/dataset.py`` (same parser generator as the other commands) once the CLI
package exists; :func:`config_from_args` is the only mapping from flags to the library config.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence

from nst_jax import cli, dataset, distributed

PROG = "nst-stylize-dataset"
_SHOWN_FAILURES = 5


def build_parser() -> cli.ArgumentParser:
    d = dataset.DatasetConfig("", "", "")
    p = cli.ArgumentParser(prog=PROG, description="Stylize every image of a folder tree with AdaIN, "
                           "deterministically, batched over devices and sharded over processes.")
    io = p.add_argument_group("data")
    io.add_argument("--content-dir", required=True, help="folder of content images (any depth)")
    io.add_argument("--style-dir", required=True, help="folder of style images (any depth)")
    io.add_argument("--output-dir", required=True, help="output folder; mirrors the content tree")
    io.add_argument("--extensions", type=cli.comma_list(str, "--extensions"), default=d.extensions,
                    help=f"file extensions to take (default {','.join(d.extensions)})")
    io.add_argument("--format", choices=dataset.FORMATS, default=d.format,
                    help="output format; same keeps each content's (default %(default)s)")
    io.add_argument("--quality", type=int, default=d.quality, help="JPEG quality 1-100 (default %(default)s)")
    io.add_argument("--overwrite", action="store_true", help="redo a run found in --output-dir")
    st = p.add_argument_group("stylization")
    st.add_argument("--num-styles", type=cli.positive(int, "--num-styles"), default=d.num_styles,
                    help="stylized versions per content image (default %(default)s)")
    st.add_argument("--alpha", type=cli.positive(float, "--alpha", allow_zero=True), default=d.alpha,
                    help="content-style trade-off in [0, 1] (default %(default)s)")
    st.add_argument("--content-size", type=cli.positive(int, "--content-size", allow_zero=True),
                    default=d.content_size, help="content short side in px, 0 keeps (default %(default)s)")
    st.add_argument("--style-size", type=cli.positive(int, "--style-size", allow_zero=True),
                    default=d.style_size, help="style short side in px, 0 keeps (default %(default)s)")
    st.add_argument("--seed", type=int, default=d.seed, help="decides which style goes with which content")
    st.add_argument("--preserve-color", action="store_true", help="keep each content's colours")
    st.add_argument("--vgg", help="vgg_normalised encoder (.pth/.npz); default: download once")
    st.add_argument("--decoder", help="AdaIN decoder (.pth/.npz); default: download once")
    run = p.add_argument_group("performance")
    run.add_argument("--batch-size", type=cli.positive(int, "--batch-size"), default=d.batch_size,
                     help="images per compiled call on each process (default %(default)s)")
    run.add_argument("--max-memory", type=cli.positive(float, "--max-memory"),
                     help="GiB one device may use for a batch; larger images get smaller batches")
    run.add_argument("--threads", type=int, default=d.num_threads, help="decoding threads (default %(default)s)")
    mp = p.add_argument_group("several processes (hosts)")
    mp.add_argument("--distributed", action="store_true",
                    help="detect the processes from the launcher (SLURM, Open MPI, Kubernetes, Cloud TPU)")
    mp.add_argument("--coordinator-address", help="HOST:PORT of process 0, the same for every process")
    mp.add_argument("--num-processes", type=int, help="number of processes")
    mp.add_argument("--process-id", type=int, help="this process, 0 .. N-1")
    mp.add_argument("--timeout", type=cli.positive(float, "--timeout"), default=distributed.DEFAULT_TIMEOUT_S,
                    help="seconds to wait for all processes to connect (default %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> dataset.DatasetConfig:
    return dataset.DatasetConfig(
        content_dir=args.content_dir, style_dir=args.style_dir, output_dir=args.output_dir,
        num_styles=args.num_styles, alpha=args.alpha, content_size=args.content_size,
        style_size=args.style_size, extensions=tuple(args.extensions), seed=args.seed,
        batch_size=args.batch_size, format=args.format, quality=args.quality,
        preserve_color=args.preserve_color, max_memory=args.max_memory, overwrite=args.overwrite,
        num_threads=args.threads)


def _stalled(message: str) -> None:
    # Runs in a timer thread while JAX waits inside C++: the only way to end with one line instead
    # of JAX's abort a little later.
    print(f"error: {message}", file=sys.stderr, flush=True)
    os._exit(cli.EXIT_USER_ERROR)


class _Bar:
    def __init__(self, enabled: bool, label: str):
        self.enabled = enabled
        self.label = label
        self.bar = None

    def __call__(self, p: dataset.Progress) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=p.total, initial=p.skipped, unit="img", desc=self.label, file=sys.stderr,
                            disable=None, dynamic_ncols=True)
        self.bar.n = p.done + p.skipped + p.failed
        self.bar.set_postfix(failed=p.failed, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    dataset.check_config(config)
    dataset.check_folders(config)
    distributed.check_arguments(args.coordinator_address, args.num_processes, args.process_id,
                                auto=args.distributed)
    info = distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                                  auto=args.distributed, timeout_s=args.timeout, on_stall=_stalled)
    from nst_jax import adain, compile_cache, weights

    compile_cache.enable()
    vgg_params = weights.resolve_weights("adain_vgg", args.vgg)
    decoder_params = weights.resolve_weights("adain_decoder", args.decoder)
    adain.check_compatible(vgg_params, decoder_params)

    stop = threading.Event()

    def on_sigint(signum, frame):  # noqa: ARG001 - signal API
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\nstopping after the current batch (Ctrl-C again to quit at once)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, on_sigint)
    label = "stylizing" if info.count == 1 else f"process {info.index}/{info.count}"
    bar = _Bar(not args.no_progress, label)
    try:
        summary = dataset.run(config, vgg_params, decoder_params, info=info, progress=bar,
                              should_stop=stop.is_set)
    finally:
        bar.close()
        signal.signal(signal.SIGINT, previous)
    p = summary.progress
    who = "" if info.count == 1 else f"process {info.index}: "
    print(f"{who}{p.done} stylized, {p.skipped} already done, {p.failed} failed, of {p.total}; "
          f"{summary.images_per_second:.2f} images/s "
          f"(decode wait {summary.decode_seconds:.1f} s, stylize {summary.stylize_seconds:.1f} s)",
          file=sys.stderr)
    for path, why in summary.failures[:_SHOWN_FAILURES]:
        print(f"  failed: {path}: {why}", file=sys.stderr)
    if len(summary.failures) > _SHOWN_FAILURES:
        print(f"  ... and {len(summary.failures) - _SHOWN_FAILURES} more", file=sys.stderr)
    if summary.interrupted:
        print("interrupted; rerun the same command to finish", file=sys.stderr)
        return cli.EXIT_INTERRUPTED
    if summary.merged is not None:
        print(f"manifest: {os.path.join(config.output_dir, dataset.MANIFEST)} ({summary.merged} entries)",
              file=sys.stderr)
    return 0


def entry() -> int:
    return cli.run_main(main)


if __name__ == "__main__":
    sys.exit(entry())
