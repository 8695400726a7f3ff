"""Writes the weights-loader fixtures in tests/fixtures/weights/ with PyTorch (outputs are committed).

Golden files for ``nst_jax.weights`` / ``nst_jax._pth``, all written by real ``torch.save``:

* ``vgg19_narrow*.pth``: a narrow copy of torchvision's ``vgg19()`` (same ``features`` indices and
  ``classifier`` keys, few channels) saved as a zip, in the legacy format, in float16, with
  non-contiguous / offset / shared storages, and with DataParallel's ``module.`` prefix;
* ``adain_vgg_narrow.pth`` / ``adain_decoder_narrow.pth``: narrow pytorch-AdaIN ``net.py``
  ``vgg`` (all 53 modules) and ``decoder`` Sequentials; ``adain_decoder_badchain.pth`` has one
  conv whose input channels do not match the previous conv's output;
* ``dtypes.pth`` / ``dtypes_legacy.pth``: one tensor per storage type, a Parameter, a tensor with
  Python attributes (``_rebuild_from_type_v2``), a scalar and an empty tensor;
* ``expected.npz``: torch's own values (``.float().numpy()``) of the VGG-19 and dtype state dicts
  and, for the loaders, torch's ``permute(2, 3, 1, 0)`` of each conv kernel (HWIO) with its bias,
  plus VGG-19 activations of a small image at a few layers (forward-pass parity);
* ``evil_*``: malicious pickles that create the file ``nst_jax_pwned_marker`` in the working
  directory when loaded with ``pickle``/``torch.load(weights_only=False)``. This script checks in
  a subprocess that each payload really fires, so the safety tests test something real.

Usage::

    python scripts/make_weight_fixtures.py [--out tests/fixtures/weights]

Requires torch (the ``torch`` extra); nothing in ``nst_jax`` or ``tests`` imports it.
"""

from __future__ import annotations

import argparse
import io
import os
import pathlib
import pickle
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import torch
from torch import nn

from _torch_nets import adain_decoder, vgg19_features, vgg19_layer_names, vgg_normalised

# Channels of VGG blocks 1..5 (VGG-19: 64, 128, 256, 512, 512); all different so that a swapped
# in/out axis changes a shape.
VGG_WIDTHS = (4, 6, 8, 10, 12)
MARKER = "nst_jax_pwned_marker"
SEED = 0


def vgg19_narrow(w=VGG_WIDTHS) -> nn.Module:
    """torchvision ``VGG`` with config "E": ``features`` (index = vgg.LAYERS position), ``classifier``."""
    model = nn.Module()
    model.features, _ = vgg19_features(w, inplace=True)
    cin = w[-1]
    model.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    model.classifier = nn.Sequential(
        nn.Linear(cin * 7 * 7, 4), nn.ReLU(True), nn.Dropout(),
        nn.Linear(4, 4), nn.ReLU(True), nn.Dropout(),
        nn.Linear(4, 3),
    )
    assert len(model.features) == 37
    return model


def adain_vgg_narrow(w=VGG_WIDTHS) -> nn.Sequential:
    """pytorch-AdaIN ``net.py`` ``vgg`` (53 modules) with narrow widths."""
    return vgg_normalised(w)


def adain_decoder_narrow(w=(VGG_WIDTHS[3], VGG_WIDTHS[2], VGG_WIDTHS[1], VGG_WIDTHS[0])) -> nn.Sequential:
    """pytorch-AdaIN ``net.py`` ``decoder`` (29 modules) with narrow widths."""
    return adain_decoder(w)


def conv_names(seq: nn.Sequential, names: list[str], limit: int | None = None) -> dict[str, int]:
    """Pairs the Conv2d modules of ``seq`` (up to index ``limit``) with ``names`` in order."""
    idx = [i for i, m in enumerate(seq) if isinstance(m, nn.Conv2d) and (limit is None or i <= limit)]
    assert len(idx) == len(names), (idx, names)
    return dict(zip(names, idx))


def vgg_conv_names() -> list[str]:
    return [n for n in vgg19_layer_names() if n.startswith("conv")]


def expected_params(sd: dict, prefix: str, index: dict[str, int]) -> dict[str, np.ndarray]:
    out = {}
    for name, i in index.items():
        out[f"{name}/kernel"] = sd[f"{prefix}{i}.weight"].permute(2, 3, 1, 0).float().numpy()
        out[f"{name}/bias"] = sd[f"{prefix}{i}.bias"].float().numpy()
    return out


