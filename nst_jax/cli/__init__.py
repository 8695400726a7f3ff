"""Shared command-line plumbing: the only place that turns errors into messages and exit codes.

Every command (``nst-gatys``, ``nst-adain``, ``nst-train``; one module each in this package) builds
its parser with :func:`build_parser` from dataclasses: the library's config (``GatysConfig``,
``AdainConfig``, ``TrainConfig``) for the settings it defines, plus a small options dataclass in the
command's module for what only the command line has (paths, sizes, budgets). Defaults and choices
therefore exist once, and every command speaks one dialect:

* flags are the field names with dashes (``batch_size`` -> ``--batch-size``), unless
  ``metadata["flag"]`` renames one; ``metadata["short"]`` adds a short option (``-o``);
* list fields (``tuple[...]``) accept ``1,3`` and ``1 3`` alike (path lists only the second form:
  a file name may hold a comma);
* ``--help`` shows each default readably (``relu4_2``, never ``('relu4_2',)``), grouped by
  ``metadata["group"]``;
* user errors print one ``error: ...`` line and exit 2, Ctrl-C exits 130.

Field metadata keys: ``help`` (required), ``group``, ``flag``, ``short``, ``choices``, ``metavar``,
``min`` (``">0"`` or ``">=0"``: refused at parse time, NaN and infinity too), ``type`` (parser of one
value), ``required``, ``default_help`` (what the default means when it is None), ``split`` (False: lists are not
split at commas), ``cli`` (False: not a flag), ``positional`` (True: a required argument named by its metavar).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from nst_jax.errors import ConfigError, NSTError, OutputPathError, WeightsError, did_you_mean

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


def weights_flags(flags: Mapping[str, str]) -> Callable[[WeightsError], str]:
    """Rephrases a WeightsError for a command whose ``flags`` take weights files (kind -> flag).

    The library's message names no flag; this adds the command's: the flag that gave the file
    (``--vgg: decoder.pth does not match ...``), the flag that takes the network the file holds
    (``; pass it with --decoder``), or the flag to pass a file instead of downloading
    (``(--weights PATH)``).
    """

    def message(err: WeightsError) -> str:
        text = str(err)
        flag = flags.get(err.kind)
        if flag is not None:
            text = f"{flag}: {text}" if err.path is not None else f"{text} ({flag} PATH)"
        if err.found is not None and err.found != err.kind and err.found in flags:
            text = f"{text}; pass it with {flags[err.found]}"
        return text

    return message


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None, *,
             interrupted: Callable[[], str] | None = None,
             weights_message: Callable[[WeightsError], str] | None = None) -> int:
    """Calls ``main(argv)``, mapping user errors to ``error: ...`` on stderr and exit code 2.

    Ctrl-C prints ``interrupted`` (or the message ``interrupted()`` returns) and gives 130.
    ``weights_message`` words weights errors in the command's terms (see :func:`weights_flags`).
    """
    try:
        return main(argv)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2); keep main() returning
        return exit_.code if isinstance(exit_.code, int) else EXIT_USER_ERROR
    except NSTError as err:
        text = weights_message(err) if weights_message and isinstance(err, WeightsError) else str(err)
        print(f"error: {text}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(interrupted() if interrupted is not None else "interrupted", file=sys.stderr)
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


# ----------------------------------------------------------------------------------------------
# The one parser generator.


def option(default: Any = None, help: str = "", **metadata: Any) -> Any:  # noqa: A002 - argparse vocabulary
    """A dataclass field that is a command-line option (see the module docstring for ``metadata``)."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


class HelpFormatter(argparse.HelpFormatter):
    """One help layout for every command: wide option column, defaults written into each help."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34)


def flag_name(field: dataclasses.Field) -> str:
    """``--batch-size`` for ``batch_size``, or ``metadata["flag"]``."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def show_default(value: Any) -> str:
    """A default as a user would type it: ``relu1_1,relu2_1`` for a tuple, ``1e-05`` for a float."""
    if isinstance(value, (tuple, list)):
        return ",".join(show_default(v) for v in value)
    return str(value)


