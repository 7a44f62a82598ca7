"""The benchmark runner end to end on a tiny built dataset (2 patients x 3 slices, 64 x 64):
identity scored against skimage, GSI against ideal, reproducibility, errors that teach,
LPIPS reported missing without its weights, and ``marbench compare``."""

from __future__ import annotations

import json
import math
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from artifactgsi.testing import TINY_PAIRS_PATIENTS as PATIENTS  # noqa: F401
from artifactgsi.testing import write_tiny_pairs

SIZE = 64


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def _datasets_cache(tmp_path_factory):
    """Keep the Arrow copies that ``datasets`` makes out of the user's cache."""
    from tests.helpers.files import private_datasets_cache

    with private_datasets_cache(tmp_path_factory.mktemp("hf_datasets_cache")):
        yield


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_tiny_pairs(tmp_path_factory.mktemp("data") / "ArtifactGSI-tiny")


@pytest.fixture(scope="module")
def identity_run(dataset, tmp_path_factory):
    """identity on the test split with the clinical metrics (LPIPS off: it has its own test)."""
    from benchmark.run import run_benchmark

    out = tmp_path_factory.mktemp("run") / "identity"
    return out, run_benchmark("identity", str(dataset), "test", out, lpips=None, verbose=False)


def _fixture_rows(folder: Path, split: str = "test") -> dict[tuple[str, int], dict]:
    """The fixture's rows read straight from Parquet with pyarrow (not through the runner)."""
    import pyarrow.parquet as pq

    table = pq.read_table(folder / "pairs" / f"{split}-00000-of-00001.parquet")
    out = {}
    for row in table.to_pylist():
        img = {k: None if row[k] is None else np.asarray(row[k], np.float64)
               for k in ("ordinary", "gsi", "ideal", "metal_mask")}
        out[(row["patient_id"], row["slice_index"])] = img
    return out


def _unit512(image_hu: np.ndarray) -> np.ndarray:
    """Protocol resampling done independently: skimage bilinear (edge mode; upsampling, so no
    anti-aliasing applies), then HU clipped to [-1024, 3071] and scaled to [0, 1]."""
    from skimage.transform import resize

    big = resize(image_hu, (512, 512), order=1, mode="edge", anti_aliasing=False,
                 preserve_range=True)
    return (np.clip(big, -1024.0, 3071.0) + 1024.0) / 4095.0


# ----------------------------------------------------------------------------- the run


def test_identity_results_validate_and_files_exist(identity_run):
    from benchmark.results import RESULTS_FORMAT, Results

    out, results = identity_run
    loaded = Results.load(out / "results.json")
    assert loaded.format == RESULTS_FORMAT
    assert loaded.model_dump() == Results.model_validate_json(
        (out / "results.json").read_text()).model_dump()
    # The provenance every results file records.
    assert loaded.protocol.version == "marbench-v1"
    assert loaded.protocol.settings["eval_size"] == 512
    assert len(loaded.dataset.manifest_sha256 or "") == 64
    assert loaded.dataset.split == "test" and loaded.dataset.n_slices_scored == 6
    assert loaded.method.name == "identity" and loaded.method.version == "1"
    assert loaded.method.target == "baselines.identity:Identity"
    assert loaded.code.version and loaded.hardware.torch == torch.__version__
    assert loaded.metrics["psnr"].higher_is_better and not loaded.metrics["ct_rmse_hu"] \
        .higher_is_better
    # Benchmark order: patient, then slice index (the Parquet rows are shuffled).
    assert [(s.patient_id, s.slice_index) for s in loaded.per_slice] == [
        ("P000", 0), ("P000", 1), ("P000", 2), ("P001", 0), ("P001", 1), ("P001", 2)]
    assert {s.implant_type for s in loaded.per_slice} == {"hip_prosthesis", "fracture_fixation"}
    # per_slice.csv: one row per slice, values that round-trip exactly.
    import csv

    rows = list(csv.DictReader((out / "per_slice.csv").open()))
    assert len(rows) == 6
    assert float(rows[0]["method_vs_gsi.psnr"]) == loaded.per_slice[0].scores[
        "method_vs_gsi"]["psnr"]
    png = (out / loaded.figure).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.rglob(".*.tmp")]  # no temporary files left behind


