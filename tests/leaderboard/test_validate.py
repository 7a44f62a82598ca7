"""Submission validation: a clean run passes; each kind of tampering is refused by name."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from benchmark.results import Results
from leaderboard.validate import validate_run
from tests.helpers.board import SLICES, board_config, summary_np, write_predictions


def codes(run: Path) -> set[str]:
    _, problems = validate_run(run, board_config())
    return {p.code for p in problems}


def edit(run: Path, fn) -> None:  # type: ignore[no-untyped-def]
    """Change the results through the schema (as a careful cheater would) and save."""
    r = Results.load(run)
    fn(r)
    Results.model_validate(r.model_dump()).save(run / "results.json")


def resummarize(r: Results) -> None:
    """Make the summaries agree with the (edited) per-slice values, so only the deeper checks
    can notice."""
    comp = r.comparisons["method_vs_gsi"]
    for m in comp.summary:
        comp.summary[m] = summary_np([s.scores["method_vs_gsi"][m] for s in r.per_slice], True)
    comp.n_slices = len(r.per_slice)
    r.dataset.n_slices_scored = len(r.per_slice)


def test_clean_run_is_valid(make_run):
    run = make_run("good")
    results, problems = validate_run(run, board_config())
    assert problems == []
    assert results is not None and results.method.name == "good"


def test_edited_summary_is_refused(make_run):
    run = make_run("good")
    edit(run, lambda r: setattr(r.comparisons["method_vs_gsi"].summary["psnr"], "mean",
                                r.comparisons["method_vs_gsi"].summary["psnr"].mean + 0.5))
    _, problems = validate_run(run, board_config())
    assert {p.code for p in problems} == {"summary_mismatch"}
    assert "['method_vs_gsi'].summary['psnr'].mean" in problems[0].message


def test_edited_slice_value_is_refused(make_run):
    run = make_run("good")

    def bump(r: Results) -> None:
        r.per_slice[3].scores["method_vs_gsi"]["ssim"] += 1e-4  # well above 1e-6

    edit(run, bump)
    assert codes(run) == {"summary_mismatch"}


def test_summary_within_tolerance_is_accepted(make_run):
    run = make_run("good")

    def nudge(r: Results) -> None:
        s = r.comparisons["method_vs_gsi"].summary["psnr"]
        s.mean = s.mean * (1 + 1e-9)  # float noise of another machine's summation

    edit(run, nudge)
    assert codes(run) == set()


def test_dropped_slice_is_refused(make_run):
    run = make_run("good")

    def drop(r: Results) -> None:
        del r.per_slice[5]
        resummarize(r)

    edit(run, drop)
    _, problems = validate_run(run, board_config())
    # The predictions still hold 12 rows for 11 scored slices: that is named too.
    assert {p.code for p in problems} == {"missing_slice", "predictions_rows"}
    p, s, _ = SLICES[5]
    assert f"{p} slice {s}" in next(x for x in problems if x.code == "missing_slice").message


def test_duplicated_slice_is_refused(make_run):
    run = make_run("good")

    def dup(r: Results) -> None:
        r.per_slice.append(r.per_slice[0].model_copy(deep=True))
        resummarize(r)

    edit(run, dup)
    assert codes(run) == {"duplicate_slice", "predictions_rows"}


def test_prediction_file_not_matching_its_sha256_is_refused(make_run):
    run = make_run("good", seed=1)
    write_predictions(run / "predictions/test-00000-of-00001.parquet",
                      [(p, s) for p, s, _ in SLICES], seed=2)
    _, problems = validate_run(run, board_config())
    assert [p.code for p in problems] == ["predictions_sha256"]
    assert "test-00000-of-00001.parquet" in problems[0].message


def test_predictions_missing_a_slice_are_refused(make_run):
    """A predictions file whose sha256 was updated but that lacks a test slice."""
    run = make_run("good")
    pred = run / "predictions/test-00000-of-00001.parquet"
    sha, n = write_predictions(pred, [(p, s) for p, s, _ in SLICES[:-1]], seed=0)
    edit(run, lambda r: setattr(r, "predictions", r.predictions.model_copy(
        update={"sha256": sha, "bytes": n})))
    assert codes(run) == {"predictions_rows"}


@pytest.mark.parametrize(("field", "value", "code"), [
    ("revision", "f" * 40, "dataset_revision"),
    ("manifest_sha256", "cd" * 32, "manifest_sha256"),
    ("split", "train", "dataset_split"),
])
def test_other_dataset_is_refused(make_run, field, value, code):
    run = make_run("good")
    edit(run, lambda r: setattr(r.dataset, field, value))
    assert codes(run) == {code}


def test_other_protocol_is_refused(make_run):
    run = make_run("good")
    edit(run, lambda r: setattr(r.protocol, "version", "marbench-v0"))
    _, problems = validate_run(run, board_config())
    assert [p.code for p in problems] == ["protocol"]
    assert "marbench-v0" in problems[0].message


def test_nan_is_refused_even_with_consistent_summaries(make_run):
    run = make_run("good")

    def nan(r: Results) -> None:
        r.per_slice[2].scores["method_vs_gsi"]["psnr"] = math.nan
        resummarize(r)  # n_nan = 1: the summary check alone would pass

    edit(run, nan)
    # The file stores NaN as the JSON string "NaN" and reads it back as a float NaN.
    assert math.isnan(Results.load(run).per_slice[2].scores["method_vs_gsi"]["psnr"])
    _, problems = validate_run(run, board_config())
    assert {p.code for p in problems} == {"non_finite"}
    assert "P000 slice 2" in problems[0].message


def test_nan_with_stale_summary_gives_both_reasons(make_run):
    run = make_run("good")
    edit(run, lambda r: r.per_slice[0].scores["method_vs_gsi"].__setitem__("ssim", math.nan))
    assert codes(run) == {"non_finite", "summary_mismatch"}


def test_missing_card_and_broken_json(make_run):
    run = make_run("good")
    (run / "card.yaml").unlink()
    assert codes(run) == {"card"}
    (run / "results.json").write_text("{not json")
    assert codes(run) == {"card", "schema"}


def test_card_must_state_no_test_patient(make_run):
    run = make_run("good")
    text = (run / "card.yaml").read_text().replace("no_test_patients: true",
                                                   "no_test_patients: false")
    (run / "card.yaml").write_text(text)
    _, problems = validate_run(run, board_config())
    assert [p.code for p in problems] == ["card"]
    assert "no_test_patients" in problems[0].message


def test_summary_reference_is_numpy():
    """The fixture's summaries (numpy) and the validator's rule agree on a hand case."""
    s = summary_np([1.0, 2.0, 4.0, float("nan")], True)
    assert (s.mean, s.median, s.n_finite, s.n_nan) == (7 / 3, 2.0, 3, 1)
    assert s.std == pytest.approx(np.std([1.0, 2.0, 4.0]))


def test_shipped_method_cards_load_and_name_a_registered_method():
    """`make board` / `make standard` submit each run with leaderboard/cards/<method>.yaml:
    every shipped card passes the card's own validation and belongs to a registered method."""
    from benchmark.registry import list_methods
    from leaderboard.card import MethodCard

    cards = sorted((Path(__file__).resolve().parents[2] / "leaderboard" / "cards").glob("*.yaml"))
    assert {c.stem for c in cards} >= {"identity", "li", "nmar", "lga", "oscnet"}
    methods = {m.name for m in list_methods()}
    for path in cards:
        card = MethodCard.load(path)
        assert card.no_test_patients and path.stem in methods, path