def strided_copy(sd: dict) -> dict:
    """The same values with non-contiguous layouts, storage offsets and a shared storage."""
    out = {}
    for k, v in sd.items():
        if v.dim() == 4:  # channels-last memory, OIHW logical shape
            out[k] = v.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        elif v.dim() == 2:  # a transposed matrix saved as is
            out[k] = v.t().contiguous().t()
        else:  # a window into a larger storage
            padded = torch.cat([torch.full((3,), 7.0), v, torch.full((2,), -7.0)])
            out[k] = padded[3: 3 + v.numel()]
    # Two tensors viewing one storage (the loader must keep it until both are read).
    w, b = sd["classifier.6.weight"], sd["classifier.6.bias"]
    shared = torch.cat([w.reshape(-1), b])
    out["classifier.6.weight"] = shared[: w.numel()].view(w.shape)
    out["classifier.6.bias"] = shared[w.numel():]
    for k in sd:
        assert torch.equal(out[k], sd[k]), k
    assert not out["features.0.weight"].is_contiguous()
    assert out["features.0.bias"].storage_offset() == 3
    return out


# Layers compared in the forward-pass parity test, with their index in ``features``.
FORWARD_LAYERS = {"relu1_1": 1, "pool1": 4, "relu3_1": 11, "conv4_2": 21, "relu5_1": 29}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg_forward(model: nn.Module) -> dict[str, np.ndarray]:
    """torchvision-style forward of a [0, 1] image (ImageNet normalization first), NHWC outputs."""
    g = torch.Generator().manual_seed(SEED + 2)
    image = torch.rand(1, 3, 32, 36, generator=g)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = (image - mean) / std
    out = {"vgg19/forward/image": image.permute(0, 2, 3, 1).numpy()}
    with torch.no_grad():
        for i, module in enumerate(model.features[: max(FORWARD_LAYERS.values()) + 1]):
            x = module(x)
            for name, idx in FORWARD_LAYERS.items():
                if idx == i:
                    out[f"vgg19/forward/{name}"] = x.permute(0, 2, 3, 1).numpy().copy()
    return out


def dtype_tensors() -> dict:
    g = torch.Generator().manual_seed(SEED + 1)
    noted = torch.randn(2, 2, generator=g)
    noted.note = "python attribute"  # pickled with torch._tensor._rebuild_from_type_v2
    return {
        "f32": torch.randn(2, 3, generator=g),
        "f64": torch.randn(3, generator=g, dtype=torch.float64),
        "f16": torch.randn(4, generator=g).half(),
        "bf16": torch.randn(4, generator=g).bfloat16(),
        "i64": torch.arange(-2, 3),
        "i32": torch.arange(3, dtype=torch.int32),
        "i16": torch.tensor([-300, 5], dtype=torch.int16),
        "i8": torch.tensor([-5, 7], dtype=torch.int8),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "param": nn.Parameter(torch.randn(3, generator=g)),
        "noted": noted,
    }


# --- malicious pickles -----------------------------------------------------------------------------


class SystemPayload:
    """Unpickling runs ``os.system`` (pickled as ``posix.system`` on Linux)."""

    def __reduce__(self):
        return (os.system, (f"echo pwned > {MARKER}",))


class ExecPayload:
    """Unpickling runs ``builtins.exec`` on code that creates the marker file."""

    def __reduce__(self):
        return (exec, (f"open({MARKER!r}, 'w').close()",))


def _short_unicode(s: str) -> bytes:
    data = s.encode()
    return b"\x8c" + bytes([len(data)]) + data


def torch_lookalike_pickle(module: str, name: str, opcode: str) -> bytes:
    """A protocol-4 pickle calling ``module.name("echo ...")``; dotted names resolve through torch's own
    ``import os``, so a filter that only checks ``module.startswith("torch")`` would run it."""
    command = _short_unicode(f"echo pwned > {MARKER}")
    if opcode == "STACK_GLOBAL":
        head = _short_unicode(module) + _short_unicode(name) + b"\x93"
    else:
        head = b"c" + module.encode() + b"\n" + name.encode() + b"\n"
    return b"\x80\x04" + head + command + b"\x85R."