def test_identity_psnr_ssim_equal_skimage(identity_run, dataset):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    _, results = identity_run
    rows = _fixture_rows(dataset)
    for s in results.per_slice[:4]:
        img = rows[(s.patient_id, s.slice_index)]
        pred, ref = _unit512(img["ordinary"]), _unit512(img["gsi"])
        want_psnr = peak_signal_noise_ratio(ref, pred, data_range=1.0)
        want_ssim = structural_similarity(ref, pred, data_range=1.0, gaussian_weights=True,
                                          sigma=1.5, use_sample_covariance=False)
        got = s.scores["method_vs_gsi"]
        assert got["psnr"] == pytest.approx(want_psnr, abs=1e-3)
        assert got["ssim"] == pytest.approx(want_ssim, abs=1e-4)


def test_gsi_is_scored_against_ideal_where_it_exists(identity_run, dataset):
    from skimage.metrics import peak_signal_noise_ratio

    _, results = identity_run
    comp = results.comparisons
    assert comp["method_vs_gsi"].n_slices == 6
    # Only patient P000 is simulated (has an ideal image); P001's ideal is null.
    assert comp["method_vs_ideal"].available and comp["method_vs_ideal"].n_slices == 3
    assert comp["gsi_vs_ideal"].available and comp["gsi_vs_ideal"].n_slices == 3
    for s in results.per_slice:
        assert ("gsi_vs_ideal" in s.scores) == (s.patient_id == "P000")
    rows = _fixture_rows(dataset)
    s = results.per_slice[1]
    img = rows[(s.patient_id, s.slice_index)]
    assert s.scores["gsi_vs_ideal"]["psnr"] == pytest.approx(
        peak_signal_noise_ratio(_unit512(img["ideal"]), _unit512(img["gsi"]), data_range=1.0),
        abs=1e-3)
    # The fixture's GSI has 11x weaker streaks than ordinary: GSI must beat identity.
    gi, mi = comp["gsi_vs_ideal"].summary, comp["method_vs_ideal"].summary
    assert gi["psnr"].mean > mi["psnr"].mean + 10.0
    assert gi["streak_amplitude_hu"].mean < 0.2 * mi["streak_amplitude_hu"].mean


def test_predictions_are_the_method_output_in_int16(identity_run, dataset):
    import datasets

    from artifactgsi.hub import sha256_file

    out, results = identity_run
    rec = results.predictions
    assert rec is not None and rec.rows == 6
    path = out / rec.path
    assert sha256_file(path) == rec.sha256 and path.stat().st_size == rec.bytes
    pred = datasets.load_dataset("parquet", data_files={"p": str(path)}, split="p")
    assert pred.features["prediction"].dtype == "int16"
    rows = _fixture_rows(dataset)
    arr = pred.with_format("numpy", dtype=None)
    for r in range(len(pred)):
        key = (str(arr[r]["patient_id"]), int(arr[r]["slice_index"]))
        assert arr[r]["prediction"].dtype == np.int16
        np.testing.assert_array_equal(arr[r]["prediction"], rows[key]["ordinary"])


def test_rerun_reproduces_numbers_and_predictions(identity_run, dataset, tmp_path):
    from benchmark.run import run_benchmark

    _, first = identity_run
    again = run_benchmark("identity", str(dataset), "test", tmp_path / "again", lpips=None,
                          verbose=False)
    a = [s.model_dump() for s in first.per_slice]
    b = [s.model_dump() for s in again.per_slice]
    # NaN-aware exact equality (a clinical metric may be undefined on a slice).
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert first.predictions is not None and again.predictions is not None
    assert again.predictions.sha256 == first.predictions.sha256
    assert again.comparisons == first.comparisons


def test_figure_shows_the_slices_with_most_metal(identity_run):
    from benchmark.run.outputs import FigurePicker as _FigurePicker
    from benchmark.run.outputs import FigureSlice as _FigureSlice

    picker = _FigurePicker(2)
    counts = {("A", 0): 5, ("A", 1): 9, ("B", 0): 7, ("C", 0): 8, ("C", 1): 1, ("D", 0): 8}
    for pos, ((pid, si), n) in enumerate(counts.items()):
        picker.offer(_FigureSlice((n, -pos), pid, si, pos, {}))
    # One slice per patient, most metal first; the tie C/D (8) goes to the earlier slice.
    assert [(c.patient_id, c.slice_index) for c in picker.chosen()] == [("A", 1), ("C", 0)]


# ----------------------------------------------------------------------------- data access


