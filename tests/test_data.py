"""Input pipeline for decoder training: folder scanning, resizing, crops, shuffling, grain, TFDS."""

from __future__ import annotations

import io
import logging
import os
import subprocess

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from nst_jax import data
from nst_jax.errors import ConfigError, InputImageError


def _png(path, h, w, value=None, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    if value is None:
        arr = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    else:
        arr = np.full((h, w, channels), value, np.uint8)
    Image.fromarray(arr[..., 0] if mode == "L" else arr, mode).save(path)
    return path


@pytest.fixture
def folder(tmp_path):
    """5 readable images (one nested, one JPEG), one non-image .jpg, one truncated PNG, one hidden file."""
    for i in range(3):
        _png(tmp_path / f"img{i}.png", 40 + i, 50, seed=i)
    (tmp_path / "nested" / "deeper").mkdir(parents=True)
    _png(tmp_path / "nested" / "deeper" / "n.png", 60, 40, seed=7)
    Image.fromarray(np.full((44, 44, 3), 90, np.uint8)).save(tmp_path / "nested" / "photo.JPG")
    (tmp_path / "broken.jpg").write_bytes(b"this is not an image")
    full = io.BytesIO()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(full, "PNG")
    (tmp_path / "truncated.png").write_bytes(full.getvalue()[:20])  # header cut: unreadable
    (tmp_path / ".hidden.png").write_bytes(b"resource fork")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_scan_skips_and_counts_unreadable_files(folder, caplog):
    with caplog.at_level(logging.WARNING, logger="nst_jax.data"):
        scan = data.scan_image_folder(folder)
    names = sorted(p.rsplit("/", 1)[-1] for p in scan.files)
    assert names == ["img0.png", "img1.png", "img2.png", "n.png", "photo.JPG"]
    assert sorted(p.rsplit("/", 1)[-1] for p in scan.skipped) == ["broken.jpg", "truncated.png"]
    assert list(scan.files) == sorted(scan.files)
    assert "skipped 2 unreadable" in caplog.text


def test_scan_errors(tmp_path):
    with pytest.raises(InputImageError, match="not found"):
        data.scan_image_folder(tmp_path / "missing")
    (tmp_path / "bad.png").write_bytes(b"x")
    with pytest.raises(InputImageError, match=r"no readable images .*\(1 unreadable\)"):
        data.scan_image_folder(tmp_path)


@pytest.mark.parametrize("size, load, crop, expected", [
    ((100, 50), 40, 32, (80, 40)),  # shorter side (height 50) -> 40, aspect kept
    ((50, 100), 40, 32, (40, 80)),
    ((64, 48), 0, 32, (64, 48)),  # load_size 0 keeps the size
    ((30, 20), 0, 32, (48, 32)),  # never below the crop
    ((70, 35), 35, 32, (70, 35)),  # already right: untouched
])
def test_fit_short_side(size, load, crop, expected):
    out = data.fit_short_side(Image.new("RGB", size), load, crop)
    assert out.size == expected


def test_decode_handles_alpha_gray_and_orientation():
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 255
    rgba[:, :20, 3] = 0  # left half transparent -> composited on white
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    out = data.decode_and_fit(buf.getvalue(), 0, 32)
    assert out.shape == (40, 40, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 39], [255, 0, 0])

    gray = data.decode_and_fit(np.full((40, 50), 7, np.uint8), 0, 32)
    assert gray.shape == (40, 50, 3) and (gray == 7).all()

    # EXIF orientation 6 (rotate 90 degrees clockwise to display): a 40x60 (w x h) image shows as 60x40.
    img = Image.new("RGB", (40, 60), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    assert data.decode_and_fit(buf.getvalue(), 0, 32).shape == (40, 60, 3)


def test_folder_source_substitutes_undecodable_body(tmp_path, caplog):
    good = _png(tmp_path / "a.png", 40, 40, value=200)
    bad = tmp_path / "b.jpg"
    jpeg = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(jpeg, "JPEG")
    bad.write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])  # header fine, body truncated
    scan = data.scan_image_folder(tmp_path)
    assert len(scan.files) == 2 and not scan.skipped  # the header check cannot see it
    source = data.ImageFolderSource(scan.files, 36, 32)
    with caplog.at_level(logging.WARNING, logger="nst_jax.data"):
        item = source[scan.files.index(str(bad))]
    assert (item == 200).all() and item.shape == (36, 36, 3)  # the next file, resized
    assert "cannot decode" in caplog.text
    assert str(good) in scan.files


def test_shuffled_epochs_are_permutations_reshuffled_per_epoch():
    n = 7
    view = data.ShuffledEpochs(list(range(n)), seed=3)
    epochs = [[view[e * n + i] for i in range(n)] for e in range(4)]
    for order in epochs:
        assert sorted(order) == list(range(n))
    assert len({tuple(o) for o in epochs}) > 1  # reshuffled
    assert [data.ShuffledEpochs(list(range(n)), seed=3)[k] for k in range(3 * n)] == sum(epochs[:3], [])
    assert [data.ShuffledEpochs(list(range(n)), seed=4)[k] for k in range(n)] != epochs[0]
    assert view[10**12] in range(n)  # any position of the endless stream, directly


