"""Layering: argument parsing and progress bars belong to the command lines (nst_jax/cli/) only."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nst_jax"
CLI_ONLY = {"argparse", "tqdm"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_argparse_and_tqdm_are_imported_only_under_cli():
    modules = sorted(PACKAGE.rglob("*.py"))
    assert any(p.parent.name == "cli" for p in modules)  # the check sees the package
    offenders = {str(p.relative_to(PACKAGE)): sorted(_imports(p) & CLI_ONLY)
                 for p in modules if "cli" not in p.relative_to(PACKAGE).parts}
    assert not {k: v for k, v in offenders.items() if v}


def test_the_detector_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from tqdm import tqdm\n    import argparse.x\n")
    assert _imports(sample) == CLI_ONLY