def _field_kind(hint: Any) -> tuple[Any, bool]:
    """(element type, is a list) from an annotation such as ``tuple[str, ...] | None``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = args[0]
        args = list(typing.get_args(hint))
    if typing.get_origin(hint) in (tuple, list):
        return args[0], True
    return hint, False


def _value_parser(field: dataclasses.Field, kind: Any, flag: str) -> Callable[[str], Any]:
    custom = field.metadata.get("type")
    if custom is not None:
        return custom
    bound = field.metadata.get("min")
    if bound is not None:
        return positive(kind, flag, allow_zero=bound == ">=0")
    if kind in (int, float):
        return kind  # argparse says: invalid int value: 'x'
    return str


class _ListAction(argparse.Action):
    """Collects ``--x 1 3``, ``--x 1,3`` and ``--x 1, 3`` into one tuple, each item parsed and checked."""

    def __init__(self, *args, item: Callable[[str], Any], split: bool, choices=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.item, self.split, self.valid = item, split, choices

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        tokens = [t.strip() for v in values for t in (v.split(",") if self.split else [v])]
        items = []
        for token in (t for t in tokens if t):
            try:
                value = self.item(token)
            except argparse.ArgumentTypeError as err:
                raise argparse.ArgumentError(self, str(err)) from None
            if self.valid is not None and value not in self.valid:
                choices = [str(c) for c in self.valid]
                raise argparse.ArgumentError(self, f'invalid choice "{value}"{did_you_mean(str(value), choices)}; '
                                                   f"valid choices: {', '.join(choices)}")
            items.append(value)
        if not items:
            raise argparse.ArgumentError(self, "expects at least one value")
        setattr(namespace, self.dest, tuple(items))


_LIST_METAVARS = {int: "N", float: "W", str: "NAME"}
LISTS_EPILOG = "Lists take spaces or commas alike: --x 1 3 or --x 1,3 (file lists: spaces only)."


def add_fields(parser: argparse.ArgumentParser, cls: type, *, groups: dict[str, Any] | None = None,
               skip: Iterable[str] = ()) -> list[str]:
    """Adds one option per field of the dataclass ``cls``; returns the field names added.

    Args:
      parser: where the options go.
      cls: a dataclass whose fields carry ``metadata["help"]`` (see the module docstring).
      groups: argument groups by ``metadata["group"]`` key, created beforehand so that the help
        lists them in the command's order; fields without a known group go to ``parser`` itself.
      skip: field names that the command sets itself (not flags).
    """
    hints = typing.get_type_hints(cls)
    added = []
    for field in dataclasses.fields(cls):
        if field.name in skip or not field.metadata.get("cli", True):
            continue
        meta = field.metadata
        flag = flag_name(field)
        names = ([meta["short"]] if "short" in meta else []) + [flag]
        target = (groups or {}).get(meta.get("group"), parser)
        default = field.default
        help_text = meta["help"]
        kind, is_list = _field_kind(hints[field.name])
        if meta.get("positional"):
            target.add_argument(field.name, type=_value_parser(field, kind, meta.get("metavar", field.name)),
                                metavar=meta.get("metavar"), help=help_text.replace("%", "%%"))
            added.append(field.name)
            continue
        if kind is bool:
            if default is not False:
                raise TypeError(f"{cls.__name__}.{field.name}: a command-line flag must default to False")
            target.add_argument(*names, dest=field.name, action="store_true", help=help_text)
            added.append(field.name)
            continue
        choices = meta.get("choices")
        metavar = meta.get("metavar")
        if metavar is None and choices is not None:
            metavar = "{" + ",".join(map(str, choices)) + "}"
        if is_list and choices is not None and "metavar" not in meta:
            # A list's metavar is one NAME, so the valid names go into the help, before the default.
            metavar = "NAME"
            help_text = f"{help_text}; from {','.join(map(str, choices))}"
        # default_help wins: it can say more than the value (e.g. a default that depends on the input).
        shown = meta.get("default_help") or (None if default is None else show_default(default))
        if shown:
            help_text = f"{help_text} (default: {shown})"
        help_text = help_text.replace("%", "%%")
        parse = _value_parser(field, kind, flag)
        if is_list:
            split = meta.get("split", True)
            target.add_argument(*names, dest=field.name, default=default, nargs="+", action=_ListAction,
                                item=parse, split=split, choices=choices, help=help_text,
                                metavar=metavar or _LIST_METAVARS.get(kind, "VALUE") if split else metavar or "PATH")
        else:
            target.add_argument(*names, dest=field.name, default=default, type=parse, choices=choices,
                                metavar=metavar, help=help_text, required=meta.get("required", False))
        added.append(field.name)
    return added


def build_parser(prog: str, description: str, sources: Sequence[tuple[type, Iterable[str]]], *,
                 groups: Sequence[tuple[str, str]] = (), epilog: str | None = None) -> ArgumentParser:
    """The argparse parser of one command, generated from dataclasses.

    Args:
      prog: the console script's name (``nst-gatys``), shown in the usage line and in errors.
      description: what the command does (shown as written).
      sources: ``(dataclass, fields to skip)`` pairs, options dataclass and library config.
      groups: ``(key, title)`` of the help sections, in order.
      epilog: text after the options.
    """
    epilog = LISTS_EPILOG if epilog is None else f"{epilog} {LISTS_EPILOG}"
    parser = ArgumentParser(prog=prog, description=description, epilog=epilog, formatter_class=HelpFormatter)
    made = {key: parser.add_argument_group(title) for key, title in groups}
    for cls, skip in sources:
        add_fields(parser, cls, groups=made, skip=skip)
    return parser


def from_args(cls: type, args: argparse.Namespace, **overrides: Any):
    """Builds the dataclass ``cls`` from the parsed flags of its fields (and ``overrides``)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **overrides})


__all__ = ["ArgumentParser", "comma_list", "run_main", "weights_flags", "positive", "same_file", "refuse_overwriting_inputs",
           "ConfigError", "option", "add_fields", "build_parser", "from_args", "show_default", "flag_name",
           "EXIT_USER_ERROR", "EXIT_INTERRUPTED"]