def _coded_images(n, h=40, w=48):
    """Images whose pixels encode (image id, row, col), to identify crops exactly."""
    rows, cols = np.mgrid[0:h, 0:w]
    return [np.stack([np.full((h, w), k), rows, cols], -1).astype(np.uint8) for k in range(n)]


def test_crops_are_windows_and_deterministic_from_seed_and_step():
    content, style = _coded_images(5), _coded_images(3, 36, 33)
    a = data.take(data.pair_batches(content, style, batch_size=2, crop=32, seed=1), 6)
    b = data.take(data.pair_batches(content, style, batch_size=2, crop=32, seed=1), 6)
    for (ca, sa), (cb, sb) in zip(a, b):
        np.testing.assert_array_equal(ca, cb)
        np.testing.assert_array_equal(sa, sb)
    for c, s in a:
        assert c.shape == (2, 32, 32, 3) and s.shape == (2, 32, 32, 3) and c.dtype == np.uint8
        for crop in list(c) + list(s):
            # A crop is a contiguous window: rows and cols increase by one, image id constant.
            assert (np.diff(crop[:, :, 1].astype(int), axis=0) == 1).all()
            assert (np.diff(crop[:, :, 2].astype(int), axis=1) == 1).all()
            assert len(np.unique(crop[..., 0])) == 1
    # Starting at step 4 gives exactly the batches an uninterrupted run sees at steps 4, 5.
    later = data.take(data.pair_batches(content, style, batch_size=2, crop=32, seed=1, start_step=4), 2)
    for (c, s), (cl, sl) in zip(a[4:], later):
        np.testing.assert_array_equal(c, cl)
        np.testing.assert_array_equal(s, sl)
    other = data.take(data.pair_batches(content, style, batch_size=2, crop=32, seed=2), 6)
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, other))
    # Each content epoch (5 images, 10 picks = 2 epochs) visits every image once.
    ids = np.array([c[j, 0, 0, 0] for c, _ in a[:5] for j in range(2)])
    assert sorted(ids[:5]) == list(range(5)) and sorted(ids[5:]) == list(range(5))


def test_process_shares_are_contiguous_slices_of_the_one_process_batch():
    """P processes reading b images each see, concatenated in process order, the batch of b*P that one
    process reads at the same step (so the global batch does not depend on the process count)."""
    images = _coded_images(7)  # 7 images: steps cross epoch boundaries at different offsets
    full = data.image_stream(images, batch_size=6, crop=32, seed=0, stream=0)
    for count, per in ((2, 3), (3, 2), (6, 1)):
        shares = [data.image_stream(images, batch_size=per, crop=32, seed=0, stream=0, process_index=p,
                                    process_count=count) for p in range(count)]
        for k in (0, 1, 4):
            np.testing.assert_array_equal(np.concatenate([s[k] for s in shares]), full[k])
    # Resuming a share at step s reads what it would have read at step s.
    later = data.take(data.pair_batches(images, images, batch_size=3, crop=32, seed=0, start_step=2,
                                        process_index=1, process_count=2), 2)
    whole = data.take(data.pair_batches(images, images, batch_size=6, crop=32, seed=0, start_step=2), 2)
    for (c, s), (wc, ws) in zip(later, whole):
        np.testing.assert_array_equal(c, wc[3:])
        np.testing.assert_array_equal(s, ws[3:])


def test_worker_processes_give_the_same_batches(folder):
    scan = data.scan_image_folder(folder)
    source = data.ImageFolderSource(scan.files, 40, 32)
    serial = data.take(data.pair_batches(source, source, batch_size=2, crop=32, seed=5), 3)
    parallel = data.take(data.pair_batches(source, source, batch_size=2, crop=32, seed=5, num_workers=1), 3)
    for (c0, s0), (c1, s1) in zip(serial, parallel):
        np.testing.assert_array_equal(c0, c1)
        np.testing.assert_array_equal(s0, s1)


def test_parse_tfds_name():
    assert data.parse_tfds_name("coco/2017") == ("coco/2017", "train")
    assert data.parse_tfds_name("coco/2017:validation") == ("coco/2017", "validation")
    with pytest.raises(ConfigError, match="empty TFDS"):
        data.parse_tfds_name(":train")


