"""Shared command-line plumbing: the only place that turns errors into messages and exit codes."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence

from nst_jax.errors import ConfigError, NSTError, OutputPathError, did_you_mean

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: <message>`` on stderr and exit code 2.

    Unknown choices and unknown options get a "did you mean" for the closest valid spelling, and
    an unknown choice lists the valid ones.
    """

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_USER_ERROR, f"error: {message}; see {self.prog} --help\n")

    def _check_value(self, action: argparse.Action, value) -> None:
        # argparse's own message lists the choices but never suggests one.
        if action.choices is not None and value not in action.choices:
            choices = [str(c) for c in action.choices]
            raise argparse.ArgumentError(
                action, f'invalid choice "{value}"{did_you_mean(str(value), choices)}; '
                        f"valid choices: {', '.join(choices)}")

    def parse_args(self, args=None, namespace=None):  # noqa: D102 - argparse API
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            options = [o for o in self._option_string_actions if o.startswith("--")]
            hint = next((did_you_mean(a.partition("=")[0], options) for a in extras
                         if a.startswith("--")), "")
            self.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return parsed


def comma_list(kind: Callable[[str], object], flag: str) -> Callable[[str], tuple]:
    """An argparse ``type`` that parses ``"a,b,c"`` into a tuple of ``kind`` values."""

    def parse(text: str) -> tuple:
        items = [t.strip() for t in text.split(",") if t.strip()]
        try:
            return tuple(kind(t) for t in items)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects a comma-separated list, got {text!r}") from None

    parse.__name__ = f"list of {getattr(kind, '__name__', 'values')}"
    return parse


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Calls ``main(argv)``, mapping user errors to ``error: ...`` on stderr and exit code 2."""
    try:
        return main(argv)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2); keep main() returning
        return exit_.code if isinstance(exit_.code, int) else EXIT_USER_ERROR
    except NSTError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def positive(kind: Callable[[str], float | int], flag: str, allow_zero: bool = False):
    """An argparse ``type`` for finite numbers > 0 (or >= 0).

    NaN and infinity are refused here: they would pass a plain comparison (``inf > 0``) and only
    fail much later, as a crash or a non-finite loss.
    """

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects a number, got {text!r}") from None
        bound = ">= 0" if allow_zero else "> 0"
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{flag} must be a finite number {bound}, got {text}")
        if not (value >= 0 if allow_zero else value > 0):
            raise argparse.ArgumentTypeError(f"{flag} must be {bound}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _identities(path: str | os.PathLike) -> list:
    """The resolved path, and (device, inode) when the file exists: equal for two names of one file
    (symlinks, ``..``, hard links, bind mounts, case-insensitive file systems)."""
    ids: list = [os.path.realpath(path)]
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # does not exist (yet), or an unusable name
        return ids
    return ids + [(st.st_dev, st.st_ino)]


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file (see :func:`_identities`)."""
    return bool(set(_identities(a)) & set(_identities(b)))


def refuse_overwriting_inputs(outputs: Iterable[tuple[str, str | os.PathLike]],
                              inputs: Iterable[tuple[str, str | os.PathLike | None]]) -> None:
    """Raises OutputPathError when an output would replace one of the run's input files.

    Linear in the number of paths (one ``stat`` each), so folders of many images are cheap.

    Args:
      outputs: ``(flag, path)`` of every file the run will write.
      inputs: ``(what, path)`` of every file it reads (None entries are skipped).
    """
    known = {}
    for what, src in inputs:
        if src is not None:
            for key in _identities(src):
                known.setdefault(key, (what, src))
    for flag, out in outputs:
        for key in _identities(out):
            if key in known:
                what, src = known[key]
                raise OutputPathError(f"{flag} {out} is the {what} {src}: writing it would destroy the "
                                      f"input; choose another {flag}")


__all__ = ["ArgumentParser", "comma_list", "run_main", "positive", "same_file", "refuse_overwriting_inputs",
           "ConfigError"]