def test_neighbour_stacks_repeat_edges_and_reach_the_method(dataset, tmp_path, monkeypatch):
    from benchmark.data import open_split
    from benchmark.run import run_benchmark

    pairs = open_split(str(dataset), "test")
    rows = _fixture_rows(dataset)
    first = pairs.order[0]  # P000 slice 0
    stack = pairs.neighbour_stack(first, 1)
    assert stack.dtype == np.int16 and stack.shape == (3, SIZE, SIZE)
    for got, want in zip(stack, [0, 0, 1], strict=True):
        np.testing.assert_array_equal(got, rows[("P000", want)]["ordinary"])
    last = pairs.order[2]  # P000 slice 2
    assert [pairs.slice_id(r) for r in pairs.neighbour_rows(last, 2)] == [
        ("P000", 0), ("P000", 1), ("P000", 2), ("P000", 2), ("P000", 2)]

    _write_methods_module(tmp_path, monkeypatch)
    res = run_benchmark("marbench_test_methods:Volumetric", str(dataset), "test",
                        tmp_path / "vol", lpips=None, clinical=False, figure=False,
                        verbose=False)
    assert res.method.neighbour_slices == 1
    ident = run_benchmark("identity", str(dataset), "test", tmp_path / "id", lpips=None,
                          clinical=False, figure=False, verbose=False)
    assert res.predictions.sha256 == ident.predictions.sha256  # centre channel = ordinary


def test_split_files_are_checked_against_the_manifest(dataset, tmp_path):
    import shutil

    from artifactgsi.hub import ManifestError
    from benchmark.data import open_split

    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    victim = copy / "pairs" / "test-00000-of-00001.parquet"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="pairs/test-00000-of-00001.parquet.*sha256"):
        open_split(str(copy), "test")
    open_split(str(copy), "train")  # the other split is intact


# ----------------------------------------------------------------------------- errors


METHODS_MODULE = '''
import torch
from benchmark.method import MARMethod, MAROutput


class NaNOnOneSlice(MARMethod):
    name = "nan_on_one_slice"
    def reduce(self, batch):
        img = batch.ordinary.clone()
        for i, key in enumerate(zip(batch.patient_id, batch.slice_index)):
            if key == ("P001", 1):
                img[i, 0, 5, 5] = float("nan")
        return MAROutput(image=img)


class WrongShape(MARMethod):
    name = "wrong_shape"
    def reduce(self, batch):
        return MAROutput(image=batch.ordinary[..., :32].contiguous())


class WrongDtype(MARMethod):
    name = "wrong_dtype"
    def reduce(self, batch):
        return MAROutput(image=batch.ordinary.double())


class Raises(MARMethod):
    name = "raises"
    def reduce(self, batch):
        raise RuntimeError("kaboom")


class Volumetric(MARMethod):
    """Returns the centre of its neighbour stack (which must exist)."""
    name = "volumetric"
    neighbour_slices = 1
    def reduce(self, batch):
        n = batch.neighbours
        assert n is not None and n.shape[1] == 3
        return MAROutput(image=n[:, 1:2].clone())
'''


