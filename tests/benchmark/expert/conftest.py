"""Fixtures of the expert-study tests: a tiny built dataset, three benchmark runs on it (the
identity run made by the real runner, two more derived from it and written in the runner's
predictions format), a pack made from them, and simulated raters.

Simulated raters exist only here, to exercise pack -> form -> export -> score; their numbers
are never expert scores.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.files import private_datasets_cache

#: Method names of the derived runs; distinctive, so the blinding test's grep cannot match
#: ordinary words.
FAKE_METHODS = ("smoothmar", "blendmar")


@pytest.fixture(scope="session")
def expert_cache(tmp_path_factory):
    """A private ``datasets`` cache for the whole session (never the user's)."""
    with private_datasets_cache(tmp_path_factory.mktemp("expert_hf_cache")):
        yield


@pytest.fixture(scope="session")
def expert_data(tmp_path_factory, write_tiny_pairs, expert_cache) -> Path:
    """2 test patients (hip prosthesis, fracture fixation) x 6 slices of 32 x 32."""
    return write_tiny_pairs(tmp_path_factory.mktemp("expert") / "data", size=32, slices=6)


def _write_predictions(path: Path, pids: list[str], sidx: list[int], pred: np.ndarray) -> None:
    """The runner's predictions Parquet: patient_id, slice_index, prediction (Array2D int16)."""
    from datasets import Array2D, Features, Value
    from datasets.arrow_writer import ParquetWriter

    features = Features({"patient_id": Value("string"), "slice_index": Value("int32"),
                         "prediction": Array2D(pred.shape[1:], "int16")})
    path.parent.mkdir(parents=True, exist_ok=True)
    w = ParquetWriter(path=str(path), features=features)
    w.write_batch({"patient_id": pids, "slice_index": sidx, "prediction": list(pred)})
    w.finalize()


def derive_run(src: Path, dst: Path, name: str,
               transform: Callable[[np.ndarray], np.ndarray]) -> Path:
    """Copy a run as method ``name`` with ``transform``ed (N, H, W) int16 predictions."""
    import pyarrow.parquet as pq

    from artifactgsi.hub import sha256_file
    from benchmark.results import PredictionsRecord, Results

    res = Results.load(src)
    table = pq.read_table(src / res.predictions.path)
    pids = [str(p) for p in table.column("patient_id").to_pylist()]
    sidx = [int(s) for s in table.column("slice_index").to_pylist()]
    pred = np.asarray(table.column("prediction").to_pylist(), dtype=np.int16)
    new = np.clip(np.rint(transform(pred.astype(np.float64))), -1024, 3071).astype(np.int16)
    out = dst / res.predictions.path
    _write_predictions(out, pids, sidx, new)
    method = res.method.model_copy(update={"name": name, "requested": name,
                                           "target": f"tests:{name}"})
    rec = PredictionsRecord(path=res.predictions.path, sha256=sha256_file(out),
                            bytes=out.stat().st_size, rows=len(pids))
    res.model_copy(update={"method": method, "predictions": rec}).save(dst / "results.json")
    return dst


@pytest.fixture(scope="session")
def expert_runs(expert_data, tmp_path_factory) -> list[Path]:
    """Run folders: identity (the real runner), smoothmar (3x3 mean), blendmar (clipped)."""
    import torch
    from scipy.ndimage import uniform_filter

    from benchmark.run import run_benchmark

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("expert_runs")
    run_benchmark("identity", str(expert_data), "test", root / "identity", lpips=None,
                  clinical=False, figure=False, verbose=False,
                  data_cache_dir=root / "cache")
    smooth = derive_run(root / "identity", root / FAKE_METHODS[0], FAKE_METHODS[0],
                        lambda x: uniform_filter(x, size=(1, 3, 3)))
    blend = derive_run(root / "identity", root / FAKE_METHODS[1], FAKE_METHODS[1],
                       lambda x: np.minimum(x, 1500.0))
    return [root / "identity", smooth, blend]


@pytest.fixture(scope="session")
def expert_pack(expert_runs, expert_data, tmp_path_factory):
    """A pack: 9 cases x 3 methods, 3 reading lists, ~10 % repeats, reference shown."""
    from benchmark.expert.pack import make_pack

    out = tmp_path_factory.mktemp("expert_pack") / "study"
    return make_pack(expert_runs, out, data=expert_data, cases=9, readers=3, repeat=0.1,
                     seed=3)


#: Simulated mean scores per method (readability, correctness): test data only.
SIM_TRUTH = {"identity": (1.6, 2.6), FAKE_METHODS[0]: (3.0, 3.4), FAKE_METHODS[1]: (4.4, 4.2)}


def simulate_ratings(pack_dir: Path, key_path: Path, out_dir: Path, readers: int | None = None,
                     *, noise: float = 0.35, seed: int = 0,
                     truth: dict[str, tuple[float, float]] | None = None) -> list[Path]:
    """Simulated raters (test fixture only): one exported CSV per reading list, scores from
    ``truth`` per method + a case effect + a reader bias + noise, rounded to 1-5; a repeated
    image gets the reader's latent score again with fresh noise."""
    from benchmark.expert.form import RATING_COLUMNS

    truth = truth or SIM_TRUTH
    manifest = json.loads((pack_dir / "reader" / "manifest.json").read_text())
    key = json.loads(key_path.read_text())
    rng = np.random.default_rng(seed)
    case_eff = {c["case"]: rng.normal(0, 0.3) for c in key["cases"]}
    paths = []
    lists = manifest["reading_lists"][:readers] if readers else manifest["reading_lists"]
    out_dir.mkdir(parents=True, exist_ok=True)
    for rl in lists:
        bias = rng.normal(0, 0.2)
        latent: dict[str, tuple[float, float]] = {}
        path = out_dir / f"reader{rl['list']}.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(RATING_COLUMNS))
            w.writeheader()
            for pos, it in enumerate(rl["items"], start=1):
                meta = key["images"][it["image"]]
                mu = truth[meta["method"].split(" [")[0]]
                base = latent.setdefault(it["image"], tuple(
                    m + case_eff[meta["case"]] + bias for m in mu))
                sc = [int(np.clip(np.rint(b + rng.normal(0, noise)), 1, 5)) for b in base]
                w.writerow({"pack_id": manifest["pack_id"], "reading_list": rl["list"],
                            "reader_id": f"sim{rl['list']}", "experience_years": 5,
                            "position": pos, "item": it["item"], "image": it["image"],
                            "readability": sc[0], "correctness": sc[1], "seconds": 12.5,
                            "comment": "", "rated_at": "2024-01-01T00:00:00Z"})
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def simulate() -> Callable[..., list[Path]]:
    return simulate_ratings


def require_browser() -> str:
    """Path of the system chromium and playwright importable, else skip (fail under CI)."""
    from artifactgsi.testing import require_tool

    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "playwright is not installed (pip install playwright)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but the browser test cannot run: {reason}")
        pytest.skip(reason)
    exe = require_tool("chromium")
    return exe


