"""Exception types for user-facing errors.

Every error a user can cause (a bad path, a bad flag, a broken weights file) raises a subclass of
:class:`NSTError` whose message is one line that names the problem and the fix. The command-line
entry points print that line and exit with status 2; library callers catch the specific type.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable


class NSTError(Exception):
    """Base class for errors caused by user input; ``str(err)`` is a one-line message."""

    exit_code = 2


class ConfigError(NSTError, ValueError):
    """An option value is out of range, unknown, or inconsistent with another."""


class InputImageError(NSTError):
    """An input image is missing, unreadable, of an unsupported kind, or too small."""


class OutputPathError(NSTError):
    """An output path cannot be written (missing folder, not writable, is a directory)."""


class WeightsError(NSTError):
    """A weights file is missing, of the wrong network, or has wrong keys or shapes.

    The message names no command-line flag (the library does not know who called it); the fields
    let each command line say which of its flags the fix concerns.

    Attributes:
      kind: the network being loaded (a key of ``weights.KINDS``), or None.
      path: the file the caller passed, or None when the library chose the file (cache, download).
      found: the network the file holds instead, when it was recognised.
    """

    def __init__(self, message: str, *, kind: str | None = None, path: object = None,
                 found: str | None = None) -> None:
        super().__init__(message)
        self.kind, self.path, self.found = kind, path, found


class UnsafePickleError(WeightsError):
    """A .pth pickle references something other than tensor rebuilding; it was not executed."""


class ChecksumError(WeightsError):
    """A downloaded or cached file does not match its expected SHA-256."""


class DownloadError(WeightsError):
    """Weights are not available locally and could not be downloaded."""


class NonFiniteLossError(NSTError):
    """The loss became NaN or infinite during optimization or training."""


class ProcessLostError(NSTError):
    """Another process of a multi-process run stopped or lost its connection; rerun all to resume."""

    exit_code = 1


class MemoryBudgetError(NSTError):
    """The estimated memory for a job exceeds the budget; lower the size or raise the budget."""


class DeviceCountError(ConfigError):
    """A batch cannot be split evenly across the available devices."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Returns ' (did you mean "x"?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def check_choice(what: str, value: str, choices: Iterable[str], flag: str | None = None) -> str:
    """Returns ``value`` if it is one of ``choices``; raises ConfigError listing them otherwise."""
    choices = tuple(choices)
    if value in choices:
        return value
    where = f" for {flag}" if flag else ""
    raise ConfigError(
        f'unknown {what} "{value}"{where}{did_you_mean(value, choices)}; '
        f"valid choices: {', '.join(choices)}"
    )


def normalized_weights(values: Iterable[float], flag: str) -> tuple[float, ...]:
    """Returns ``values`` divided by their sum (Python floats, on the host).

    Raises:
      ConfigError: a weight is negative or not finite, all are zero, or their sum overflows to
        infinity (dividing by it would silently turn every weight into 0).
    """
    values = tuple(float(v) for v in values)
    shown = " ".join(f"{v:g}" for v in values)
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise ConfigError(f"{flag} must be >= 0 and finite, got {shown}")
    total = sum(values)
    if not math.isfinite(total):
        raise ConfigError(f"{flag} sum to infinity ({shown}); scale them down: only their ratios matter")
    if not total > 0:
        raise ConfigError(f"{flag} must be >= 0 and not all zero, got {shown}; give at least one positive "
                          "weight")
    return tuple(v / total for v in values)