def _write_methods_module(tmp_path: Path, monkeypatch) -> None:
    """An importable module of tiny methods, passed to the runner as 'module:Class'."""
    (tmp_path / "marbench_test_methods.py").write_text(METHODS_MODULE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("marbench_test_methods", None)


@pytest.mark.parametrize(("cls", "error", "pattern"), [
    ("NaNOnOneSlice", "MethodOutputError",
     r"'nan_on_one_slice'.*1 NaN.*patient 'P001' slice 1"),
    ("WrongShape", "MethodOutputError",
     r"'wrong_shape'.*shape \(4, 1, 64, 32\).*\(4, 1, 64, 64\).*patient 'P000' slice 0"),
    ("WrongDtype", "MethodOutputError", r"'wrong_dtype'.*torch.float64.*patient 'P000' slice 0"),
    ("Raises", "MethodRunError", r"'raises'.*RuntimeError on patient 'P000' slice 0.*kaboom"),
])
def test_broken_methods_fail_naming_method_and_slice(dataset, tmp_path, monkeypatch, cls, error,
                                                     pattern):
    from benchmark.method import MethodOutputError
    from benchmark.run import MethodRunError, run_benchmark

    _write_methods_module(tmp_path, monkeypatch)
    exc = {"MethodOutputError": MethodOutputError, "MethodRunError": MethodRunError}[error]
    out = tmp_path / "out"
    with pytest.raises(exc, match=pattern):
        run_benchmark(f"marbench_test_methods:{cls}", str(dataset), "test", out, lpips=None,
                      clinical=False, verbose=False)
    # Nothing half-written is left: no results, no predictions, no temporary files.
    left = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert left == []


def test_unknown_method_suggests_the_closest_name(dataset, tmp_path):
    from benchmark.registry import UnknownMethodError
    from benchmark.run import run_benchmark

    with pytest.raises(UnknownMethodError, match="Did you mean 'identity'"):
        run_benchmark("identiy", str(dataset), "test", tmp_path, verbose=False)


def test_missing_split_names_dataset_and_available_splits(dataset, tmp_path):
    from benchmark.data import DatasetError
    from benchmark.run import run_benchmark

    with pytest.raises(DatasetError) as e:
        run_benchmark("identity", str(dataset), "validation", tmp_path, verbose=False)
    msg = str(e.value)
    assert str(dataset) in msg and "'validation'" in msg and "test, train" in msg
    with pytest.raises(DatasetError, match="available configs: pairs"):
        run_benchmark("identity", str(dataset), "test", tmp_path, config="clean", verbose=False)
    with pytest.raises(DatasetError, match="no such folder"):
        run_benchmark("identity", str(tmp_path / "absent" / "x"), "test", tmp_path,
                      verbose=False)


def test_missing_lpips_weights_are_reported_and_the_run_continues(dataset, tmp_path,
                                                                  monkeypatch):
    from benchmark.results import Results
    from benchmark.run import run_benchmark

    absent = tmp_path / "no-such-alexnet.safetensors"
    monkeypatch.setenv("MARBENCH_LPIPS_WEIGHTS", str(absent))
    res = run_benchmark("identity", str(dataset), "test", tmp_path / "out", limit=2,
                        clinical=False, figure=False, verbose=False)
    for comp in res.comparisons.values():
        if comp.available:
            assert "lpips" not in comp.summary and "psnr" in comp.summary
            assert str(absent) in comp.missing["lpips"]
            assert "marbench weights lpips" in comp.missing["lpips"]
    assert res.protocol.lpips_weights_fingerprint is None
    assert res.dataset.n_slices_scored == 2 and res.dataset.limit == 2
    assert Results.load(tmp_path / "out").comparisons == res.comparisons


def _lpips_weights():
    from benchmark.metrics import find_lpips_weights

    return find_lpips_weights()


@pytest.mark.skipif(_lpips_weights() is None, reason="real AlexNet weights absent: run "
                    "`marbench weights lpips` to enable the LPIPS run check")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lpips_is_scored_with_the_real_weights(dataset, tmp_path):
    from benchmark.metrics import LPIPSMetric
    from benchmark.run import run_benchmark

    res = run_benchmark("identity", str(dataset), "test", tmp_path, limit=1, clinical=False,
                        figure=False, verbose=False)
    assert res.protocol.lpips_weights_fingerprint == LPIPSMetric().weights_fingerprint
    s = res.per_slice[0].scores
    # LPIPS is a distance: identity is far from GSI, GSI close to the ideal image.
    assert 0.0 < s["gsi_vs_ideal"]["lpips"] < s["method_vs_ideal"]["lpips"] < 1.0
    assert "lpips" not in res.comparisons["method_vs_gsi"].missing


def test_real_data_without_ideal_reports_why(tmp_path):
    from benchmark.run import run_benchmark

    folder = write_tiny_pairs(tmp_path / "real", ideal=False)
    res = run_benchmark("identity", str(folder), "test", tmp_path / "out", limit=3,
                        lpips=None, clinical=False, verbose=False)
    assert not res.dataset.has_ideal
    for key in ("method_vs_ideal", "gsi_vs_ideal"):
        assert not res.comparisons[key].available
        assert "ideal" in res.comparisons[key].reason
    assert all(set(s.scores) == {"method_vs_gsi"} for s in res.per_slice)


def test_results_schema_rejects_inconsistent_files(identity_run):
    from benchmark.results import Results

    _, results = identity_run
    raw = json.loads(results.to_json())
    raw["comparisons"]["method_vs_gsi"]["n_slices"] = 5
    with pytest.raises(ValueError, match="n_slices is 5 but 6 per-slice rows"):
        Results.model_validate(raw)
    raw = json.loads(results.to_json())
    raw["surprise"] = 1
    with pytest.raises(ValueError, match="surprise"):
        Results.model_validate(raw)
    # inf / NaN survive the JSON round trip as strings.
    raw = json.loads(results.to_json())
    raw["per_slice"][0]["scores"]["method_vs_gsi"]["psnr"] = "Infinity"
    assert math.isinf(Results.model_validate(raw).per_slice[0].scores["method_vs_gsi"]["psnr"])


# ----------------------------------------------------------------------------- CLI


def test_cli_run_and_compare(dataset, identity_run, tmp_path):
    from typer.testing import CliRunner

    from benchmark.cli import app

    runner = CliRunner()
    out = tmp_path / "cli"
    r = runner.invoke(app, ["run", "--method", "identity", "--data", str(dataset), "--out",
                            str(out), "--limit", "2", "--no-lpips", "--no-clinical",
                            "--no-predictions"])
    assert r.exit_code == 0, r.output
    assert (out / "results.json").is_file() and not (out / "predictions").exists()

    r = runner.invoke(app, ["run", "--method", "identity", "--data", str(dataset), "--split",
                            "val", "--out", str(out)])
    assert r.exit_code == 2 and "available splits: test, train" in r.output

    first, _ = identity_run
    r = runner.invoke(app, ["compare", "--markdown", str(first / "results.json"), str(out)])
    assert r.exit_code == 0, r.output
    table = r.stdout.split("\n\n")[0]  # the significance sections follow a blank line
    lines = [ln for ln in table.splitlines() if ln.startswith("|")]
    # header, separator, one row per results file, then GSI against the ideal image.
    assert len(lines) == 2 + 2 + 1
    assert "PSNR ↑ (vs GSI)" in lines[0] and "LPIPS ↓ (vs GSI)" in lines[0]
    assert "PSNR ↑ (vs ideal)" in lines[0]
    # The same method twice: each row names its run folder.
    assert lines[2].startswith(f"| identity v1 [{first.name}] | **34.")
    # Run without predictions: its per-slice values cannot be checked, and the row says so.
    assert lines[3].startswith("| identity v1 [cli] (unverified) |")
    assert lines[4].startswith("| GSI")
    assert "not comparable" in r.output  # 2 vs 6 scored slices

    r = runner.invoke(app, ["compare", str(first), str(out)])
    assert r.exit_code == 0, r.output
    assert r.stdout.count("identity v1 [") == 4  # image and clinical tables, run named


# ----------------------------------------------------------------------------- Hub


@pytest.mark.slow  # a subprocess importing torch + datasets: ~6 s on 2 shared cores
def test_hub_repo_downloads_only_the_split_at_one_commit(dataset, tmp_path):
    """``--data org/name``: card + manifest + the test split's files at a pinned commit; the
    results record the repo and commit. Runs in a subprocess because huggingface_hub reads
    HF_ENDPOINT when it is imported."""
    import os
    import subprocess

    from artifactgsi.hub import sha256_file
    from tests.helpers import fakehub

    repo = "artifactgsi/ArtifactGSI-tiny"
    root = Path(__file__).resolve().parents[2]
    with fakehub.FakeHub() as hub:
        commit = hub.add_folder(repo, dataset)
        env = {k: v for k, v in os.environ.items()
               if not k.upper().startswith(("HF_", "HUGGINGFACE_", "ARTIFACTGSI_"))
               and not k.lower().endswith("_proxy")}
        env.update({"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf"),
                    "HF_TOKEN": hub.token, "HF_HUB_DISABLE_XET": "1",
                    "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1,localhost",
                    "PYTHONPATH": str(root)})
        code = textwrap.dedent(f"""
            import torch
            torch.set_num_threads(1)
            from benchmark.run import run_benchmark
            r = run_benchmark("identity", {repo!r}, "test", {str(tmp_path / "out")!r},
                              limit=2, lpips=None, clinical=False, figure=False, verbose=False)
            print("RESULT " + r.dataset.model_dump_json())
        """)
        proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=root,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
        got = json.loads(next(line[7:] for line in proc.stdout.splitlines()
                              if line.startswith("RESULT ")))
        assert got["repo_id"] == repo and got["revision"] == commit
        assert got["manifest_sha256"] == sha256_file(dataset / "manifest.json")
        assert [f["path"] for f in got["files"]] == ["pairs/test-00000-of-00001.parquet"]
        assert hub.requests_for("pairs/test-00000-of-00001.parquet", "GET")
        assert not hub.requests_for("pairs/train-00000-of-00001.parquet", "GET")


@pytest.mark.gpu
def test_cuda_run_matches_cpu(dataset, identity_run, tmp_path):
    from benchmark.run import run_benchmark

    _, cpu = identity_run
    gpu = run_benchmark("identity", str(dataset), "test", tmp_path, device="cuda", lpips=None,
                        figure=False, verbose=False)
    assert gpu.hardware.cuda_device and gpu.predictions.sha256 == cpu.predictions.sha256
    for a, b in zip(cpu.per_slice, gpu.per_slice, strict=True):
        for comp, vals in a.scores.items():
            for m, v in vals.items():
                w = b.scores[comp][m]
                assert (math.isnan(v) and math.isnan(w)) or w == pytest.approx(v, rel=1e-4,
                                                                               abs=1e-4), (comp, m)
