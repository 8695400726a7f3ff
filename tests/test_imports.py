"""The package's import graph, read with ``ast`` from the sources: no cycles, imports inside
functions included (they hide a cycle from Python's import machinery, not from the design).

The one exception is a module's ``if __name__ == "__main__":`` block (``python -m nst_jax.gatys``
delegating to ``nst_jax.cli.gatys``): it runs only when the module is the program, never on import."""

from __future__ import annotations

import ast
import pathlib


PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "nst_jax"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_main_guard(node: ast.stmt) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators))


def _imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """Package modules ``name`` imports anywhere in its source (``from nst_jax import x`` counts x)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    tree.body = [node for node in tree.body if not _is_main_guard(node)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            # The most specific package module the target names (a module, or a name inside one).
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target != "nst_jax":
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    assert "nst_jax.tiling" in graph["nst_jax.memory"]  # imported inside gatys_bytes only
    assert {"nst_jax.solvers", "nst_jax.driver"} <= graph["nst_jax.gatys"]


def test_library_half_of_gatys_imports_no_driver_above_it():
    # gatys sits below multiscale and tiling (they import it); its library functions never import them.
    tree = ast.parse((PACKAGE / "gatys.py").read_text())
    cli_half = {"_parser", "_levels", "_load_inputs", "_runner", "_memory_needed", "_check_memory", "_main",
                "main", "_level_shape", "_check_aspect", "_snapshot_path", "_last_good_path",
                "_check_style_scale", "_check_outputs", "_check_metrics_path", "_hex_colors"}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name not in cli_half:
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    names = {a.name for a in inner.names} | {getattr(inner, "module", None) or ""}
                    assert not names & {"multiscale", "tiling", "nst_jax.multiscale", "nst_jax.tiling"}, node.name


def test_import_graph_is_acyclic():
    cycle = _find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# Heavy packages the Gatys command line never uses: each would add seconds to every start.
_NOT_ON_THE_GATYS_PATH = ("flax", "orbax", "grain", "tensorflow", "tensorflow_datasets", "torch", "jaxopt", "av",
                          "cv2", "starlette", "uvicorn")

_IMPORT_GATYS_CLI = """
import contextlib, io, json, sys
import nst_jax.gatys
after_import = sorted(sys.modules)
import nst_jax.cli.gatys
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    nst_jax.cli.gatys.main(["--help"])  # the CLI's own imports (weights, image, multiscale, ...) included
print(json.dumps([after_import, sorted(sys.modules)]))
"""


def test_gatys_cli_path_imports_no_heavy_optional_package():
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _IMPORT_GATYS_CLI], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    after_import, after_help = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "nst_jax.gatys" in after_import and "nst_jax.weights" in after_help  # both stages ran
    for stage in (after_import, after_help):
        loaded = {name.partition(".")[0] for name in stage}
        assert not loaded & set(_NOT_ON_THE_GATYS_PATH), sorted(loaded & set(_NOT_ON_THE_GATYS_PATH))
    assert "tqdm" not in after_import and "nst_jax.adain" not in after_help
