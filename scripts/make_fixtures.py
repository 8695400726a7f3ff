"""Regenerates every PyTorch golden fixture under tests/fixtures/ (PyTorch needed here only).

Each part lives in its own generator script, runnable alone:

* ``make_weight_fixtures.py``  -> tests/fixtures/weights/  (.pth formats, dtypes, malicious pickles)
* ``make_gatys_fixtures.py``   -> tests/fixtures/gatys/    (narrow VGG-19, layer outputs, losses, gradient, L-BFGS)
* ``make_adain_fixtures.py``   -> tests/fixtures/adain/    (narrow encoder/decoder, AdaIN, stylize)
* ``make_train_fixtures.py``   -> tests/fixtures/train/    (one decoder training step: losses, grads, Adam)

    pip install -e ".[torch]" && python scripts/make_fixtures.py

The outputs are committed; CI and the tests never import torch. Rerun only when a definition changes.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

PARTS = ("make_weight_fixtures.py", "make_gatys_fixtures.py", "make_adain_fixtures.py", "make_train_fixtures.py")


def main() -> int:
    here = pathlib.Path(__file__).resolve().parent
    for part in PARTS:
        print(f"== {part}", flush=True)
        code = subprocess.call([sys.executable, str(here / part)])
        if code:
            print(f"error: {part} failed with exit code {code}", file=sys.stderr)
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
