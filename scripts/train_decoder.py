"""Train the AdaIN decoder: ``python scripts/train_decoder.py`` is ``nst-train`` (:mod:`nst_jax.cli.train`).

Kept so that a checkout runs without installing the console scripts; see ``nst-train --help``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

from nst_jax.cli.train import _ProgressBar, build_parser, main  # noqa: E402, F401 (the script's API)

if __name__ == "__main__":
    sys.exit(main())
