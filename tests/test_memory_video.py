"""memory.adain_video_height: the frame height of an AdaIN clip from header sizes and a budget.

Pure arithmetic over the memory estimate, checked against a brute-force search that sizes the
frames and styles itself and calls only ``memory.adain_bytes``.
"""

from __future__ import annotations

import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nst_jax import adain, memory, weights
from nst_jax.errors import MemoryBudgetError

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
VGG = weights.load_adain_vgg(FIXTURES / "adain" / "vgg_normalised_narrow.pth")
DEC = weights.load_adain_decoder(FIXTURES / "adain" / "decoder_narrow.pth")


def need(frame_hw, style_hws, style_size, batch):
    """Bytes of a batch at ``frame_hw``: each style resized to ``style_size`` (or the frame's) height."""
    h = frame_hw[0]
    styles = []
    for sh, sw in style_hws:
        height = style_size if style_size else h
        styles.append((height, max(1, round(height * sw / sh))))
    return memory.adain_bytes(frame_hw, styles, VGG, DEC, batch=batch)


def at_height(clip_hw, height):
    return (height, max(1, round(height * clip_hw[1] / clip_hw[0])))


def largest_fitting(clip_hw, budget, style_hws, style_size, batch):
    for height in range(clip_hw[0], 0, -1):
        if need(at_height(clip_hw, height), style_hws, style_size, batch) <= budget:
            return height
    return None


def choose(clip_hw, requested, budget, style_hws=((30, 40),), style_size=None, batch=2, **kw):
    return memory.adain_video_height(clip_hw, requested, budget, list(style_hws), style_size, VGG, DEC, batch, **kw)


def test_smallest_height_is_the_encoders():
    assert memory.ADAIN_MIN_SIDE == adain.MIN_IMAGE_SIZE


def test_default_is_the_clips_height_when_it_fits():
    clip = (90, 160)
    full = need(clip, [(30, 40)], None, 2)
    got = choose(clip, None, full)  # exactly the budget still fits
    assert (got.height, got.need_bytes, got.shape, got.lowered_from) == (90, full, clip, None)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(24, 160), w=st.integers(24, 200), fraction=st.floats(0.02, 0.98),
       batch=st.integers(1, 8), style_size=st.sampled_from([None, 0, 40]),
       style=st.tuples(st.integers(16, 90), st.integers(16, 90)))
def test_default_is_lowered_to_the_largest_height_that_fits(h, w, fraction, batch, style_size, style):
    full = need((h, w), [style], style_size, batch)
    floor = need(at_height((h, w), adain.MIN_IMAGE_SIZE), [style], style_size, batch)
    budget = int(floor + fraction * (full - floor))
    if budget >= full:
        return
    got = choose((h, w), None, budget, [style], style_size, batch)
    expected = largest_fitting((h, w), budget, [style], style_size, batch)
    assert got.height == expected and got.lowered_from == h
    assert got.shape == at_height((h, w), expected) and got.need_bytes <= budget
    assert got.lowered_need_bytes == full


def test_a_given_size_that_does_not_fit_is_refused():
    clip = (90, 160)
    budget = need(at_height(clip, 60), [(30, 40)], None, 4)
    assert choose(clip, 60, budget, batch=4).height == 60
    with pytest.raises(MemoryBudgetError, match=r"batches of 4 frames at 108x61 px need about .*--size"):
        choose(clip, 61, budget, batch=4)


def test_unknown_rotation_counts_both_orientations():
    stored = (40, 120)  # a phone clip may be upright 120x40 or 40x120: the check cannot know before decoding
    tall = need(at_height(stored[::-1], 40), [(30, 40)], None, 2)  # 40 px high, 13 px wide
    wide = need(at_height(stored, 40), [(30, 40)], None, 2)
    assert wide > tall
    got = choose(stored, 40, wide, rotation_known=False)
    assert got.shape == (40, 120) and got.need_bytes == wide
    # --size 0 keeps the frames' size: the stored size and its transpose, both counted.
    kept = choose(stored, 0, 10**12, rotation_known=False)
    assert kept.height == 0 and kept.need_bytes == max(wide, need((120, 40), [(30, 40)], None, 2))
    with pytest.raises(MemoryBudgetError, match="120x40 px"):
        choose(stored, 40, wide - 1, rotation_known=False)


def test_not_even_the_smallest_height_fits():
    clip = (90, 160)
    smallest = need(at_height(clip, adain.MIN_IMAGE_SIZE), [(30, 40)], None, 8)
    assert choose(clip, None, smallest, batch=8).height == adain.MIN_IMAGE_SIZE
    with pytest.raises(MemoryBudgetError, match="lower --batch"):
        choose(clip, None, smallest - 1, batch=8)
