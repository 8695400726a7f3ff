"""Tests for nst_jax.files, the one atomic writer, and that nothing else in the package renames files."""

from __future__ import annotations

import ast
import errno
import os
import stat
from pathlib import Path

import pytest

import nst_jax
from nst_jax import files
from nst_jax.errors import OutputPathError

OLD = b"\x00earlier bytes\xff\n"


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_replaces_the_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(OLD)
    with files.atomic_write(target) as f:
        f.write(b"new")
        assert target.read_bytes() == OLD  # nothing visible before the block ends
    assert target.read_bytes() == b"new"
    assert _names(tmp_path) == ["out.bin"]


def test_atomic_write_creates_a_new_file_with_the_umask_mode(tmp_path):
    target = files.atomic_write_bytes(tmp_path / "new.bin", b"abc")
    assert target.read_bytes() == b"abc"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("error", [ValueError("encoder broke"), KeyboardInterrupt()])
def test_an_exception_in_the_block_keeps_the_old_file(tmp_path, error):
    target = tmp_path / "out.bin"
    target.write_bytes(OLD)
    with pytest.raises(type(error)):
        with files.atomic_write(target) as f:
            f.write(b"partial")
            raise error
    assert target.read_bytes() == OLD
    assert _names(tmp_path) == ["out.bin"]


def test_an_exception_before_any_file_existed_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with files.atomic_write(tmp_path / "out.bin") as f:
            f.write(b"partial")
            raise RuntimeError("stop")
    assert _names(tmp_path) == []


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
def test_a_full_disk_gives_one_clear_error_and_keeps_the_old_file(tmp_path, monkeypatch, where):
    target = tmp_path / "metrics.json"
    target.write_bytes(OLD)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where != "write":
        monkeypatch.setattr(os, where, full)
    with pytest.raises(OutputPathError) as info:
        with files.atomic_write(target, "w") as f:
            f.write("{}")
            if where == "write":
                full()
    message = str(info.value)
    assert "No space left on device" in message and str(target) in message and "\n" not in message
    monkeypatch.undo()
    assert target.read_bytes() == OLD
    assert _names(tmp_path) == ["metrics.json"]


def test_a_folder_at_the_path_is_refused_and_kept(tmp_path):
    folder = tmp_path / "taken"
    folder.mkdir()
    (folder / "inside").write_bytes(OLD)
    with pytest.raises(OutputPathError, match="could not write"):
        files.atomic_write_bytes(folder, b"x")
    assert (folder / "inside").read_bytes() == OLD
    assert _names(tmp_path) == ["taken"]


def test_a_missing_folder_is_an_output_path_error(tmp_path):
    with pytest.raises(OutputPathError, match="could not write"):
        files.atomic_write_text(tmp_path / "missing" / "a.txt", "x")
    assert _names(tmp_path) == []


def test_text_is_utf8_and_bytes_are_verbatim(tmp_path):
    text = "größe ✓\nzweite Zeile\n"
    assert files.atomic_write_text(tmp_path / "t.txt", text).read_bytes() == text.encode("utf-8")
    data = bytes(range(256))
    assert files.atomic_write_bytes(tmp_path / "b.bin", data).read_bytes() == data
    with pytest.raises(ValueError, match="mode"):
        with files.atomic_write(tmp_path / "c", "a"):
            pass


def test_probe_write_leaves_nothing_and_reports_refusal(tmp_path, monkeypatch):
    files.probe_write(tmp_path / "out.png")
    assert _names(tmp_path) == []

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(PermissionError):
        files.probe_write(tmp_path / "out.png")


def test_move_aside_replaces_a_folder(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a").write_bytes(OLD)
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "stale").write_bytes(b"x")
    files.move_aside(tmp_path / "src", tmp_path / "dest")
    assert _names(tmp_path) == ["dest"] and _names(tmp_path / "dest") == ["a"]
    assert (tmp_path / "dest" / "a").read_bytes() == OLD


def _renames(tree: ast.AST) -> list[int]:
    """Lines calling os.replace / os.rename / Path.replace / Path.rename / shutil.move (or importing them)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("replace", "rename", "renames"):
            if isinstance(node.value, ast.Name) and node.value.id == "os":
                lines.append(node.lineno)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("rename", "replace") and len(node.args) == 1 and not node.keywords:
            # Path.rename(target) / Path.replace(target); str.replace always takes two arguments.
            lines.append(node.lineno)
        if isinstance(node, ast.Attribute) and node.attr in ("move", "copytree") \
                and isinstance(node.value, ast.Name) and node.value.id == "shutil":
            lines.append(node.lineno)
        if isinstance(node, ast.ImportFrom) and node.module == "os" \
                and any(a.name in ("replace", "rename", "renames") for a in node.names):
            lines.append(node.lineno)
    return lines


def test_only_files_py_renames_files():
    package = Path(nst_jax.__file__).parent
    found = {}
    for source in sorted(package.rglob("*.py")):
        lines = _renames(ast.parse(source.read_text(encoding="utf-8")))
        if lines:
            found[source.relative_to(package).as_posix()] = lines
    assert set(found) == {"files.py"}, found


def test_the_rename_scan_can_fail():
    assert _renames(ast.parse("import os\nos.replace(a, b)\n")) == [2]
    assert _renames(ast.parse("from pathlib import Path\nPath(a).rename(b)\n")) == [2]
    assert _renames(ast.parse("from os import rename\n")) == [1]
    assert _renames(ast.parse("import shutil\nshutil.move(a, b)\n")) == [2]
    assert _renames(ast.parse("s.replace('a', 'b')\n")) == []
