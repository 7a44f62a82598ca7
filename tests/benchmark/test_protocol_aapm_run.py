"""`marbench run --protocol aapm-ctmar-2024` end to end: an AAPM-format folder written here is
imported, scored, and gives the same per-case numbers as the same images scored as arrays;
rescore, compare and the board know the protocol; bad input gets named errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from artifactgsi.formats.aapm import AAPM_FOV_MM, import_aapm, write_aapm_case
from benchmark.cli import app
from benchmark.data import DatasetError
from benchmark.method import MARInput
from benchmark.protocol.aapm_run import STRUCTURES_FILE, read_structures
from benchmark.protocol.aapm_scoring import case_anchors, score_case
from benchmark.registry import create_method
from benchmark.results import Results, verify_results
from benchmark.run import run_benchmark

N = 64


def make_case(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(with metal, without metal, metal): integer HU (the dataset stores int16 HU), a body
    with a fat ring, a bone, noise, and streaks around a metal rod that moves per case."""
    rng = np.random.default_rng(100 + i)
    yy, xx = np.mgrid[:N, :N]
    r0 = np.hypot(yy - 32, xx - 32)
    ref = np.full((N, N), -1000.0)
    ref[r0 <= 29] = -100.0
    ref[r0 <= 25] = 40.0
    ref[np.hypot(yy - 32, xx - 17) <= 6] = 800.0
    ref = np.rint(ref + rng.normal(0, 8, ref.shape) * (r0 <= 29))
    cy, cx = 31 + i, 43
    metal = np.hypot(yy - cy, xx - cx) <= 2.2
    ang = np.arctan2(yy - cy, xx - cx)
    streaks = 250 * np.cos(6 * ang) * np.exp(-np.hypot(yy - cy, xx - cx) / 10) * (r0 <= 29)
    unc = np.rint(ref + streaks + rng.normal(0, 5, ref.shape) * (r0 <= 29))
    unc[metal] = 7000.0
    return unc.astype(np.float32), ref.astype(np.float32), metal


@pytest.fixture(scope="module")
def aapm_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("aapm")
    cases = [make_case(i) for i in range(3)]
    for i, (unc, ref, metal) in enumerate(cases):
        write_aapm_case(root / "src", "body", i, unc, ref, metal)
    import_aapm(root / "src", root / "data", image_size=N)
    return root, cases


@pytest.fixture(scope="module")
def runs(aapm_data):
    """identity, then LI (which finds the anchors in the reference cache)."""
    root, _ = aapm_data
    return {method: run_benchmark(method, root / "data", config="aapm",
                                  out=root / f"run-{method}", protocol="aapm-ctmar-2024",
                                  verbose=False, reference_cache=root / "refcache")
            for method in ("identity", "li")}


def _arrays_scores(cases, method: str) -> list[dict[str, float]]:
    """The same images scored as arrays: the method and NMAR made through the registry on
    one batch of the three cases, rounded to integer HU, then the protocol's functions."""
    inp = MARInput(
        ordinary=torch.from_numpy(np.stack([c[0] for c in cases]))[:, None],
        metal_mask=torch.from_numpy(np.stack([c[2] for c in cases]))[:, None],
        pixel_spacing_mm=torch.full((3,), AAPM_FOV_MM["body"] / N),
        implant_type=["none"] * 3, patient_id=[f"training_body_{i}" for i in range(3)],
        slice_index=[0, 0, 0])

    def run(name: str) -> np.ndarray:
        with torch.no_grad():
            img = create_method(name).reduce(inp.to("cpu")).image
        return img.round().clamp(-32768, 32767)[:, 0].numpy().astype(np.float64)

    nmar, pred = run("nmar"), run(method)
    out = []
    for i, (unc, ref, metal) in enumerate(cases):
        a = case_anchors(ref, unc, nmar[i], metal, AAPM_FOV_MM["body"] / N)
        out.append(score_case(pred[i], ref, a))
    return out


@pytest.mark.parametrize("method", ["identity", "li"])
def test_imported_folder_scores_as_the_arrays_do(runs, aapm_data, method):
    _, cases = aapm_data
    res = runs[method]
    assert res.protocol.version == "aapm-ctmar-2024"
    assert res.protocol.settings["run"]["reference"] == "reference"
    assert res.protocol.settings["run"]["anchor"]["name"] == "nmar"
    assert list(res.comparisons) == ["method_vs_reference"]
    want = _arrays_scores(cases, method)
    for rec, w in zip(res.per_slice, want, strict=True):
        got = rec.scores["method_vs_reference"]
        assert set(got) == set(w)
        for k, v in w.items():
            if math.isnan(v):
                assert math.isnan(got[k]), k
            else:
                assert got[k] == pytest.approx(v, rel=1e-12, abs=1e-12), (rec.patient_id, k)
    s = res.comparisons["method_vs_reference"].summary["aapm_score"]
    assert s.mean == pytest.approx(np.mean([w["aapm_score"] for w in want]))
    assert 0.0 <= s.mean <= 4.0


def test_anchors_are_made_once_and_shared_through_the_reference_cache(runs):
    # identity made the three cases' anchors (NMAR, structures, axes); LI reused them, and
    # its scores equal a fresh computation (test_imported_folder_scores_as_the_arrays_do).
    assert runs["identity"].timing.reference_states_computed == 3
    assert runs["li"].timing.reference_states_reused == 3
    assert runs["li"].timing.reference_states_computed == 0