def torch_like_zip(pkl: bytes) -> bytes:
    """A zip laid out like ``torch.save`` output around the given data.pkl."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in (("archive/data.pkl", pkl), ("archive/byteorder", b"little"),
                           ("archive/version", b"3\n")):
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


def legacy_with(obj_pickle: bytes) -> bytes:
    """Legacy torch.save header pickles followed by the given object pickle."""
    sys_info = {"protocol_version": 1001, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    return (pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
            + pickle.dumps(sys_info, protocol=2) + obj_pickle)


LOADERS = {
    "pickle": "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))",
    "zip-pickle": ("import pickle, sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); "
                   "pickle.loads(z.read([n for n in z.namelist() if n.endswith('data.pkl')][0]))"),
    "torch": "import sys, torch; torch.load(sys.argv[1], weights_only=False)",
}


def assert_payload_fires(path: pathlib.Path, loader: str) -> None:
    """Loads ``path`` the unsafe way in a scratch folder and checks that the marker appears."""
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run([sys.executable, "-c", f"import torch; {LOADERS[loader]}", str(path.resolve())],
                       cwd=scratch, capture_output=True, check=False)
        assert os.path.exists(os.path.join(scratch, MARKER)), f"payload of {path.name} did not fire"


def write_malicious(out: pathlib.Path) -> None:
    files = {
        "evil_os_system.pkl": (pickle.dumps(SystemPayload(), protocol=2), "pickle"),
        "evil_exec.pkl": (pickle.dumps({"features.0.weight": ExecPayload()}, protocol=4), "pickle"),
        "evil_exec_legacy.pth": (legacy_with(pickle.dumps(ExecPayload(), protocol=2)), "torch"),
        "evil_torch_os_system.pth": (
            torch_like_zip(torch_lookalike_pickle("torch", "os.system", "STACK_GLOBAL")), "zip-pickle"),
        "evil_torch_serialization.pth": (
            torch_like_zip(torch_lookalike_pickle("torch.serialization", "os.system", "GLOBAL")),
            "zip-pickle"),
    }
    for name, (data, loader) in files.items():
        (out / name).write_bytes(data)
        assert_payload_fires(out / name, loader)
    # A real torch.save zip: one genuine tensor, then the payload.
    path = out / "evil_exec_zip.pth"
    torch.save({"features.0.weight": torch.zeros(2), "features.0.bias": ExecPayload()}, path)
    assert_payload_fires(path, "torch")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    root = pathlib.Path(__file__).resolve().parent.parent
    parser.add_argument("--out", type=pathlib.Path, default=root / "tests" / "fixtures" / "weights")
    args = parser.parse_args(argv)
    out: pathlib.Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    expected: dict[str, np.ndarray] = {}

    model = vgg19_narrow()
    vgg_sd = model.state_dict()
    vgg_index = conv_names(model.features, vgg_conv_names())
    torch.save(vgg_sd, out / "vgg19_narrow.pth")
    torch.save(vgg_sd, out / "vgg19_narrow_legacy.pth", _use_new_zipfile_serialization=False)
    fp16 = {k: v.half() for k, v in vgg_sd.items()}
    torch.save(fp16, out / "vgg19_narrow_fp16.pth")
    torch.save(strided_copy(vgg_sd), out / "vgg19_narrow_strided.pth")
    torch.save({f"module.{k}": v for k, v in vgg_sd.items()}, out / "vgg19_narrow_module.pth")
    expected |= vgg_forward(model)
    expected |= {f"vgg19/sd/{k}": v.float().numpy() for k, v in vgg_sd.items()}
    expected |= {f"vgg19_fp16/sd/{k}": v.float().numpy() for k, v in fp16.items()}
    expected |= {f"vgg19/params/{k}": v for k, v in expected_params(vgg_sd, "features.", vgg_index).items()}

    enc = adain_vgg_narrow()
    enc_sd = enc.state_dict()
    torch.save(enc_sd, out / "adain_vgg_narrow.pth")
    enc_names = ["preprocess"] + vgg_conv_names()[:9]
    enc_index = conv_names(enc, enc_names, limit=30)
    expected |= {f"adain_vgg/params/{k}": v for k, v in expected_params(enc_sd, "", enc_index).items()}

    dec = adain_decoder_narrow()
    dec_sd = dec.state_dict()
    torch.save(dec_sd, out / "adain_decoder_narrow.pth")
    broken = dec_sd.copy()  # dec3_3 (index 8) reads one more channel than dec3_4 writes
    broken["8.weight"] = torch.randn(dec_sd["8.weight"].shape[0], dec_sd["8.weight"].shape[1] + 1, 3, 3)
    torch.save(broken, out / "adain_decoder_badchain.pth")
    dec_names = ["dec4_1", "dec3_4", "dec3_3", "dec3_2", "dec3_1", "dec2_2", "dec2_1", "dec1_2", "dec1_1"]
    dec_index = conv_names(dec, dec_names)
    expected |= {f"adain_decoder/params/{k}": v
                 for k, v in expected_params(dec_sd, "", dec_index).items()}

    tensors = dtype_tensors()
    torch.save(tensors, out / "dtypes.pth")
    torch.save(tensors, out / "dtypes_legacy.pth", _use_new_zipfile_serialization=False)
    expected |= {f"dtypes/{k}": v.detach().float().numpy() for k, v in tensors.items()}

    np.savez(out / "expected.npz", **expected)
    write_malicious(out)
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {len(list(out.iterdir()))} files, {total / 1024:.0f} KiB, to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
