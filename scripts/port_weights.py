"""Converts a PyTorch ``.pth`` checkpoint into this project's ``.npz`` params format.

Usage::

    python scripts/port_weights.py --kind vgg19 vgg19-dcbb9e9d.pth
    python scripts/port_weights.py --kind adain_vgg vgg_normalised.pth --output checkpoints/adain_vgg.npz
    python scripts/port_weights.py --kind adain_decoder decoder.pth

The ``.pth`` is read without torch and without running its pickle (see ``nst_jax/_pth.py``). If the
file name carries a ``-<hex>`` hash prefix (torchvision's convention) the file is checked against it.
The output (default ``checkpoints/<name>.npz``) is written atomically and never overwritten
without ``--force``; its SHA-256 is printed as a line for ``checkpoints/SHA256SUMS``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

from nst_jax import cli, weights  # noqa: E402
from nst_jax.errors import ChecksumError, OutputPathError, WeightsError  # noqa: E402


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class PortOptions:
    """The script's flags."""

    source: str = cli.option(None, "checkpoint written by torch.save", positional=True, metavar="SRC.pth")
    kind: str = cli.option(None, "network in the file: torchvision VGG-19, AdaIN vgg_normalised, AdaIN decoder",
                           choices=weights.KINDS, required=True)
    output: str | None = cli.option(None, "destination .npz", short="-o", metavar="PATH",
                                    default_help="checkpoints/<source name>.npz")
    force: bool = cli.option(False, "overwrite an existing output file")


def build_parser() -> cli.ArgumentParser:
    """The command line, from the one generator; usage errors are one ``error: ...`` line with exit status 2."""
    return cli.build_parser("port_weights.py", "Convert a PyTorch .pth checkpoint to nst_jax .npz params.",
                            [(PortOptions, ())])


def port(source: Path, kind: str, output: Path, force: bool) -> str:
    """Converts ``source`` to ``output``; returns the output's SHA-256.

    Everything about the output is checked before the (possibly 548 MB) source is read.

    Raises:
      OutputPathError: the output is not an ``.npz``, exists (without ``force``), is a folder, or
        its folder is missing or not writable.
      ChecksumError: the source fails the hash prefix in its name.
      WeightsError: the source is missing, unsafe, corrupt or another network.
    """
    if output.is_dir():
        raise OutputPathError(f"--output {output} is a folder; give a file name such as "
                              f"{output / (source.stem + '.npz')}")
    if output.suffix.lower() != ".npz":
        raise OutputPathError(f"--output {output} must end in .npz (the format the loaders recognise)")
    if output.exists() and not force:
        raise OutputPathError(f"output {output} already exists; pass --force to overwrite it")
    weights.check_writable(output)
    if source.is_file():
        expected = weights.hash_prefix_from_url(source.name)
        if expected is not None:
            actual = sha256_of(source)
            if not actual.startswith(expected):
                raise ChecksumError(
                    f"{source} does not match the hash prefix in its name: expected sha256 {expected}..., "
                    f"got {actual[:len(expected)]}...; download it again"
                )
    params = weights.load(source, kind)
    weights.save_params(params, output, kind=kind)
    return sha256_of(output)


def _run(argv: list[str] | None) -> int:
    options = cli.from_args(PortOptions, build_parser().parse_args(argv))
    source = Path(options.source)
    output = Path(options.output) if options.output else ROOT / "checkpoints" / f"{source.stem}.npz"
    digest = port(source, options.kind, output, options.force)
    size_mb = output.stat().st_size / 1e6
    print(f"wrote {output} ({size_mb:.1f} MB)")
    print("line for checkpoints/SHA256SUMS:")
    print(f"{digest}  {output.name}")
    return 0


def _weights_message(err: WeightsError) -> str:
    """Here the fix for a file of another network is ``--kind``, not another command's flag."""
    if err.found is not None and err.found != err.kind:
        return f"{err}; pass --kind {err.found}"
    return str(err)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for any user error, with a one-line message)."""
    return cli.run_main(_run, argv, weights_message=_weights_message)


if __name__ == "__main__":
    sys.exit(main())