def test_uncorrected_scores_4_and_li_does_better_on_streaks(runs):
    ident = runs["identity"].comparisons["method_vs_reference"].summary
    li = runs["li"].comparisons["method_vs_reference"].summary
    for k in ("aapm_score_ct", "aapm_score_streak", "aapm_score_ssim"):
        assert ident[k].mean == pytest.approx(4.0)  # the uncorrected image is the 4 anchor
    assert li["aapm_score_streak"].mean < ident["aapm_score_streak"].mean


def test_structures_are_stored_with_the_run_and_drawn(runs, aapm_data):
    root, cases = aapm_data
    run_dir = root / "run-identity"
    for name in (STRUCTURES_FILE, "structures.png", "figure.png", "results.json",
                 "per_slice.csv"):
        assert (run_dir / name).is_file(), name
    stored = read_structures(run_dir)
    assert set(stored) == {(f"training_body_{i}", 0) for i in range(3)}
    st, doc = stored[("training_body_1", 0)]
    np.testing.assert_array_equal(st.metal, cases[1][2])
    assert st.noise_roi.any() and st.streak_roi.any() and st.target.any()
    assert len(doc["knots"]["aapm_ct_rmse_hu"]) == 5
    assert doc["noise_baseline_from"] == "reference"
    check = verify_results(Results.load(run_dir), run_dir)
    assert check.verified, check.problems


def test_rescore_reproduces_an_aapm_run(runs, aapm_data):
    from benchmark.rescore import rescore

    root, _ = aapm_data
    again = rescore(root / "run-li", root / "data", root / "rescored", verbose=False,
                    reference_cache=None)  # anchors made afresh: the same numbers
    assert again.protocol.version == "aapm-ctmar-2024"
    for a, b in zip(runs["li"].per_slice, again.per_slice, strict=True):
        for k, v in a.scores["method_vs_reference"].items():
            w = b.scores["method_vs_reference"][k]
            assert (math.isnan(v) and math.isnan(w)) or v == pytest.approx(w, rel=1e-12), k


def test_compare_shows_the_scores_and_the_challenges_rows(runs, aapm_data):
    root, _ = aapm_data
    res = CliRunner().invoke(app, ["compare", str(root / "run-identity"),
                                   str(root / "run-li"), "--markdown", "--paper"])
    assert res.exit_code == 0, res.output
    assert "CT# ↓" in res.output and "final ↓" in res.output
    assert "NMAR reference" in res.output and "| 1.82 |" in res.output
    assert "0.9600" in res.output  # the winner
    assert "not the numbers" in res.output


def test_marbench_v1_refuses_data_without_gsi_by_name(aapm_data):
    root, _ = aapm_data
    with pytest.raises(DatasetError, match="no GSI images.*--protocol aapm-ctmar-2024"):
        run_benchmark("identity", root / "data", config="aapm", out=root / "v1",
                      verbose=False)


def test_unknown_protocol_is_a_named_error(aapm_data):
    from benchmark.protocol import UnknownProtocolError

    root, _ = aapm_data
    with pytest.raises(UnknownProtocolError, match="unknown protocol 'aapm'"):
        run_benchmark("identity", root / "data", config="aapm", protocol="aapm",
                      verbose=False)
    res = CliRunner().invoke(app, ["run", "--method", "identity", "--data",
                                   str(root / "data"), "--config", "aapm", "--protocol",
                                   "aapm-2024"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "did you mean 'aapm-ctmar-2024'? Known protocols" in text


def test_a_board_accepts_only_the_protocols_it_declares(runs, aapm_data):
    from leaderboard.board import config_from_results
    from leaderboard.validate import SubmissionInvalid, validate_results

    root, _ = aapm_data
    res = Results.load(root / "run-li")
    board = config_from_results(Results.load(root / "run-identity"), "AAPM board",
                                metrics=["method_vs_reference.aapm_score"])
    assert board.protocols == ["aapm-ctmar-2024"]
    problems = validate_results(res, root / "run-li", board)
    assert not [p for p in problems if p.code == "protocol"]
    v1_board = board.model_copy(update={"protocols": ["marbench-v1"]})
    problems = validate_results(res, root / "run-li", v1_board)
    assert [p.code for p in problems] == ["protocol"]
    assert "'aapm-ctmar-2024' is not accepted by this board (marbench-v1)" in \
        problems[0].message
    err = SubmissionInvalid("run-li", problems)
    assert "[protocol]" in str(err)


@pytest.mark.slow
def test_pairs_data_is_scored_against_the_ideal_image(tmp_path, write_tiny_pairs,
                                                      isolated_datasets_cache):
    data = write_tiny_pairs(tmp_path / "pairs")
    res = run_benchmark("identity", data, out=tmp_path / "run", protocol="aapm-ctmar-2024",
                        verbose=False)
    assert list(res.comparisons) == ["method_vs_ideal"]
    comp = res.comparisons["method_vs_ideal"]
    # Only the simulated patient has an ideal image: its 3 slices are scored.
    assert comp.n_slices == 3 and res.dataset.n_slices_scored == 6
    assert res.protocol.settings["run"]["noise_baseline"].startswith("uncorrected")
    stored = read_structures(tmp_path / "run")
    assert all(doc["noise_baseline_from"] == "uncorrected" for _, doc in stored.values())
    assert comp.summary["aapm_score_ct"].mean == pytest.approx(4.0)