def hand_alpha(data: np.ndarray, metric: str) -> float:
    """Krippendorff's alpha written out from his 2011 note (coincidence matrix), independent
    of the ``krippendorff`` package: ``data`` is raters x units with NaN for missing;
    ``metric`` is ``"nominal"`` or ``"ordinal"``."""
    x = np.asarray(data, dtype=np.float64)
    values = np.unique(x[np.isfinite(x)])
    ix = {v: i for i, v in enumerate(values)}
    v = len(values)
    o = np.zeros((v, v))
    for u in range(x.shape[1]):
        col = [c for c in x[:, u] if np.isfinite(c)]
        m = len(col)
        if m < 2:
            continue  # a unit coded once is not pairable
        for i, a in enumerate(col):
            for j, b in enumerate(col):
                if i != j:
                    o[ix[a], ix[b]] += 1.0 / (m - 1)
    n_c = o.sum(axis=1)
    n = n_c.sum()
    delta = np.zeros((v, v))
    for c in range(v):
        for k in range(v):
            if metric == "nominal":
                delta[c, k] = float(c != k)
            else:  # ordinal: (sum of marginals from c to k, minus half of both ends) squared
                lo, hi = min(c, k), max(c, k)
                delta[c, k] = (n_c[lo:hi + 1].sum() - (n_c[lo] + n_c[hi]) / 2.0) ** 2
    d_o = (o * delta).sum()
    d_e = (np.outer(n_c, n_c) * delta).sum() / (n - 1)
    return 1.0 - d_o / d_e


@pytest.fixture(scope="session")
def alpha_by_hand() -> Callable[[np.ndarray, str], float]:
    return hand_alpha


@pytest.fixture
def browser_exe() -> str:
    return require_browser()
