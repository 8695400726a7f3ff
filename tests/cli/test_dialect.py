"""One command-line dialect (issue 16): every command's parser comes from one generator, so all of
them show the same help layout, accept lists in both forms, mean the output HEIGHT by --size and
install as console scripts."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst_jax import cli, gatys
from nst_jax.cli import adain as adain_cli
from nst_jax.cli import app as app_cli
from nst_jax.cli import dataset as dataset_cli
from nst_jax.cli import gatys as gatys_cli
from nst_jax.cli import train as train_cli

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
GATYS_VGG = FIXTURES / "gatys" / "vgg19_narrow.pth"
ADAIN_NETS = ["--vgg", str(FIXTURES / "adain" / "vgg_normalised_narrow.pth"),
              "--decoder", str(FIXTURES / "adain" / "decoder_narrow.pth")]

# (console script, parser builder, options every parse needs, has an output image)
COMMANDS = {
    "nst-gatys": (gatys_cli.build_parser, [], True),
    "nst-adain": (adain_cli.build_parser, [], True),
    "nst-train": (train_cli.build_parser, ["--workdir", "w"], False),
    "nst-app": (app_cli.build_parser, [], False),
    "nst-stylize-dataset": (dataset_cli.build_parser, ["--style-dir", "s", "-o", "o"], False),
}


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"dialect_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


# Every parser from the generator: the console scripts and the scripts with a command line.
LAYOUTS = {**{prog: (build, has_output) for prog, (build, _, has_output) in COMMANDS.items()},
           "port_weights.py": (lambda: _script("port_weights").build_parser(), True),
           "figures.py": (lambda: _script("figures").build_parser(), False)}


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def _help(build) -> str:
    return build().format_help()


@pytest.mark.parametrize("prog", sorted(LAYOUTS))
def test_help_follows_one_layout(prog):
    build, has_output = LAYOUTS[prog]
    text = _help(build)
    assert text.startswith(f"usage: {prog} ")
    assert "Lists take spaces or commas alike" in text
    # Defaults readable: no Python reprs of tuples or None, and every shown default once.
    for python_repr in ("('", "',)", ",)", "(default: None)", "(default: ())", "(default: False)"):
        assert python_repr not in text, (python_repr, text)
    assert "(default: %(default)s)" not in text
    for line in text.splitlines():
        assert line.count("(default:") <= 1, line
    if has_output:
        assert re.search(r"^\s+-o PATH, --output PATH\s", text, re.M), text


@pytest.mark.parametrize("prog", sorted(LAYOUTS))
def test_list_choices_come_before_the_default(prog):
    """"which figures; from a,b,c (default: a,b,c)": the valid names, then the default, then nothing."""
    lists = [a for a in _list_actions(LAYOUTS[prog][0]()) if a.valid is not None and a.metavar == "NAME"]
    for action in lists:
        names = ",".join(map(str, action.valid))
        assert f"; from {names}" in action.help, action.help
        if "(default:" in action.help:
            assert action.help.endswith(")") and action.help.index("; from ") < action.help.index("(default:")
    if prog == "figures.py":
        assert lists  # --figures: the case this guards


def test_gatys_defaults_come_from_the_library():
    text = " ".join(_help(gatys_cli.build_parser).split())
    config = gatys.GatysConfig()
    assert f"(default: {','.join(config.style_layers)})" in text
    assert f"(default: {config.optimizer})" in text
    parsed = gatys_cli.build_parser().parse_args([])
    assert cli.from_args(gatys.GatysConfig, parsed, iterations=config.iterations) == config
    assert parsed.content_weight == gatys_cli._WEIGHTS["content"].default


def _sample(action: argparse.Action) -> tuple[str, str]:
    """Two valid values for a list option."""
    if action.valid is not None:
        return tuple(str(c) for c in list(action.valid)[:2])  # type: ignore[return-value]
    if "layers" in action.dest:
        return "relu1_1", "relu2_1"
    if action.dest == "mask_colors":
        return "ff0000", "00ff00"
    return "1", "3"


def _list_actions(parser):
    return [a for a in parser._actions if isinstance(a, cli._ListAction)]


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_every_list_option_takes_commas_and_spaces(prog):
    build, base, _ = COMMANDS[prog]
    actions = _list_actions(build())
    if prog not in ("nst-train", "nst-app"):  # these two take no lists
        assert actions, "expected list options"
    for action in actions:
        flag = action.option_strings[-1]
        if not action.split:  # file lists: a file name may hold a comma
            parsed = build().parse_args([*base, flag, "a,b.png", "c.png"])
            assert getattr(parsed, action.dest) == ("a,b.png", "c.png")
            continue
        a, b = _sample(action)
        spaced = getattr(build().parse_args([*base, flag, a, b]), action.dest)
        commas = getattr(build().parse_args([*base, flag, f"{a},{b}"]), action.dest)
        assert spaced == commas and len(spaced) == 2, (flag, spaced, commas)


def test_list_items_are_checked(capsys):
    with pytest.raises(SystemExit) as exit_:
        gatys_cli.build_parser().parse_args(["--style-blend-weights", "1,-2"])
    assert exit_.value.code == 2
    assert "--style-blend-weights must be >= 0" in capsys.readouterr().err


def test_console_scripts_resolve_and_show_help(monkeypatch, capsys):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == set(COMMANDS)
    for name, target in scripts.items():
        module, _, function = target.partition(":")
        monkeypatch.setattr(sys, "argv", [name, "--help"])
        with pytest.raises(SystemExit) as exit_:
            getattr(importlib.import_module(module), function)()
        assert exit_.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: {name} ")


@pytest.mark.parametrize("prog, argv", [("nst-gatys", ["--sizes", "0"]), ("nst-adain", ["--alpha", "x"]),
                                        ("nst-train", ["--steps", "x"]), ("port_weights.py", ["--kind", "vgg"]),
                                        ("nst-stylize-dataset", ["--style-dir", "s", "-o", "o", "--alpha", "x"])])
def test_same_exit_code_for_a_usage_error(prog, argv, capsys):
    main = {"nst-gatys": gatys_cli.main, "nst-adain": adain_cli.main, "nst-train": train_cli.main,
            "port_weights.py": lambda a: _script("port_weights").main(a),
            "nst-stylize-dataset": dataset_cli.main}[prog]
    assert main(argv) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.rstrip().endswith(f"see {prog} --help") and err.count("\n") == 1


@pytest.fixture
def portrait(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    small = (rng.random((4, 4, 3)) * 255).astype(np.uint8)
    path = tmp_path / "portrait.png"
    Image.fromarray(small).resize((40, 48), Image.Resampling.BICUBIC).save(path)  # 40 wide, 48 high
    return path


def test_size_is_the_output_height_for_gatys_and_adain(portrait, tmp_path, capsys):
    # 48x40 (HxW) at height 48 (gatys, deepest layer needs 32 px) and 32 (adain): same height, width from the aspect.
    g, a = tmp_path / "g.png", tmp_path / "a.png"
    assert gatys_cli.main(["--content", str(portrait), "--style", str(portrait), "--weights", str(GATYS_VGG),
                           "--size", "48", "--iterations", "0", "--no-progress", "-o", str(g)]) == 0
    assert adain_cli.main(["--content", str(portrait), "--style", str(portrait), *ADAIN_NETS,
                           "--size", "32", "--no-progress", "-o", str(a)]) == 0
    assert _size(g) == (40, 48)  # width x height: the height is --size
    assert _size(a) == (27, 32)  # round(40 * 32 / 48) = 27; short side would give 32x38
    # --style-size is a height too: a style of height 32 from the 48-high portrait.
    assert adain_cli._target_hw((48, 40), 32) == (32, 27)


def test_adain_output_names_encode_the_mode(portrait, tmp_path, capsys):
    """Issue 16 defect 4: interpolation and mask runs with the same styles never overwrite each other."""
    styles = tmp_path / "styles"
    styles.mkdir()
    for i in range(2):
        with Image.open(portrait) as im:
            im.rotate(90 * i).save(styles / f"s{i}.png")
    mask = tmp_path / "m.png"
    Image.fromarray(np.tile(np.uint8([[255] * 20 + [0] * 20]), (48, 1))).save(mask)
    out = tmp_path / "out"
    base = ["--content", str(portrait), "--style", str(styles), *ADAIN_NETS, "--size", "32", "--no-progress",
            "-o", str(out)]
    assert adain_cli.main([*base, "--style-interpolation-weights", "1", "3"]) == 0
    assert adain_cli.main([*base, "--style-interpolation-weights", "1,1"]) == 0
    assert adain_cli.main([*base, "--mask", str(mask)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "portrait_stylized_s0-0.25_s1-0.75.png", "portrait_stylized_s0-0.5_s1-0.5.png",
        "portrait_stylized_s0_s1_mask-m.png"]


def test_folder_run_with_interpolation_writes_a_grid(portrait, tmp_path, capsys):
    """Issue 16 defect 4: grid.png also for blended styles (one column: the styles side by side)."""
    contents, out = tmp_path / "contents", tmp_path / "out"
    contents.mkdir()
    for i in range(2):
        (contents / f"c{i}.png").write_bytes(portrait.read_bytes())
    code = adain_cli.main(["--content", str(contents), "--style", str(portrait), str(portrait), *ADAIN_NETS,
                           "--size", "32", "--no-progress", "--style-interpolation-weights", "1", "1",
                           "-o", str(out)])
    assert code == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["c0_stylized_portrait-0.5_portrait-0.5.png", "c1_stylized_portrait-0.5_portrait-0.5.png",
                     "grid.png"]
    width, height = _size(out / "grid.png")
    # Two content rows under a header row; a header column and one result column (two styles wide).
    assert height >= 3 * 32 and width >= 27 + 2 * 27


def _figures():
    return _script("figures")


def test_figures_script_takes_its_defaults_from_the_config():
    """Issue 16 defect 9: same optimizer default as nst-gatys, no doubled defaults, labels not cut."""
    figures = _figures()
    args = figures.build_parser().parse_args([])
    assert args.optimizer == gatys.GatysConfig().optimizer == "optax-lbfgs"
    assert args.style_layers == gatys.GatysConfig().style_layers
    text = figures.build_parser().format_help()
    assert "(default: None)" not in text and "('" not in text
    for line in text.splitlines():
        assert line.count("(default:") <= 1, line
    label = "histogram-from-style"
    picture = figures.grid([np.zeros((8, 8, 3), np.float32)] * 2, [label, "x"], "colour control")
    font = figures._font(14)
    from PIL import ImageDraw
    needed = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(label, font=font)
    assert picture.width >= needed + 8 + figures._GAP * 3  # the label's column is at least its width
