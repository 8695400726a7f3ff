"""The AdaIN decoder's layer table, read by both the model (:class:`nst_jax.adain.Decoder`) and the
weights loader (:mod:`nst_jax.weights`), so neither imports the other and the names cannot drift.

Plain Python, no JAX: pytorch-AdaIN's ``net.py`` ``decoder`` in forward order, each conv named after
the encoder layer it mirrors (``dec4_1`` inverts ``conv4_1``, ..., ``dec1_1`` produces RGB).
"""

from __future__ import annotations

from collections.abc import Sequence

LAYERS: tuple[str, ...] = (
    "dec4_1", "dec3_4", "dec3_3", "dec3_2", "dec3_1", "dec2_2", "dec2_1", "dec1_2", "dec1_1",
)
# Channels at relu4_1 and after decoder blocks 3, 2, 1 (the encoder's widths, mirrored).
WIDTHS: tuple[int, int, int, int] = (512, 256, 128, 64)
# Nearest-neighbour x2 up-sampling follows these layers; it replaces the encoder's max pooling
# (report Sec. VI-B: "pooling layers replaced by nearest up-sampling to reduce checkerboard effects").
UPSAMPLE_AFTER: tuple[str, ...] = ("dec4_1", "dec3_1", "dec2_1")


def layer_channels(widths: Sequence[int] = WIDTHS) -> tuple[tuple[int, int], ...]:
    """(in, out) channels of each layer of :data:`LAYERS` for widths (w4, w3, w2, w1)."""
    w4, w3, w2, w1 = widths
    return ((w4, w3), (w3, w3), (w3, w3), (w3, w3), (w3, w2), (w2, w2), (w2, w1), (w1, w1), (w1, 3))
