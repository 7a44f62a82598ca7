"""The detectability study end to end on a controlled lesion study, with synthetic methods that
cheat: a copy of the input, a blob painter, a blur."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from artifactgsi.lesion_study import LesionPatient, LesionStudyConfig, write_lesion_study
from artifactgsi.phantoms.lesions import LesionType, SliceContext, place_lesions
from artifactgsi.physics.geometry import ImageGrid
from benchmark.detect.study import DetectionStudy, DetectSettings, run_study
from benchmark.method import MARInput, MARMethod, MAROutput

SIZE, PIXEL, SLICES = 64, 2.0, 3
TYPES = (LesionType("hyper", "soft", 10.0, 40.0),)
BANDS = ((0.0, 15.0), (15.0, 30.0), (30.0, 60.0))


def _disc(rr, cc, row, col, radius_px):
    """Anti-aliased disc (4 x 4 sub-samples) on the pixel grid."""
    off = (np.arange(4) + 0.5) / 4 - 0.5
    acc = np.zeros(rr.shape)
    for dy in off:
        for dx in off:
            acc += (rr + dy - row) ** 2 + (cc + dx - col) ** 2 <= radius_px ** 2
    return acc / 16


def _patient(i: int, cfg: LesionStudyConfig, noise_hu: float) -> LesionPatient:
    """A body of soft tissue with random fat / dense ellipses (anatomy), a metal rod, streaks
    that fade with distance from it, white noise; lesions placed by the library."""
    rng = np.random.default_rng([7, i])
    grid = ImageGrid((SIZE, SIZE), PIXEL, (0.0, 0.0))
    rr, cc = np.mgrid[0:SIZE, 0:SIZE].astype(float)
    c = (SIZE - 1) / 2
    r = np.hypot(rr - c, cc - c)
    ideal = np.where(r < 30, 40.0, -1000.0)
    for _ in range(6):  # anatomy the observer must not mistake for lesions
        y0, x0 = rng.uniform(12, 52, 2)
        a, b = rng.uniform(2, 6, 2)
        ideal += np.where(((rr - y0) / a) ** 2 + ((cc - x0) / b) ** 2 < 1,
                          rng.choice([-80.0, 80.0]), 0.0) * (r < 30)
    metal = r < 3
    ideal[metal] = 3000.0
    soft = ((r < 28) & ~metal).astype(np.float32)
    z = np.arange(SLICES) * 2.5
    contexts = [SliceContext(s, float(z[s]), {"soft_tissue": soft}, metal) for s in range(SLICES)]
    lesions = place_lesions(contexts, cfg.centre_slices(), grid, cfg.lesion_types,
                            cfg.bands_mm, rng, kev=100.0, roi_mm=cfg.roi_mm, per_slice=3,
                            id_prefix=f"SYN{i:03d}-L")
    present = np.repeat(ideal[None], SLICES, 0)
    for les in lesions:
        present[les.slice_index] += les.contrast_hu * _disc(rr, cc, les.row, les.col,
                                                             les.radius_mm / PIXEL)
    ideal_s = np.stack([np.repeat(ideal[None], SLICES, 0), present])
    theta = np.arctan2(rr - c, cc - c)
    streak = 60.0 * np.cos(6 * theta) * np.exp(-np.maximum(r - 3, 0) / 8.0) * (r < 30)

    def scan(sd: float) -> np.ndarray:
        return ideal_s + streak + rng.normal(0, sd, ideal_s.shape) * (r < 30)

    labels = np.repeat(metal[None].astype(np.uint8), SLICES, 0)
    return LesionPatient(
        patient_id=f"SYN{i:03d}", implant_type="spinal_fixation", body_region="lumbar_spine",
        seed=i, pixel_mm=PIXEL, grid={"shape": [SIZE, SIZE], "pixel_mm": PIXEL},
        z_mm=z, ordinary=scan(noise_hu).astype(np.float32),
        gsi=(ideal_s + 0.3 * streak + rng.normal(0, noise_hu / 2, ideal_s.shape)
             * (r < 30)).astype(np.float32),
        ideal=ideal_s.astype(np.float32), labels=labels, lesions=lesions)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    cfg = LesionStudyConfig(patients=12, slices=SLICES, size=SIZE, margin=1, spacing=2,
                            lesion_types=TYPES, bands_mm=BANDS, roi_mm=24.0)
    out = tmp_path_factory.mktemp("detect") / "lesions"
    write_lesion_study(cfg, (_patient(i, cfg, 40.0) for i in range(cfg.patients)), out)
    return out


SETTINGS = DetectSettings(bootstrap=300, min_lesions=6)


class Copy(MARMethod):
    """Returns its input."""

    name = "copy"

    def reduce(self, batch: MARInput) -> MAROutput:
        return MAROutput(image=batch.ordinary.clone())


class Blur(MARMethod):
    """Gaussian blur of the input (sigma in pixels): less noise, lesions smeared."""

    name = "blur"

    def __init__(self, sigma_px: float = 3.0) -> None:
        self.sigma_px = sigma_px

    def reduce(self, batch: MARInput) -> MAROutput:
        img = batch.ordinary.numpy()
        out = np.stack([ndimage.gaussian_filter(im, (0, self.sigma_px, self.sigma_px))
                        for im in img])
        return MAROutput(image=torch.from_numpy(out.astype(np.float32)))


class BlobPainter(MARMethod):
    """Paints +40 HU lesion-sized blobs at given pixels of given slices, in whatever scan it is
    given (``spots`` keyed by the patient id the method sees and the slice): where the
    lesion-absent scan has no lesion, a hallucination."""

    name = "blobs"

    def __init__(self, spots: dict | None = None, radius_px: float = 2.5) -> None:
        self.spots = spots or {}
        self.radius_px = radius_px

    def reduce(self, batch: MARInput) -> MAROutput:
        out = batch.ordinary.clone()
        h, w = out.shape[2:]
        rr, cc = np.mgrid[0:h, 0:w].astype(float)
        for i, (pid, s) in enumerate(zip(batch.patient_id, batch.slice_index, strict=True)):
            for row, col in self.spots.get((pid, int(s)), []):
                out[i, 0] += torch.from_numpy(40.0 * _disc(rr, cc, row, col, self.radius_px)
                                              .astype(np.float32))
        return MAROutput(image=out)


def _spots(ds: DetectionStudy, scans=("absent", "present")) -> dict:
    spots: dict = {}
    for les, pi in zip(ds.lesions, ds.lesion_patient, strict=True):
        for scan in scans:
            key = (f"{ds.patients[pi]}-{scan}", les.slice_index)
            spots.setdefault(key, []).append((les.row, les.col))
    return spots


@pytest.fixture(scope="module")
def rows(study):
    ds = DetectionStudy(study, SETTINGS)
    out = {r: ds.score_reference(r) for r in ("ideal", "gsi", "input")}
    out["identity"] = ds.score_method("identity")  # through the registry
    out["copy"] = ds.score_method(Copy())
    out["blur"] = ds.score_method(Blur(3.0))
    out["blobs"] = ds.score_method(BlobPainter(_spots(ds)))
    out["blobs_absent_only"] = ds.score_method(BlobPainter(_spots(ds, ("absent",))),
                                               label="blobs_absent_only")
    return ds, out


def test_the_ideal_row_is_perfect(rows):
    ds, r = rows
    est = ds.estimates(r["ideal"])
    assert est["detect_auc"] == 1.0
    assert est["halluc_fpf_near"] == 0.0 and est["halluc_area_near"] == 0.0


def test_a_method_that_copies_its_input_scores_as_the_input(rows):
    ds, r = rows
    for name in ("identity", "copy"):
        np.testing.assert_array_equal(r[name].t_present, r["input"].t_present)
        np.testing.assert_array_equal(r[name].t_absent, r["input"].t_absent)
        np.testing.assert_array_equal(r[name].false_positive, r["input"].false_positive)
        assert ds.estimates(r[name]) == ds.estimates(r["input"])
        assert ds.estimates(r[name])["halluc_area_near"] == 0.0


def test_detectability_falls_towards_the_metal_and_gsi_helps(rows):
    ds, r = rows
    est = ds.estimates(r["input"])
    assert est["auc/all/0-15mm"] < est["auc/all/30-60mm"]
    assert ds.estimates(r["gsi"])["auc/all/0-15mm"] > est["auc/all/0-15mm"]


def test_a_blurring_method_loses_auc(rows):
    ds, r = rows
    blur, ident = ds.estimates(r["blur"]), ds.estimates(r["identity"])
    assert blur["detect_auc"] < ident["detect_auc"] - 0.05


def test_a_blob_painting_method_is_caught(rows):
    ds, r = rows
    blobs, ident = ds.estimates(r["blobs"]), ds.estimates(r["identity"])
    # Blobs where the input shows nothing lesion-like, at the same places in both scans: the
    # observer learns the lesion and reads the painted blobs as lesions.
    assert blobs["halluc_fpf_near"] > ident["halluc_fpf_near"] + 0.5
    assert blobs["halluc_area_near"] > 0.005
    # Blobs only where there is no lesion: lesions can no longer be told apart at all.
    only = ds.estimates(r["blobs_absent_only"])
    assert only["detect_auc"] < 0.6 < ident["detect_auc"]
    assert only["halluc_fpf_near"] > ident["halluc_fpf_near"]
    report = ds.report(list(r.values()), reference="identity")
    test = report["paired"]["blobs"]["halluc_fpf_near"]
    assert test["delta"] > 0 and test["ci"][0] > 0  # worse, and the interval says so
    assert test["p"] > 0.95  # no evidence that it is better


def test_cho_auc_of_a_row_matches_mann_whitney_on_its_statistics(rows):
    from scipy import stats

    ds, r = rows
    row = r["input"]
    for g in ds.scored_groups:
        idx = ds.group_index[g]
        tp, ta = row.t_present[idx], row.t_absent[idx]
        ok = np.isfinite(tp) & np.isfinite(ta)
        u = stats.mannwhitneyu(tp[ok], ta[ok]).statistic
        assert ds.estimates(row)[f"auc/{g[0]}/{g[1]}"] == pytest.approx(
            u / ok.sum() ** 2, abs=1e-12)


def test_bootstrap_intervals_contain_the_estimate(rows):
    ds, r = rows
    block = ds.summarize(r["input"])
    for m, ci in block["intervals"].items():
        v = block["summary"][m]
        if ci is not None and v is not None and math.isfinite(v):
            assert ci[0] - 1e-9 <= v <= ci[1] + 1e-9


@pytest.mark.slow
def test_run_study_writes_json_table_and_figure(study, tmp_path):
    out = tmp_path / "detect"
    report = run_study(study, [("identity", {}), (Blur(2.0), {})], out,
                       DetectSettings(bootstrap=50, min_lesions=6))
    assert report["reference"] == "identity"
    saved = json.loads((out / "detect.json").read_text())
    assert [r["name"] for r in saved["rows"]] == ["ideal", "gsi", "identity", "blur"]
    assert "| identity |" in (out / "detect.md").read_text()
    assert (out / "detect.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_cli_run_and_option_routing(study, tmp_path):
    from typer.testing import CliRunner

    from benchmark.detect.cli import app, split_method_options

    blur = f"{Blur.__module__}:Blur"
    assert split_method_options(["identity", blur], ["sigma_px=2"]) == [
        ("identity", {}), (blur, {"sigma_px": 2})]
    assert split_method_options(["identity", blur], [f"{blur}.sigma_px=1.5"])[1][1] == {
        "sigma_px": 1.5}
    with pytest.raises(ValueError, match="takes"):
        split_method_options(["identity"], ["weights=w"])
    res = CliRunner().invoke(app, ["run", "--study", str(study), "--method", "identity",
                                   "--out", str(tmp_path / "o"), "--bootstrap", "20"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "detect.json").is_file()
    res = CliRunner().invoke(app, ["run", "--study", str(tmp_path / "missing"), "--method",
                                   "identity"])
    assert res.exit_code == 2 and "study.json" in res.output


@pytest.mark.slow
def test_results_json_carries_the_registry_detect_metrics(study, tiny_built, tmp_path):
    from typer.testing import CliRunner

    from benchmark.cli import app
    from benchmark.compare import comparison_table, table_columns
    from benchmark.metrics.registry import metrics_in_group
    from benchmark.results import Results
    from benchmark.run import run_benchmark

    res = run_benchmark("identity", str(tiny_built.built), "test", tmp_path / "id", lpips=None,
                        clinical=False, figure=False, verbose=False, lesions=study)
    declared = metrics_in_group("detect")
    assert res.detect is not None and res.detect.available
    assert set(res.detect.summary) == set(declared)
    for name, spec in declared.items():
        assert res.metrics[name].group == "detect"
        assert res.metrics[name].higher_is_better == spec.higher_is_better
    # The same numbers as the study gives the same method.
    ds = DetectionStudy(study)
    est = ds.estimates(ds.score_method("identity"))
    for name in declared:
        assert res.detect.summary[name] == pytest.approx(est[name])
    again = Results.load(tmp_path / "id")
    assert again.detect == res.detect
    # Study-level metrics stay out of the per-slice table ...
    assert not any(g == "detect" for g, _, _ in table_columns(again))
    assert "AUC" not in comparison_table([("id", again)]).headers
    # ... and have their own.
    out = CliRunner().invoke(app, ["compare", str(tmp_path / "id"), "--table", "detect"])
    assert out.exit_code == 0, out.output
    assert "AUC near" in out.output and "| identity |" in out.output
    # On the board: a task-based table with the recorded declarations and values.
    from leaderboard.board import Board
    from leaderboard.cli import app as board_app
    from leaderboard.render import render_board

    board = tmp_path / "board"
    assert CliRunner().invoke(board_app, ["init", str(board), "--reference",
                                          str(tmp_path / "id")]).exit_code == 0
    (tmp_path / "id" / "card.yaml").write_text(
        "name: identity\nauthors: [Test]\ncode: https://example.org\nlicence: MIT\n"
        "track: classic\nno_test_patients: true\n")
    res = CliRunner().invoke(board_app, ["submit", str(tmp_path / "id"), "--board", str(board)])
    assert res.exit_code == 0, res.output
    render_board(Board.open(board), tmp_path / "site", cd=False)
    html = (tmp_path / "site" / "index.html").read_text()
    table = html.split("Task-based scores (lesion study)")[1].split("</table>")[0]
    for name, spec in declared.items():
        assert f'title="{name}: ' in table and spec.title in table
    assert f"{again.detect.summary['detect_auc']:.4f}" in table
    plain = run_benchmark("identity", str(tiny_built.built), "test", tmp_path / "plain",
                          lpips=None, clinical=False, figure=False, verbose=False)
    assert plain.detect is None
    out = CliRunner().invoke(app, ["compare", str(tmp_path / "plain"), "--table", "detect"])
    assert out.exit_code == 2 and "--lesions" in out.output
