"""``nst-train`` (also ``python scripts/train_decoder.py``): train the AdaIN decoder (Huang & Belongie 2017).

Every :class:`nst_jax.train.TrainConfig` field is a flag (``batch_size`` -> ``--batch-size``), with
its default, choices and help taken from the dataclass (:func:`nst_jax.cli.build_parser`); the
options only the command line has (``--workdir``, ``--no-progress``) are :class:`TrainOptions`.
Rerunning the same command with the same ``--workdir`` resumes from the latest checkpoint; raising
``--steps`` continues a finished run.

Examples::

    nst-train --content-dir coco/train2014 --style-dir wikiart/train --vgg vgg_normalised.pth \\
        --workdir runs/adain
    nst-train --content-tfds coco/2017 --style-tfds my_wikiart --tfds-data-dir ~/tensorflow_datasets \\
        --workdir runs/adain-tfds

Several processes (one per machine, or per accelerator) run the same command with
``--coordinator-address HOST:PORT --num-processes N --process-id I`` (I = 0 .. N-1, HOST:PORT on
process 0's machine), or ``--distributed`` alone under SLURM, Open MPI, Kubernetes or Cloud TPU;
``--workdir`` must then be one folder all of them share, and ``--batch-size`` is the global batch.

Ctrl-C saves a checkpoint at the current step and exits with status 130 (press it twice to quit
at once). Errors print ``error: <message>`` and exit with status 2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence

from tqdm import tqdm

from nst_jax import cli, compile_cache, train
from nst_jax.errors import ConfigError

PROG = "nst-train"


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """What only the command line has (TrainConfig has the rest)."""

    workdir: str | None = cli.option(
        None, "folder for config.json, metrics.jsonl, loss_curve.png, checkpoints/ and decoder.npz; an existing "
        "one is resumed", metavar="PATH", required=True)
    no_progress: bool = cli.option(False, "no progress bar")


def build_parser() -> cli.ArgumentParser:
    """The ``nst-train`` parser, generated from :class:`TrainOptions` and :class:`nst_jax.train.TrainConfig`."""
    return cli.build_parser(
        PROG, "Train the AdaIN decoder (Huang & Belongie 2017) with data parallelism and checkpoints.",
        [(TrainOptions, ()), (train.TrainConfig, ())],
        groups=[("processes", "several processes (machines)")],
        epilog="Loss norms and how --style-weight relates between them: see the nst_jax.train docstring.")


class _Interrupt:
    """SIGINT handler: the first Ctrl-C asks training to checkpoint and stop, the second quits."""

    def __init__(self, stop: threading.Event):
        self.stop = stop

    def __call__(self, signum, frame) -> None:
        if self.stop.is_set():
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.stop.set()
        print("\ninterrupt: saving a checkpoint at the current step (Ctrl-C again to quit now)",
              file=sys.stderr, flush=True)


class _ProgressBar:
    """tqdm over the steps of this run, with the latest logged losses as postfix."""

    def __init__(self, enabled: bool = True) -> None:
        self.bar: tqdm | None = None
        self.enabled = enabled

    def __call__(self, progress: train.TrainProgress) -> None:
        if self.bar is None:
            self.bar = tqdm(total=progress.total, initial=progress.start_step, unit="step",
                            dynamic_ncols=True, file=sys.stderr, disable=not self.enabled)
        self.bar.update(progress.step - self.bar.n)
        if progress.record is not None:
            r = progress.record
            self.bar.set_postfix(loss=f"{r['loss']:.4g}", Lc=f"{r['content_loss']:.4g}",
                                 Ls=f"{r['style_loss']:.4g}", lr=f"{r['lr']:.2g}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    compile_cache.enable()  # before the first compile; the library itself never sets it
    config = cli.from_args(train.TrainConfig, args)
    train.check_config(config)
    info = train.initialize_processes(config, on_stall=_stalled)  # before anything else touches JAX
    stop = threading.Event()
    bar = _ProgressBar(enabled=not args.no_progress and info.is_main)
    previous = signal.signal(signal.SIGINT, _Interrupt(stop))
    try:
        result = train.train(config, args.workdir, callback=bar, stop=stop)
    finally:
        signal.signal(signal.SIGINT, previous)
        bar.close()
    for which, count in result.skipped.items():
        if count:
            print(f"skipped {count} unreadable {which} image(s)", file=sys.stderr)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if result.start_step:
        print(f"resumed from step {result.start_step}", file=sys.stderr)
    if result.interrupted:
        print(f"interrupted at step {result.step}; checkpoint saved in {args.workdir}; rerun the same "
              "command to resume", file=sys.stderr)
        return cli.EXIT_INTERRUPTED
    if info.is_main:
        print(f"trained to step {result.step}; decoder: {result.decoder_path}")
    else:
        print(f"process {info.index} of {info.count}: trained to step {result.step}")
    return 0


def _stalled(message: str) -> None:
    # Runs in a timer thread while JAX waits inside C++ for the other processes: ending here is the
    # only way to give one line instead of JAX's abort with a C++ log a little later.
    print(f"error: {message}", file=sys.stderr, flush=True)
    os._exit(cli.EXIT_USER_ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status (0, 2 on user errors, 130 when interrupted)."""
    rc = cli.run_main(_run, argv, weights_message=cli.weights_flags({"adain_vgg": "--vgg"}))
    if rc != 0 and _several_processes():
        # JAX's exit handler waits at a shutdown barrier for every process; after a failure the
        # others may never come (a dead peer is only declared after a 100 s heartbeat timeout), so
        # leave at once with the message already printed.
        sys.stdout.flush()
        sys.stderr.flush()
        _leave_together(rc)
    return rc


# How long a failed process waits for its peers at the exit barrier (they fail together when the
# error was agreed, e.g. different --num-processes; a peer that did not fail is not waited for longer).
LEAVE_TIMEOUT_S = 5.0


def _leave_together(rc: int) -> None:
    """Exits with ``rc`` after the peers that failed too, process 0 last.

    Process 0 hosts JAX's coordination service: when it exits first, a peer still between its error
    line and its exit is aborted by JAX (exit -6 and a C++ log instead of the one line and 2).
    """
    import jax

    from nst_jax import distributed

    info = distributed.ProcessInfo(jax.process_index(), jax.process_count())
    with contextlib.suppress(ConfigError):  # a peer that did not fail (or died): leave without it
        distributed.barrier("exit-after-error", info, timeout_s=LEAVE_TIMEOUT_S)
    if info.is_main:
        time.sleep(1.0)  # the peers past the barrier exit at once; the service outlives them
    os._exit(rc)


def _several_processes() -> bool:
    import jax

    return jax.distributed.is_initialized() and jax.process_count() > 1


def console() -> None:
    """The ``nst-train`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    console()
