"""Every command and Python snippet in README.md runs as written, so the README cannot drift.

The README's ```bash and ```python blocks are extracted; each command (or snippet) runs in-process in
a temporary folder, at tiny sizes, with the narrow fixture weights and generated tiny images in
place of the large downloads and the user's photos. What is changed is listed in the tables below
(:data:`ARGUMENTS`, :data:`SNIPPET_EDITS`, :data:`FIXTURE_WEIGHTS`); a command that cannot run here
(a GPU, a cluster, a dataset download, the test suite itself) must match an entry of :data:`SKIPS`
with its reason, and shows up as skipped with that reason. A command that matches neither a runner
nor a skip fails the test: nothing in the README goes unchecked silently.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import re
import shlex
import sys
import tomllib
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst_jax import image, weights

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FIXTURES = ROOT / "tests" / "fixtures"

# Tiny inputs: big enough for the narrow networks' deepest layers and for a 32-pixel training crop.
TINY_HW = (40, 48)  # generated masks; images keep the packaged images' aspect at this height
TINY_SIZE = "40"

# Weights a README command or snippet would download, replaced by the narrow fixtures.
FIXTURE_WEIGHTS = {
    "vgg19": FIXTURES / "gatys" / "vgg19_narrow.pth",
    "adain_vgg": FIXTURES / "adain" / "vgg_normalised_narrow.pth",
    "adain_decoder": FIXTURES / "adain" / "decoder_narrow.pth",
}

# Commands that do not run here, each with the reason (matched against the command, comments removed).
SKIPS: dict[str, str] = {
    r"^python -m pytest\b": "runs the test suite, which this test is part of",
    r"^python scripts/make_fixtures\.py\b": "needs PyTorch (the torch extra) and rewrites the committed golden "
                                            "fixtures",
    r"--content-tfds .*--style-tfds": "needs the COCO and WikiArt TFDS datasets prepared on disk (tens of GB)",
    r"^srun\b": "needs a SLURM cluster",
    r"nst-stylize-dataset .*--coordinator-address": "runs one process of several; tests/test_dataset.py runs two",
    r"nst-stylize-dataset .*--content-tfds": "needs the dataset prepared as TFDS array_record on disk",
}
# Commands that are accepted without running: the test already runs in the installed package.
NO_OPS: dict[str, str] = {
    r"^pip install\b": "installation; this test runs in an environment where the package is installed",
}


@dataclasses.dataclass(frozen=True)
class Rewrite:
    """How the arguments of one command line change: options set (replaced or added) and appended."""

    set_options: dict[str, str]
    keep_help: bool = True  # with --help nothing is added (the command only prints)


# Per command: the options forced to tiny values or fixture paths. Keys are the program as the
# README writes it (``python -m MODULE``, ``python scripts/X.py`` or a console script).
ARGUMENTS: dict[str, Rewrite] = {
    "gatys": Rewrite({"--size": TINY_SIZE, "--iterations": "2",
                      "--weights": str(FIXTURE_WEIGHTS["vgg19"])}),
    "adain": Rewrite({"--size": TINY_SIZE, "--vgg": str(FIXTURE_WEIGHTS["adain_vgg"]),
                      "--decoder": str(FIXTURE_WEIGHTS["adain_decoder"])}),
    "train": Rewrite({"--steps": "2", "--batch-size": "2", "--crop": "32", "--load-size": "36",
                      "--num-workers": "0", "--log-every": "1", "--checkpoint-every": "2",
                      "--vgg": str(FIXTURES / "train" / "vgg_normalised_narrow.pth")}),
    "benchmark": Rewrite({}),
    "dataset": Rewrite({"--content-size": "0", "--style-size": "0", "--batch-size": "2", "--threads": "0",
                        "--vgg": str(FIXTURE_WEIGHTS["adain_vgg"]),
                        "--decoder": str(FIXTURE_WEIGHTS["adain_decoder"])}),
}
# Which ARGUMENTS entry a program uses (by the last word of its module, script or console name).
KIND_OF_PROGRAM = (
    (re.compile(r"gatys"), "gatys"),
    (re.compile(r"adain"), "adain"),
    (re.compile(r"train"), "train"),
    (re.compile(r"benchmark"), "benchmark"),
    (re.compile(r"dataset"), "dataset"),
)

# Python snippets: (pattern, replacement) applied to the source before it runs.
SNIPPET_EDITS: list[tuple[str, str]] = [
    (r"height=\d+", f"height={TINY_HW[0]}"),
    (r"iterations=\d+", "iterations=2"),
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
STYLE_NAMES = re.compile(r"paint|style|wikiart|(^|/)[ab]\.jpg$")
OUTPUT_OPTIONS = ("--output", "-o", "--workdir", "--metrics-json")


# ------------------------------------------------------------------------------------------------
# Reading the README


@dataclasses.dataclass(frozen=True)
class Snippet:
    kind: str  # "bash" command or "python" block
    line: int  # README line of the command or block
    text: str

    @property
    def id(self) -> str:
        first = self.text.strip().splitlines()[0]
        return f"L{self.line}:{first[:60]}"


def _split_commands(block: str, first_line: int) -> list[Snippet]:
    """One Snippet per command of a bash block: continuations joined, comments dropped, && split."""
    out: list[Snippet] = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        start = i
        text = lines[i]
        while text.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text.rstrip()[:-1] + " " + lines[i]
        i += 1
        words = shlex.split(text, comments=True)
        if not words:
            continue
        command: list[str] = []
        for word in words + ["&&"]:
            if word == "&&":
                if command:
                    out.append(Snippet("bash", first_line + start, shlex.join(command)))
                command = []
            else:
                command.append(word)
    return out


def readme_snippets(text: str) -> list[Snippet]:
    snippets = []
    for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        lang, body = m.group(1), m.group(2)
        line = text[:m.start()].count("\n") + 2  # the block's first line
        if lang == "bash":
            snippets += _split_commands(body, line)
        elif lang == "python":
            snippets.append(Snippet("python", line, body))
    return snippets


SNIPPETS = readme_snippets(README.read_text(encoding="utf-8"))


def _match(table: dict[str, str], command: str) -> str | None:
    return next((why for pattern, why in table.items() if re.search(pattern, command)), None)


# ------------------------------------------------------------------------------------------------
# Inputs the README assumes the user has


def _tiny_image(path: Path, seed: int) -> None:
    """A small copy of the packaged content photo or style painting (by name), or a two-region mask.

    Copies of the packaged images have the shapes of the built-in runs, so the commands share
    compiled programs; the seed varies the copies (a shifted crop) so two of them differ.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if "mask" in path.stem:
        pixels = np.zeros((*TINY_HW, 3), np.uint8)
        pixels[:, : TINY_HW[1] // 2] = 255
        Image.fromarray(pixels).save(path)
        return
    source = image.default_style_path() if STYLE_NAMES.search(str(path)) else image.default_content_path()
    with Image.open(source) as img:
        img = img.convert("RGB")
        shift = seed % 8
        img = img.crop((shift, 0, img.width - 8 + shift, img.height))
        img.resize((round(img.width * TINY_HW[0] / img.height), TINY_HW[0]), Image.BILINEAR).save(path)


def _provide_inputs(words: list[str], folder: Path) -> None:
    """Creates the images and image folders a command or snippet names but the README does not ship."""
    outputs = {words[i + 1] for i, w in enumerate(words[:-1]) if w in OUTPUT_OPTIONS}
    for seed, word in enumerate(words):
        if word in outputs or word.startswith("-"):
            continue
        path = folder / word
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.exists():
            _tiny_image(path, seed)
        elif word.endswith("/") and not path.exists():
            for k in range(4):  # enough for a batch of two on each of two folders
                _tiny_image(path / f"image{k}.{'png' if k % 2 else 'jpg'}", seed * 10 + k)


# ------------------------------------------------------------------------------------------------
# Running a command in-process


def _program(words: list[str]) -> tuple[str, Callable[[list[str]], object], list[str]]:
    """(kind, callable taking argv, argv) for ``python -m M``, ``python scripts/X.py`` or a console script."""
    if words[:2] == ["python", "-m"]:
        name, argv = words[2], words[3:]
        entry = _module_main(name)
    elif words[0] == "python" and words[1].endswith(".py"):
        name, argv = words[1], words[2:]
        entry = _script_main(ROOT / name)
    else:
        name, argv = words[0], words[1:]
        entry = _console_script(name)
    last = re.split(r"[./]", name.removesuffix(".py"))[-1]  # nst_jax.gatys, scripts/train_decoder.py, nst-gatys
    kind = next((k for pattern, k in KIND_OF_PROGRAM if pattern.search(last)), None)
    if kind is None:
        raise AssertionError(f"no ARGUMENTS entry for README program {name!r}; add one to tests/test_readme.py")
    return kind, entry, argv


def _module_main(name: str) -> Callable[[list[str]], object]:
    module = importlib.import_module(name)
    if hasattr(module, "main"):
        return module.main
    raise AssertionError(f"python -m {name}: the module has no main(argv) to run in-process")


def _script_main(path: Path) -> Callable[[list[str]], object]:
    spec = importlib.util.spec_from_file_location(f"_readme_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))  # scripts import their sibling modules
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module.main


def _console_script(name: str) -> Callable[[list[str]], object]:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    if name not in scripts:
        raise AssertionError(f"README command {name!r} is not a console script of pyproject.toml "
                             f"({', '.join(scripts)}) and has no skip reason")
    module_name, _, attr = scripts[name].partition(":")
    module = importlib.import_module(module_name)
    # A console function reads sys.argv and takes no arguments; its module's main(argv) runs in-process.
    return getattr(module, "main", getattr(module, attr))


def rewrite(kind: str, argv: list[str]) -> list[str]:
    """``argv`` with the ARGUMENTS options of ``kind`` set (replacing a given value, else appended)."""
    rule = ARGUMENTS[kind]
    if "--help" in argv or "-h" in argv:
        return list(argv)
    out = list(argv)
    for option, value in rule.set_options.items():
        if option in out:
            out[out.index(option) + 1] = value
        else:
            out += [option, value]
    return out


def _exit_code(entry: Callable[[list[str]], object], argv: list[str]) -> int:
    try:
        code = entry(argv)
    except SystemExit as exit_:
        code = exit_.code
    return 0 if code is None else int(code)


# ------------------------------------------------------------------------------------------------
# Tests


def test_every_readme_block_is_found():
    """The extractor sees the README's blocks (a renamed fence would otherwise test nothing)."""
    text = README.read_text(encoding="utf-8")
    assert len([s for s in SNIPPETS if s.kind == "python"]) == text.count("```python")
    assert sum(1 for s in SNIPPETS if s.kind == "bash") >= text.count("```bash")


def test_the_command_splitter():
    snippets = _split_commands("pip install . && python -m x --a 1   # note\n\npython s.py \\\n  --b 2\n", 10)
    assert [(s.line, s.text) for s in snippets] == [(10, "pip install ."), (10, "python -m x --a 1"),
                                                     (12, "python s.py --b 2")]
    assert rewrite("gatys", ["--size", "512", "-o", "x.png"])[:4] == ["--size", TINY_SIZE, "-o", "x.png"]
    assert rewrite("gatys", ["--help"]) == ["--help"]


def test_every_skip_reason_is_still_used():
    """A skip entry that matches no README command is stale: remove it (or the README lost a command)."""
    commands = [s.text for s in SNIPPETS if s.kind == "bash"]
    for table in (SKIPS, NO_OPS):
        for pattern in table:
            assert any(re.search(pattern, c) for c in commands), f"no README command matches {pattern!r}"


@pytest.mark.parametrize("snippet", [s for s in SNIPPETS if s.kind == "bash"], ids=lambda s: s.id)
def test_readme_command_runs(snippet, tmp_path, monkeypatch, capsys):
    why = _match(SKIPS, snippet.text)
    if why is not None:
        pytest.skip(f"README line {snippet.line}: {why}")
    if _match(NO_OPS, snippet.text) is not None:
        return
    monkeypatch.chdir(tmp_path)
    words = shlex.split(snippet.text)
    kind, entry, argv = _program(words)
    argv = rewrite(kind, argv)
    _provide_inputs(argv, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. the colour-profile notes on generated images
        code = _exit_code(entry, argv)
    captured = capsys.readouterr()
    assert code == 0, f"README line {snippet.line}: {snippet.text!r} exited {code}: {captured.err[-2000:]}"


@contextlib.contextmanager
def _offline_weights(monkeypatch):
    """``weights.resolve_weights(name)`` without a path reads the narrow fixture instead of downloading."""
    real = weights.resolve_weights

    def resolve(name, path=None, **kwargs):
        return real(name, FIXTURE_WEIGHTS[name] if path is None else path, **kwargs)

    monkeypatch.setattr(weights, "resolve_weights", resolve)
    yield


@pytest.mark.parametrize("snippet", [s for s in SNIPPETS if s.kind == "python"], ids=lambda s: s.id)
def test_readme_python_snippet_runs(snippet, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = snippet.text
    for pattern, replacement in SNIPPET_EDITS:
        source = re.sub(pattern, replacement, source)
    names = re.findall(r"[\"']([^\"']+)[\"']", source)
    _provide_inputs(names, tmp_path)
    # Line numbers in a traceback are README lines.
    code = compile("\n" * (snippet.line - 1) + source, str(README), "exec")
    with _offline_weights(monkeypatch):
        exec(code, {"__name__": "__readme__"})  # noqa: S102 - the README's own code