def test_tfds_array_record_source(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets", reason="TFDS sources need the tfds extra")

    class NstTinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """Five PNG-encoded images (PNG bytes need no TensorFlow to write)."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            image = tfds.features.Image(shape=(None, None, 3))
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"image": image}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(5):
                buf = io.BytesIO()
                Image.fromarray(np.full((34 + i, 40, 3), 10 * i, np.uint8)).save(buf, "PNG")
                yield i, {"image": buf.getvalue()}

    builder = NstTinyImages(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    source = data.TfdsImageSource(f"{builder.name}:train", 36, 32, data_dir=str(tmp_path))
    assert len(source) == 5
    assert {int(source[i][0, 0, 0]) for i in range(5)} == {0, 10, 20, 30, 40}
    assert all(min(source[i].shape[:2]) == 36 for i in range(5))
    (c, s), = data.take(data.pair_batches(source, source, batch_size=2, crop=32, seed=0), 1)
    assert c.shape == (2, 32, 32, 3)
    with pytest.raises(ConfigError, match="cannot open TFDS dataset"):
        data.TfdsImageSource("no_such_dataset_xyz", 36, 32, data_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="no feature 'picture'; pass --tfds-image-key with one of: image"):
        data.TfdsImageSource(builder.name, 36, 32, data_dir=str(tmp_path), image_key="picture")


def test_tfds_dataset_not_prepared_names_it_and_how_to_prepare_it(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets", reason="TFDS sources need the tfds extra")
    built = []

    class NstUnpreparedImages(tfds.core.GeneratorBasedBuilder):
        """Registered but never prepared: reading it must not build (download) it."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            image = tfds.features.Image(shape=(None, None, 3))
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"image": image}))

        def _split_generators(self, dl_manager):
            built.append(True)
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            yield 0, {"image": np.zeros((8, 8, 3), np.uint8)}

    # A registered dataset (COCO's builder imports TensorFlow instead: the other path to the message).
    for name in ("nst_unprepared_images", "coco/2017"):
        with pytest.raises(ConfigError) as err:
            data.TfdsImageSource(f"{name}:train", 36, 32, data_dir=str(tmp_path))
        message = str(err.value)
        assert f"TFDS dataset {name!r} is not prepared" in message and "TensorFlow" not in message
        assert f"tfds build {name} --data_dir {tmp_path}" in message and "download=True" in message
    assert built == [] and list(tmp_path.iterdir()) == []  # nothing was downloaded or built


# A minimal EPS: Pillow recognises it by content, whatever the file is called, and decoding it
# would run Ghostscript.
_EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 40 40\n%%EndComments\nnewpath 0 0 moveto showpage\n%%EOF\n"


@pytest.fixture
def fake_gs(tmp_path, monkeypatch):
    """A failing ``gs`` first on PATH that records each call; Pillow forgets any gs it looked up."""
    from PIL import EpsImagePlugin

    bin_dir, calls = tmp_path / "fake-bin", tmp_path / "gs-calls.txt"
    bin_dir.mkdir()
    gs = bin_dir / "gs"
    gs.write_text(f"#!/bin/sh\necho \"$@\" >> '{calls}'\nexit 1\n")
    gs.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)
    monkeypatch.setattr(EpsImagePlugin, "gs_windows_binary", None)
    return calls


def _control_runs_gs(eps_path, calls):
    """Pillow without an allow-list does start the fake gs on this file (so the tests above can fail)."""
    with pytest.raises(subprocess.CalledProcessError), Image.open(eps_path) as im:
        im.load()
    assert calls.exists()


def test_eps_named_png_is_skipped_and_never_runs_ghostscript(tmp_path, fake_gs, caplog):
    folder = tmp_path / "style"
    folder.mkdir()
    good = _png(folder / "a.png", 40, 40, value=200)
    (folder / "x.png").write_bytes(_EPS)
    with caplog.at_level(logging.WARNING, logger="nst_jax.data"):
        scan = data.scan_image_folder(folder)
    assert scan.files == (str(good),) and scan.skipped == (str(folder / "x.png"),)
    assert "skipped 1 unreadable" in caplog.text
    with pytest.raises(UnidentifiedImageError):
        data.decode_and_fit(_EPS, 36, 32)
    # A file that turned into EPS after the scan is replaced at decode time, like a broken body.
    source = data.ImageFolderSource([str(folder / "x.png"), str(good)], 36, 32)
    assert (source[0] == 200).all()
    assert not fake_gs.exists()
    _control_runs_gs(folder / "x.png", fake_gs)


def test_tfds_records_decode_with_the_allow_list(tmp_path, fake_gs, caplog):
    tfds = pytest.importorskip("tensorflow_datasets", reason="TFDS sources need the tfds extra")
    png = io.BytesIO()
    Image.fromarray(np.full((36, 40, 3), 70, np.uint8)).save(png, "PNG")

    class NstEpsImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """An EPS record (TFDS stores encoded bytes as given) followed by a PNG."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            image = tfds.features.Image(shape=(None, None, 3))
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"image": image}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            yield 0, {"image": _EPS}
            yield 1, {"image": png.getvalue()}

    builder = NstEpsImages(data_dir=str(tmp_path / "tfds"), file_format="array_record")
    builder.download_and_prepare()
    source = data.TfdsImageSource(f"{builder.name}:train", 36, 32, data_dir=str(tmp_path / "tfds"))
    eps_index = next(i for i in range(2) if source._source[i]["image"] == _EPS)
    with caplog.at_level(logging.WARNING, logger="nst_jax.data"):
        item = source[eps_index]
    assert (item == 70).all() and item.shape == (36, 40, 3)  # the PNG record took its place
    assert f"cannot decode record {eps_index}" in caplog.text
    assert not fake_gs.exists()
