"""Dataset stylization: pairing, batching, resume, bad input, and a real two-process run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst_jax import adain, data, dataset, distributed, weights
from nst_jax.cli import dataset as dataset_cli
from nst_jax.errors import ConfigError, InputImageError, OutputPathError

FIXTURES = Path(__file__).parent / "fixtures" / "adain"
VGG = FIXTURES / "vgg_normalised_narrow.pth"
DECODER = FIXTURES / "decoder_narrow.pth"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def nets():
    return weights.load_adain_vgg(VGG), weights.load_adain_decoder(DECODER)


def _write(path: Path, h: int, w: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _tree(tmp_path: Path, n_content: int = 6, sizes=((20, 24),), extra=True) -> tuple[Path, Path]:
    content, style = tmp_path / "content", tmp_path / "style"
    for i in range(n_content):
        h, w = sizes[i % len(sizes)]
        _write(content / f"class{i % 2}" / f"img{i}.png", h, w, i)
    _write(style / "s0.png", 20, 20, 100)
    _write(style / "sub" / "s1.jpg", 20, 20, 101)  # one style size: one compiled program for both
    if extra:
        (content / "class0" / "notes.png").write_bytes(b"not an image at all")
        _write(content / "class1" / "tiny.png", 10, 12, 7)
    return content, style


def _config(tmp_path: Path, content: Path, style: Path, **kw) -> dataset.DatasetConfig:
    kw.setdefault("style_size", 0)
    kw.setdefault("num_threads", 2)
    return dataset.DatasetConfig(str(content), str(style), str(tmp_path / "out"), **kw)


# ---------------------------------------------------------------------------------------------
# Pure planning


def test_pairing_depends_only_on_seed_and_file_lists():
    contents = [f"c{i:03d}/x.jpg" for i in range(200)]
    styles = [f"s{j}.jpg" for j in range(7)]
    tasks = dataset.plan(contents, styles, num_styles=3, seed=5, fmt="same")
    again = dataset.plan(list(contents), list(styles), num_styles=3, seed=5, fmt="same")
    assert tasks == again
    # A share of the contents plans the same pairs as the whole list: no dependence on processes.
    for count in (1, 2, 3, 8):
        seen = []
        for index in range(count):
            mine = dataset.share(len(contents), distributed.ProcessInfo(index, count))
            seen += [t for i in mine for t in dataset.plan([contents[i]], styles, num_styles=3, seed=5,
                                                          fmt="same")[0]]
        assert sorted(seen) == sorted(t for group in tasks for t in group)
    # Every style gets used, roughly uniformly, and another seed gives another pairing.
    counts = np.bincount([styles.index(t.style) for g in tasks for t in g], minlength=len(styles))
    assert counts.min() > 0.5 * counts.mean()
    other = dataset.plan(contents, styles, num_styles=3, seed=6, fmt="same")
    assert sum(a.style != b.style for ga, gb in zip(tasks, other) for a, b in zip(ga, gb)) > 300


def test_partial_batches_are_padded_to_few_sizes():
    # Full batches keep their size; partial ones grow by powers of two from the device count, so
    # padding at most doubles the work and each image size compiles at most log2(size) + 1 programs.
    assert [dataset.padded_batch(n, 8, 1) for n in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    assert [dataset.padded_batch(n, 12, 2) for n in (1, 2, 3, 5, 9, 12)] == [2, 2, 4, 8, 12, 12]


def test_output_names_mirror_the_tree():
    assert dataset.output_name("n01/a.JPEG", 0, 1, "same") == "n01/a.jpeg"
    assert dataset.output_name("n01/a.JPEG", 2, 3, "png") == "n01/a_2.png"
    assert dataset.output_name("a.gif", 0, 1, "same") == "a.png"
    with pytest.raises(ConfigError, match="a.jpg and a.png would both be written to a.png"):
        dataset.plan(["a.jpg", "a.png"], ["s.jpg"], num_styles=1, seed=0, fmt="png")


# ---------------------------------------------------------------------------------------------
# Runs in this process


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), np.int16)


def test_batched_equals_one_at_a_time_and_failures_are_counted(tmp_path, nets):
    vgg, dec = nets
    content, style = _tree(tmp_path, n_content=5, sizes=((20, 24), (24, 20)))
    config = _config(tmp_path, content, style, num_styles=2, batch_size=3, alpha=0.7)
    summary = dataset.run(config, vgg, dec)
    p = summary.progress
    assert (p.done, p.failed, p.total) == (10, 4, 14)
    assert sorted(f for f, _ in summary.failures) == ["class0/notes.png", "class1/tiny.png"]
    assert any("too small" in why for _, why in summary.failures)
    entries = dataset.read_manifest(tmp_path / "out" / dataset.MANIFEST)
    assert len(entries) == 10 and not list((tmp_path / "out").glob("manifest.part-*"))
    styles = {n: dataset.load_style(style / n, 0) for n in ("s0.png", "sub/s1.jpg")}
    for e in entries:
        assert e["alpha"] == 0.7 and e["seed"] == 0
        pixels = data.decode_and_fit((content / e["content"]).read_bytes(), 0, 0)
        one = adain.stylize_jit(vgg, dec, pixels[None].astype(np.float32) / 255.0, styles[e["style"]], 0.7)
        expected = np.round(np.asarray(one[0]) * 255.0)
        # 8-bit outputs: float32 differences between batch sizes (~1e-6) can move a value across a
        # rounding boundary, i.e. by one level, never more.
        assert np.abs(_read(tmp_path / "out" / e["output"]) - expected).max() <= 1


def test_interrupted_run_resumes_without_redoing_finished_images(tmp_path, nets):
    vgg, dec = nets
    content, style = _tree(tmp_path, n_content=6, extra=False)
    config = _config(tmp_path, content, style, batch_size=2)
    calls = []
    first = dataset.run(config, vgg, dec, progress=lambda p: calls.append(p.done),
                        should_stop=lambda: bool(calls) and calls[-1] >= 2)
    assert first.interrupted and first.progress.done == 2
    out = tmp_path / "out"
    done = dataset.finished(out)
    assert len(done) == 2
    stamps = {k: (out / k).stat().st_mtime_ns for k in done}
    # A file that was lost after it was recorded is redone.
    lost = sorted(done)[0]
    (out / lost).unlink()
    second = dataset.run(config, vgg, dec)
    assert (second.progress.skipped, second.progress.done) == (1, 5)
    assert len(dataset.read_manifest(out / dataset.MANIFEST)) == 6
    for k, stamp in stamps.items():
        if k != lost:
            assert (out / k).stat().st_mtime_ns == stamp
    third = dataset.run(config, vgg, dec)
    assert (third.progress.skipped, third.progress.done) == (6, 0)


def test_other_settings_are_refused_by_name(tmp_path, nets):
    vgg, dec = nets
    content, style = _tree(tmp_path, n_content=2, extra=False)
    dataset.run(_config(tmp_path, content, style), vgg, dec)
    with pytest.raises(ConfigError, match=r"other settings \(alpha 1.0 -> 0.5; seed 0 -> 3\).*--overwrite"):
        dataset.run(_config(tmp_path, content, style, alpha=0.5, seed=3), vgg, dec)
    redo = dataset.run(_config(tmp_path, content, style, alpha=0.5, seed=3, overwrite=True), vgg, dec)
    assert redo.progress.done == 2


def test_bad_folders(tmp_path):
    content, style = _tree(tmp_path, n_content=1, extra=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputImageError, match="content folder not found"):
        dataset.list_files(tmp_path / "nope", dataset.DEFAULT_EXTENSIONS, "content")
    with pytest.raises(InputImageError, match="no .* files in the style folder"):
        dataset.list_files(tmp_path / "empty", dataset.DEFAULT_EXTENSIONS, "style")
    inside = dataset.DatasetConfig(str(tmp_path / "out" / "c"), str(style), str(tmp_path / "out"))
    with pytest.raises(OutputPathError, match="--content-dir .* overlap"):
        dataset.check_folders(inside)
    holds = dataset.DatasetConfig(str(content), str(style), str(content / "class0"))
    with pytest.raises(OutputPathError, match="overlap"):
        dataset.check_folders(holds)


@pytest.mark.parametrize("argv, needle", [
    (["--num-processes", "2", "--process-id", "2", "--coordinator-address", "127.0.0.1:9"],
     "--process-id 2 is out of range for --num-processes 2"),
    (["--num-processes", "2", "--process-id", "0"], "--coordinator-address missing"),
    (["--alpha", "2"], "--alpha must be between 0"),
    (["--format", "gif"], 'invalid choice "gif"'),
    (["--content-tfds", "imagenet2012"], "pass exactly one of --content-dir DIR and --content-tfds NAME"),
])
def test_cli_user_errors_are_one_line(tmp_path, capsys, argv, needle):
    content, style = _tree(tmp_path, n_content=1, extra=False)
    code = dataset_cli.main(["--content-dir", str(content), "--style-dir", str(style),
                                               "--output-dir", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_cli_unreachable_coordinator_is_a_bounded_one_line_error(tmp_path, capsys):
    content, style = _tree(tmp_path, n_content=1, extra=False)
    start = time.monotonic()
    code = dataset_cli.main([
        "--content-dir", str(content), "--style-dir", str(style), "--output-dir", str(tmp_path / "o"),
        "--coordinator-address", f"127.0.0.1:{_free_port()}", "--num-processes", "2", "--process-id", "1",
        "--timeout", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "no coordinator answered" in err and len(err.strip().splitlines()) == 1
    assert time.monotonic() - start < 10


def _tiny_tfds(tmp_path: Path) -> tuple[str, str]:
    """A 4-record array_record dataset (one record not an image); returns (name, data_dir)."""
    tfds = pytest.importorskip("tensorflow_datasets", reason="TFDS sources need the tfds extra")
    import io

    class NstDatasetRecords(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            image = tfds.features.Image(shape=(None, None, 3), encoding_format="png")
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"image": image}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(4):
                if i == 2:
                    yield i, {"image": b"not an image at all"}
                    continue
                buf = io.BytesIO()
                pixels = np.random.default_rng(i).integers(0, 256, (20, 24, 3), dtype=np.uint8)  # one program
                Image.fromarray(pixels).save(buf, "PNG")
                yield i, {"image": buf.getvalue()}

    data_dir = str(tmp_path / "tfds")
    builder = NstDatasetRecords(data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    return builder.name, data_dir


def test_tfds_records_are_stylized_by_index(tmp_path, nets):
    vgg, dec = nets
    name, data_dir = _tiny_tfds(tmp_path)
    _, style = _tree(tmp_path, n_content=0, extra=False)
    config = dataset.DatasetConfig(None, str(style), str(tmp_path / "out"), content_tfds=f"{name}:train",
                                   tfds_data_dir=data_dir, style_size=0, batch_size=2, num_threads=2, seed=4)
    summary = dataset.run(config, vgg, dec)
    assert (summary.progress.done, summary.progress.failed) == (3, 1)
    # TFDS stores records in its own (hashed) order: the names follow the record index.
    source = data.TfdsImageSource(f"{name}:train", 0, 0, data_dir=data_dir)
    bad, = [i for i in range(4) if source.record(i) == b"not an image at all"]
    assert summary.failures[0][0] == f"train/{bad}.png" and "unreadable" in summary.failures[0][1]
    entries = dataset.read_manifest(tmp_path / "out" / dataset.MANIFEST)
    assert [e["output"] for e in entries] == [f"train/{i}.png" for i in range(4) if i != bad]
    for e in entries:
        # Keyed by the record's name: the same style as a folder holding train/I.png would get.
        assert e["style"] == sorted(["s0.png", "sub/s1.jpg"])[dataset.style_index(4, e["content"], 0, 2)]
        index = int(Path(e["content"]).stem)
        pixels = data.decode_and_fit(source.record(index), 0, 0)
        one = adain.stylize_jit(vgg, dec, pixels[None].astype(np.float32) / 255.0,
                                dataset.load_style(style / e["style"], 0), 1.0)
        assert np.abs(_read(tmp_path / "out" / e["output"]) - np.round(np.asarray(one[0]) * 255.0)).max() <= 1
    assert dataset.tfds_names("train[:10%]", 11, "jpeg")[:2] == ("train(:10%)/00.jpg", "train(:10%)/01.jpg")
    again = dataset.run(config, vgg, dec)
    assert (again.progress.skipped, again.progress.done) == (3, 0)


# ---------------------------------------------------------------------------------------------
# Two real processes on 127.0.0.1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(content: Path, style: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "nst_jax.cli.dataset", "--content-dir", str(content), "--style-dir",
            str(style), "--output-dir", str(out), "--vgg", str(VGG), "--decoder", str(DECODER),
            "--style-size", "0", "--num-styles", "2", "--batch-size", "2", "--threads", "0", "--no-progress",
            *extra]


def _run_processes(commands: list[list[str]], timeout: float = 120) -> list[subprocess.CompletedProcess]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    procs = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in commands]
    results = []
    for p, c in zip(procs, commands):
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        results.append(subprocess.CompletedProcess(c, p.returncode, out, err))
    return results


def test_two_processes_make_the_pairs_and_images_of_one(tmp_path, nets):
    vgg, dec = nets
    content, style = _tree(tmp_path, n_content=6)
    address = f"127.0.0.1:{_free_port()}"
    two = _run_processes([_cli(content, style, tmp_path / "two", "--coordinator-address", address,
                               "--num-processes", "2", "--process-id", str(i)) for i in (0, 1)])
    for r in two:
        assert r.returncode == 0, r.stderr[-2000:]
    assert "process 0: " in two[0].stderr and "manifest:" in two[0].stderr
    # The one-process reference runs in this test's process.
    one = dataset.run(dataset.DatasetConfig(str(content), str(style), str(tmp_path / "one"), num_styles=2,
                                            style_size=0, batch_size=4, num_threads=0), vgg, dec)
    assert one.progress.done == 12
    m_two = dataset.read_manifest(tmp_path / "two" / dataset.MANIFEST)
    m_one = dataset.read_manifest(tmp_path / "one" / dataset.MANIFEST)
    assert m_two == m_one and len(m_one) == 12
    for e in m_one:
        assert np.abs(_read(tmp_path / "two" / e["output"]) - _read(tmp_path / "one" / e["output"])).max() <= 1
    assert json.loads((tmp_path / "two" / dataset.SETTINGS).read_text()) == \
        json.loads((tmp_path / "one" / dataset.SETTINGS).read_text())


def test_mismatched_num_processes_is_a_clear_error_on_every_process(tmp_path):
    content, style = _tree(tmp_path, n_content=2, extra=False)
    address = f"127.0.0.1:{_free_port()}"
    start = time.monotonic()
    results = _run_processes([
        _cli(content, style, tmp_path / "o", "--coordinator-address", address, "--num-processes", n,
             "--process-id", i, "--timeout", "20") for n, i in (("2", "0"), ("3", "1"))], timeout=60)
    for r in results:
        assert r.returncode == 2, r.stderr[-2000:]
        assert "process 1 has --num-processes 3 but process 0 has 2" in r.stderr
    assert time.monotonic() - start < 60
