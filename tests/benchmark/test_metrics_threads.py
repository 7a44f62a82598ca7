"""Scoring's per-slice array work on several threads (benchmark.metrics.slices) gives the values
one thread gives, and the Scorer's PSNR and SSIM equal skimage's."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from benchmark.metrics import MARBENCH_V1, Scorer, hu_to_unit
from benchmark.metrics.slices import map_slices


@pytest.fixture
def threads():
    """Set torch's thread count for one test, then put it back."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_map_slices_keeps_order_and_spreads_over_threads(threads):
    threads(2)
    barrier = threading.Barrier(2, timeout=10)

    def fn(i: int) -> tuple[int, str]:
        if i < 2:
            barrier.wait()  # the first two slices run at once, or this times out
        return i * i, threading.current_thread().name

    out = map_slices(fn, 5)
    assert [v for v, _ in out] == [0, 1, 4, 9, 16]
    assert all(name.startswith("marbench-slices") for _, name in out)
    threads(1)  # one thread: in the caller's
    names = {n for _, n in map_slices(lambda i: (i, threading.current_thread().name), 3)}
    assert names == {threading.current_thread().name}


def _batch(n: int = 3) -> dict[str, torch.Tensor]:
    """Slices on the evaluation grid (nothing resampled): a body with bone and a metal rod,
    the scored image a noisy, streaky copy of the reference."""
    size = MARBENCH_V1.eval_size
    yy, xx = np.mgrid[:size, :size]
    rng = np.random.default_rng(7)
    refs, preds, metals = [], [], []
    for k in range(n):
        body = ((yy - 256) / (190 - 20 * k)) ** 2 + ((xx - 256) / 150) ** 2 < 1
        ref = np.where(body, 40.0, -1000.0) + rng.normal(0, 8, (size, size))
        ref[((yy - 300) ** 2 + (xx - 200) ** 2) < 30**2] += 700.0
        metal = ((yy - 250) ** 2 + (xx - 290 + 10 * k) ** 2) < 7**2
        ref[metal] = 3000.0
        pred = ref + 90.0 * np.sin(np.arctan2(yy - 250, xx - 290) * 11) * body \
            + rng.normal(0, 15, (size, size))
        pred[metal] = 3000.0
        refs.append(ref)
        preds.append(pred)
        metals.append(metal)
    t = lambda a: torch.tensor(np.stack(a), dtype=torch.float32)[:, None]  # noqa: E731
    return {"pred": t(preds), "ref": t(refs), "metal": torch.tensor(np.stack(metals))[:, None]}


def _score(b: dict[str, torch.Tensor]) -> list[dict]:
    scorer = Scorer(MARBENCH_V1, lpips=None, clinical=True)
    return scorer.update(b["pred"], b["ref"], metal_mask=b["metal"],
                         pixel_spacing_mm=[0.8] * len(b["pred"]),
                         slice_ids=[f"P/{i}" for i in range(len(b["pred"]))])


def test_scores_on_two_threads_equal_scores_on_one(threads):
    b = _batch()
    threads(1)
    one = _score(b)
    threads(2)
    two = _score(b)
    assert repr(one) == repr(two)  # every value, to the last bit


def test_scorer_psnr_and_ssim_equal_skimage():
    b = _batch(2)
    rows = _score(b)
    p = MARBENCH_V1
    for i, row in enumerate(rows):
        x = hu_to_unit(b["pred"][i:i + 1], p.hu_min, p.hu_max)[0, 0].double().numpy()
        y = hu_to_unit(b["ref"][i:i + 1], p.hu_min, p.hu_max)[0, 0].double().numpy()
        assert row["psnr"] == pytest.approx(
            peak_signal_noise_ratio(y, x, data_range=p.data_range), abs=1e-12)
        assert row["ssim"] == pytest.approx(structural_similarity(
            x, y, data_range=p.data_range, gaussian_weights=True, sigma=p.ssim_sigma,
            use_sample_covariance=False), abs=1e-12)
        assert not math.isnan(row["masked_ssim"])


def test_command_lines_set_the_openmp_spin_before_torch_loads():
    """Each command line sets GOMP_SPINCOUNT before torch is imported (OpenMP reads it once);
    a value the user set is kept."""
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    code = ("import os, sys, {m}; print(os.environ.get('GOMP_SPINCOUNT'), "
            "'torch' in sys.modules)")
    for module in ("benchmark.cli", "artifactgsi.cli"):
        out = subprocess.run([sys.executable, "-c", code.format(m=module)], env=env,
                             capture_output=True, text=True, check=True).stdout.split()
        assert out[0] == "10000", module
        kept = subprocess.run([sys.executable, "-c", code.format(m=module)],
                              env={**env, "GOMP_SPINCOUNT": "77"}, capture_output=True,
                              text=True, check=True).stdout.split()
        assert kept[0] == "77", module


def test_openmp_defaults_are_not_set_once_torch_is_loaded(monkeypatch):
    from artifactgsi.openmp import apply_openmp_defaults

    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    assert "torch" in sys.modules  # this test module imported it
    assert apply_openmp_defaults() is False
    assert "GOMP_SPINCOUNT" not in os.environ
