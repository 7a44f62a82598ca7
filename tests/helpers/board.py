"""A tiny synthetic board (4 patients x 3 slices, two implant types) and runs on it, written
through the results schema with a small predictions Parquet file (the leaderboard tests'
fixtures in tests/leaderboard/conftest.py build on these)."""

from __future__ import annotations

import hashlib
import zlib
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import benchmark.results as rs
from leaderboard.board import BoardConfig, BoardDataset, BoardSlice, RankedMetric

MANIFEST = "ab" * 32
REVISION = "0123456789abcdef0123456789abcdef01234567"
PATIENTS = [("P000", "hip_prosthesis"), ("P001", "hip_prosthesis"),
            ("P002", "spinal_fixation"), ("P003", "spinal_fixation")]
SLICES = [(p, s, t) for p, t in PATIENTS for s in range(3)]
CARD = """\
name: {name}
authors: [Test Author]
code: https://example.org/{name}
licence: MIT
track: {track}
no_test_patients: true
"""


def summary_np(values: list[float], higher: bool) -> rs.MetricSummary:
    """Independent of the package: numpy mean / population std / median of finite values."""
    v = np.asarray(values, dtype=np.float64)
    f = v[np.isfinite(v)]
    return rs.MetricSummary(mean=float(f.mean()), std=float(f.std()), median=float(np.median(f)),
                            n=len(v), n_finite=len(f), n_inf=int(np.isinf(v).sum()),
                            n_nan=int(np.isnan(v).sum()), higher_is_better=higher)


def write_predictions(path: Path, keys: list[tuple[str, int]], seed: int,
                      salt: str = "") -> tuple[str, int]:
    """A tiny int16 predictions Parquet (4x4 slices, content set by ``seed`` and ``salt``,
    e.g. the method name); (sha256, bytes)."""
    rng = np.random.default_rng([seed, zlib.crc32(salt.encode())])
    arrays = [rng.integers(-1024, 3071, size=(4, 4)).astype(np.int16).tolist() for _ in keys]
    table = pa.table({"patient_id": pa.array([k[0] for k in keys], pa.string()),
                      "slice_index": pa.array([k[1] for k in keys], pa.int32()),
                      "prediction": pa.array(arrays, pa.list_(pa.list_(pa.int16())))})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), len(data)


def make_results(folder: Path, name: str, psnr: np.ndarray, ssim: np.ndarray,
                 version: str = "1", seed: int = 0, track: str = "classic",
                 slices: list[tuple[str, int, str]] | None = None) -> Path:
    """A run folder (results.json, predictions/, card.yaml) with the given per-slice values
    (aligned with ``slices``, default :data:`SLICES`)."""
    slices = SLICES if slices is None else slices
    keys = [(p, s) for p, s, _ in slices]
    pred = "predictions/test-00000-of-00001.parquet"
    sha, nbytes = write_predictions(folder / pred, keys, seed, salt=name)
    per_slice = [rs.SliceRecord(patient_id=p, slice_index=s, z_mm=2.5 * s, implant_type=t,
                                metal_pixels=10,
                                scores={"method_vs_gsi": {"psnr": float(a), "ssim": float(b)}})
                 for (p, s, t), a, b in zip(slices, psnr, ssim, strict=True)]
    results = rs.Results(
        created_utc=datetime(2025, 1, 1, tzinfo=timezone.utc),  # noqa: UP017
        protocol=rs.ProtocolRecord(version="marbench-v1", settings={"size": 512}),
        dataset=rs.DatasetRecord(
            source="org/data", repo_id="org/data", revision=REVISION, path="/data",
            config="pairs", split="test", manifest_sha256=MANIFEST,
            files=[rs.DataFileRecord(path="pairs/test.parquet", sha256="c" * 64, bytes=1,
                                     rows=len(slices))],
            n_slices_split=len(slices), n_slices_scored=len(slices), has_ideal=False),
        method=rs.MethodRecord(name=name, requested=name, target=f"x:{name}", version=version),
        code=rs.CodeRecord(package="artifactgsi", version="0.1.0"),
        hardware=rs.HardwareRecord(cpu="cpu", cpu_count=1, platform="linux", python="3.11",
                                   torch="2.14.1", torch_threads=1, device="cpu"),
        timing=rs.TimingRecord(prepare_s=0, reduce_s=0, score_s=0, total_s=0,
                               reduce_ms_per_slice=0),
        metrics={"psnr": rs.MetricDefinition(unit="dB", higher_is_better=True, description="PSNR"),
                 "ssim": rs.MetricDefinition(unit="", higher_is_better=True, description="SSIM")},
        comparisons={"method_vs_gsi": rs.ComparisonRecord(
            scored="method", reference="gsi", available=True, n_slices=len(slices),
            summary={"psnr": summary_np(list(psnr), True), "ssim": summary_np(list(ssim), True)}),
            "method_vs_ideal": rs.ComparisonRecord(scored="method", reference="ideal",
                                                   available=False, reason="real data", n_slices=0),
            "gsi_vs_ideal": rs.ComparisonRecord(scored="gsi", reference="ideal", available=False,
                                                reason="real data", n_slices=0)},
        per_slice=per_slice,
        predictions=rs.PredictionsRecord(path=pred, sha256=sha, bytes=nbytes, rows=len(keys)),
    )
    results.save(folder / "results.json")
    (folder / "card.yaml").write_text(CARD.format(name=name, track=track))
    return folder


def board_config(title: str = "Test board") -> BoardConfig:
    return BoardConfig(
        title=title, protocols=["marbench-v1"],
        dataset=BoardDataset(repo_id="org/data", revision=REVISION, manifest_sha256=MANIFEST,
                             image_shape=(4, 4)),
        slices=[BoardSlice(patient_id=p, slice_index=s, implant_type=t) for p, s, t in SLICES],
        metrics=[RankedMetric(comparison="method_vs_gsi", metric="psnr", label="PSNR vs GSI",
                              higher_is_better=True, unit="dB"),
                 RankedMetric(comparison="method_vs_gsi", metric="ssim", label="SSIM vs GSI",
                              higher_is_better=True)],
    )


#: Per-slice PSNR of three synthetic methods: "good" > "mid" > "bad" on every slice.
def method_scores(offset: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = np.linspace(28.0, 34.0, len(SLICES))
    psnr = base + offset + rng.normal(0, 0.3, len(SLICES))
    ssim = np.clip(0.7 + offset / 40 + rng.normal(0, 0.01, len(SLICES)), 0, 1)
    return psnr, ssim
