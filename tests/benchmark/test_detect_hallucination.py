"""The hallucination measures: band-pass scaling, the map, the ideal operating point."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.detect.hallucination import (
    bandpass_lesion_hu,
    dog_gain,
    false_positive_fraction,
    hallucination_map,
    ideal_operating_point,
)


def disc(size: int, radius_px: float, contrast: float, centre=None, ss: int = 8) -> np.ndarray:
    """Anti-aliased disc (ss x ss sub-samples per pixel)."""
    cy, cx = centre if centre is not None else (size // 2, size // 2)
    off = (np.arange(ss) + 0.5) / ss - 0.5
    y = (np.arange(size)[:, None] + off[None, :]).ravel()
    x = y.copy()
    inside = ((y[:, None] - cy) ** 2 + (x[None, :] - cx) ** 2) <= radius_px ** 2
    return contrast * inside.reshape(size, ss, size, ss).mean((1, 3))


@pytest.mark.parametrize("radius", [3.0, 6.0])
def test_bandpass_reads_a_disc_lesion_at_its_contrast(radius):
    img = disc(97, radius, 25.0)
    out = bandpass_lesion_hu(img, radius)
    assert out[48, 48] == pytest.approx(25.0, rel=0.05)
    # A uniform offset (a shift of the HU scale) is removed.
    assert np.abs(bandpass_lesion_hu(img + 300.0, radius) - out).max() < 1e-6


def test_dog_gain_closed_form():
    # Mass of a 2D Gaussian inside radius R: 1 - exp(-R^2 / 2 s^2), checked numerically.
    from scipy import ndimage

    img = disc(201, 10.0, 1.0, ss=16)
    num = ndimage.gaussian_filter(img, 5.0)[100, 100] - ndimage.gaussian_filter(img, 20.0)[100,
                                                                                         100]
    assert dog_gain(10.0, 5.0, 20.0) == pytest.approx(num, rel=0.01)


def _scene(rng, size=64):
    ideal = np.zeros((size, size))
    ideal[10:54, 10:54] = 40.0  # soft tissue
    noise = rng.normal(0, 3.0, ideal.shape)
    inp = ideal + noise
    inp[30:34, :] -= 40.0  # a dark band (a streak) in the input
    exclude = np.zeros_like(ideal, bool)
    exclude[31:33, 31:33] = True
    return ideal, inp, exclude


def test_map_is_empty_for_a_copy_of_the_input_and_catches_a_painted_blob():
    ideal, inp, exclude = _scene(np.random.default_rng(0))
    radii, thr = [2.0], 15.0
    copy = hallucination_map(inp, inp, ideal, ideal, exclude, radii, thr)
    assert not copy.any()
    blob = inp + disc(64, 2.0, 60.0, centre=(45, 20))
    flagged = hallucination_map(blob, inp, ideal, ideal, exclude, radii, thr)
    assert flagged[45, 20]
    assert flagged[:, 40:].sum() == 0  # nothing far from the blob
    # Removing the streak (a correction) adds nothing.
    fixed = hallucination_map(ideal + 1.0, inp, ideal, ideal, exclude, radii, thr)
    assert not fixed.any()


def test_map_ignores_differences_inside_the_metal():
    ideal, inp, exclude = _scene(np.random.default_rng(1))
    method = inp.copy()
    method[exclude] += 5000.0  # a method that changes the metal's HU
    assert not hallucination_map(method, inp, ideal, ideal, exclude, [2.0], 15.0).any()


def test_ideal_operating_point_is_the_midpoint_of_the_ideal_responses():
    w = np.array([1.0, 2.0])
    assert ideal_operating_point(w, np.array([4.0, 2.0]), np.array([0.0, 0.0])) == 4.0
    assert false_positive_fraction(np.array([1.0, 5.0, 4.0, np.nan]), 4.0) == pytest.approx(1 / 3)
