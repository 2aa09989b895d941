"""SIIM run-length encoding: hand-worked strings, a loop reference of the competition's algorithm, bad strings."""

from __future__ import annotations

import numpy as np
import pytest

from bundle.data.prepare.rle import RLEError, decode_union, rle_decode, rle_encode


def reference_encode(mask: np.ndarray) -> str:
    """The competition's mask2rle as plain loops over a [H, W] mask: x outer, y inner; each start counted from the
    end of the previous run. (Unlike the original, a run touching the last pixel is closed.)"""
    height, width = mask.shape
    pairs, position, run_start, run_length, last = [], 0, -1, 0, 0
    for x in range(width):
        for y in range(height):
            value = int(mask[y, x] != 0)
            if value != last:
                if value:
                    run_start, run_length = position, 1
                else:
                    pairs += [run_start, run_length]
                    run_start, run_length, position = -1, 0, 0
            elif run_start > -1:
                run_length += 1
            last = value
            position += 1
    if run_start > -1:
        pairs += [run_start, run_length]
    return " ".join(map(str, pairs)) if pairs else "-1"


def reference_decode(rle: str, height: int, width: int) -> np.ndarray:
    """The competition's rle2mask as a loop, then transposed to [H, W]."""
    flat = np.zeros(width * height, dtype=np.uint8)
    if rle.strip() != "-1":
        numbers = [int(t) for t in rle.split()]
        position = 0
        for start, length in zip(numbers[0::2], numbers[1::2]):
            position += start
            flat[position : position + length] = 1
            position += length
    return flat.reshape(width, height).T


def test_hand_worked_string_on_a_non_square_image():
    # 3 rows x 2 columns; column-major flat order: (y0,x0) (y1,x0) (y2,x0) (y0,x1) (y1,x1) (y2,x1)
    # "1 2 1 1": run at flat 1..2 -> (y1,x0),(y2,x0); next run starts 1 after flat 3 -> flat 4 -> (y1,x1)
    expected = np.array([[0, 0], [1, 1], [1, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(rle_decode("1 2 1 1", 3, 2), expected)
    assert rle_encode(expected) == "1 2 1 1"


def test_empty_mask_is_minus_one():
    assert rle_encode(np.zeros((4, 5))) == "-1"
    assert not rle_decode(" -1 ", 4, 5).any()


@pytest.mark.parametrize("shape", [(7, 5), (5, 7), (16, 16)])
def test_random_masks_match_the_loop_reference_both_ways(shape):
    rng = np.random.default_rng(sum(shape))
    for _ in range(20):
        mask = (rng.random(shape) < rng.uniform(0.05, 0.6)).astype(np.uint8)
        rle = rle_encode(mask)
        assert rle == reference_encode(mask)
        np.testing.assert_array_equal(rle_decode(rle, *shape), mask)
        np.testing.assert_array_equal(reference_decode(rle, *shape), mask)


def test_full_size_1024_round_trip_with_two_objects_united():
    a = np.zeros((1024, 1024), dtype=np.uint8)
    b = np.zeros_like(a)
    a[100:200, 300:350] = 1
    b[150:400, 340:360] = 1
    union = decode_union([rle_encode(a), rle_encode(b)], 1024, 1024)
    np.testing.assert_array_equal(union, a | b)
    assert union.sum() == 100 * 50 + 250 * 20 - 50 * 10


@pytest.mark.parametrize(
    "bad, why",
    [
        ("5 3 7", "pairs"),
        ("1 x", "non-integer"),
        ("", "pairs"),
        ("1 0", "non-positive"),
        ("-2 3", "negative"),
        ("0 30", "beyond"),
        ("10 5 6 5", "beyond"),
    ],
)
def test_malformed_strings_raise(bad, why):
    with pytest.raises(RLEError, match=why):
        rle_decode(bad, 4, 5)
