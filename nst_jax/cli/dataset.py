"""``nst-stylize-dataset`` (also ``python -m nst_jax.cli.dataset``): stylize a whole dataset with AdaIN.

The flags are generated (:func:`nst_jax.cli.build_parser`) from :class:`nst_jax.dataset.DatasetConfig`
(named as in ``bethgelab/stylize-datasets``: ``--content-size`` and ``--style-size`` are SHORT
SIDES there, not heights as ``--size`` of ``nst-adain``) and :class:`DatasetOptions` (weights,
processes, progress). Ctrl-C stops after the current batch with a consistent manifest (exit 130);
a rerun of the same command finishes the rest.

Examples::

    nst-stylize-dataset --content-dir imagenet/train --style-dir paintings -o stylized --seed 0
    srun -N 4 nst-stylize-dataset --content-dir imagenet/train --style-dir paintings -o stylized --distributed
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
from collections.abc import Sequence

from tqdm import tqdm

from nst_jax import cli, dataset, distributed

PROG = "nst-stylize-dataset"
_SHOWN_FAILURES = 5
option = cli.option
_TIMEOUT_S = float(distributed.DEFAULT_TIMEOUT_S)  # the field named distributed hides the module below


@dataclasses.dataclass(frozen=True)
class DatasetOptions:
    """What only the command line has: weights files, the processes, the progress bar."""

    vgg: str | None = option(None, "vgg_normalised encoder .pth or .npz", group="system", metavar="PATH",
                             default_help="cached or downloaded")
    decoder: str | None = option(None, "decoder .pth or .npz", group="system", metavar="PATH",
                                 default_help="cached or downloaded")
    no_progress: bool = option(False, "no progress bar", group="system")
    distributed: bool = option(False, "several processes, found from the launcher: SLURM (srun), Open MPI "
                               "(mpirun), Kubernetes or Cloud TPU", group="processes")
    coordinator_address: str | None = option(None, "HOST:PORT of process 0, the same on every process",
                                             group="processes", metavar="HOST:PORT")
    num_processes: int | None = option(None, "number of processes", group="processes", min=">0", metavar="N")
    process_id: int | None = option(None, "this process, 0 .. N-1", group="processes", min=">=0", metavar="I")
    timeout: float = option(_TIMEOUT_S, "seconds to wait for all processes to "
                            "connect", group="processes", min=">0", metavar="SECONDS")


GROUPS = (("data", "data"), ("style", "stylization"), ("performance", "performance"), ("system", "system"),
          ("processes", "several processes (hosts)"))
EPILOG = ("--content-size and --style-size are SHORT SIDES, as in bethgelab/stylize-datasets (nst-adain's --size "
          "is a height). Which style goes with which content depends only on --seed and the two sorted file "
          "lists; rerunning the same command resumes.")


def build_parser() -> cli.ArgumentParser:
    """The ``nst-stylize-dataset`` parser, from :class:`DatasetOptions` and :class:`nst_jax.dataset.DatasetConfig`."""
    return cli.build_parser(
        PROG, "Stylize every image of a folder tree (or a TFDS split) with AdaIN: deterministic pairing, "
              "batched over the local devices, split over processes, resumable.",
        [(dataset.DatasetConfig, ()), (DatasetOptions, ())], groups=GROUPS, epilog=EPILOG)


def _stalled(message: str) -> None:
    # Runs in a timer thread while JAX waits inside C++: the only way to end with one line instead
    # of JAX's abort a little later.
    print(f"error: {message}", file=sys.stderr, flush=True)
    os._exit(cli.EXIT_USER_ERROR)


class _Bar:
    """tqdm over this process's outputs (finished ones counted from the start)."""

    def __init__(self, enabled: bool, label: str):
        self.enabled = enabled
        self.label = label
        self.bar = None

    def __call__(self, p: dataset.Progress) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = tqdm(total=p.total, initial=p.skipped, unit="img", desc=self.label, file=sys.stderr,
                            disable=None, dynamic_ncols=True)
        self.bar.n = p.done + p.skipped + p.failed
        self.bar.set_postfix(failed=p.failed, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    config = cli.from_args(dataset.DatasetConfig, args)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``nst-stylize-dataset``; returns the exit status (0, 2 on user errors, 130 when interrupted)."""
    return cli.run_main(_main, argv)


def console() -> None:
    """The ``nst-stylize-dataset`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    console()
