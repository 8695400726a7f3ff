"""Shared command-line plumbing: the only place that turns errors into messages and exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from nst_jax.errors import ConfigError, NSTError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: <message>`` on stderr and exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_USER_ERROR, f"error: {message}; see {self.prog} --help\n")


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
    """An argparse ``type`` for numbers > 0 (or >= 0)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects a number, got {text!r}") from None
        if not (value >= 0 if allow_zero else value > 0) or value != value:
            raise argparse.ArgumentTypeError(f"{flag} must be {'>= 0' if allow_zero else '> 0'}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


__all__ = ["ArgumentParser", "comma_list", "run_main", "positive", "ConfigError"]
