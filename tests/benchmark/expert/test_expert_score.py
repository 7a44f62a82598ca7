"""Scoring: simulated raters (test data only) through unblinding and Table 4, checked against
independent computations; and every kind of bad input refused with a named error."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from benchmark.expert.score import (
    DuplicateConflictError,
    ForeignPackError,
    MissingRatingsError,
    RatingsFormatError,
    ReaderConflictError,
    ScoreRangeError,
    UnknownIdError,
    WrongKeyError,
    score_pack,
)


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def rated(expert_pack, simulate, tmp_path_factory):
    """Three simulated readers' exports of the session pack."""
    return simulate(expert_pack.out, expert_pack.key_path,
                    tmp_path_factory.mktemp("ratings"), seed=1)


@pytest.fixture(scope="module")
def scored(expert_pack, rated, tmp_path_factory):
    return score_pack(expert_pack.out, rated, out=tmp_path_factory.mktemp("scores"),
                      n_boot=500)


def _first_showings(expert_pack, files):
    """{(reader, method, case): (readability, correctness)} computed straight from the
    exported CSVs and the key (first showings only)."""
    key = json.loads(expert_pack.key_path.read_text())
    rep = {it["item"]: it["repeat_of"] for rl in key["reading_lists"] for it in rl["items"]}
    out = {}
    for f in files:
        for r in _read(f):
            if rep[r["item"]] is None:
                meta = key["images"][r["image"]]
                out[(r["reader_id"], meta["method"], meta["case"])] = (
                    int(r["readability"]), int(r["correctness"]))
    return out


def test_means_cis_and_files(expert_pack, rated, scored):
    report, jp, mp = scored
    first = _first_showings(expert_pack, rated)
    for m in report.methods:
        for j, c in enumerate(report.criteria):
            vals = [v[j] for (_, mm, _), v in first.items() if mm == m]
            assert len(vals) == 9 * 3
            cell = report.table[m][c]
            assert cell["mean"] == pytest.approx(np.mean(vals))
            assert cell["ci_low"] <= cell["mean"] <= cell["ci_high"]
            assert 1 <= cell["ci_low"] and cell["ci_high"] <= 5
    saved = json.loads(jp.read_text())  # standard JSON (no NaN)
    assert saved["table"]["blendmar"]["readability"]["mean"] == pytest.approx(
        report.table["blendmar"]["readability"]["mean"])
    md = mp.read_text()
    assert "| blendmar |" in md and "ICC(2,1)" in md and "Krippendorff" in md


def test_paired_tests_find_the_simulated_differences(scored):
    """Simulated means differ by >= 1.4 points between identity and blendmar: Wilcoxon over 9
    cases finds it; Holm p >= raw p; identical ranking to the simulation."""
    report = scored[0]
    for c in report.criteria:
        pairs = {(o["a"], o["b"]): o for o in report.paired[c]}
        assert len(pairs) == 3
        big = pairs[("identity", "blendmar")]
        assert big["mean_diff"] < -1.0 and big["p_holm"] < 0.05 and big["significant"]
        for o in pairs.values():
            assert o["p"] <= o["p_holm"] <= 1.0
    means = {m: report.table[m]["readability"]["mean"] for m in report.methods}
    assert means["identity"] < means["smoothmar"] < means["blendmar"]


def test_inter_reader_agreement_matches_independent_computations(expert_pack, rated, scored,
                                                                 alpha_by_hand):
    report = scored[0]
    first = _first_showings(expert_pack, rated)
    readers = sorted({k[0] for k in first})
    targets = sorted({k[1:] for k in first})
    for j, c in enumerate(report.criteria):
        x = np.array([[first[(r, *t)][j] for r in readers] for t in targets], float)
        n, k = x.shape
        grand = x.mean()
        bms = k * ((x.mean(1) - grand) ** 2).sum() / (n - 1)
        jms = n * ((x.mean(0) - grand) ** 2).sum() / (k - 1)
        ems = ((x - x.mean(1, keepdims=True) - x.mean(0) + grand) ** 2).sum() / (
            (n - 1) * (k - 1))
        inter = report.inter[c]
        assert inter["ICC(2,1)"]["icc"] == pytest.approx(
            (bms - ems) / (bms + (k - 1) * ems + k * (jms - ems) / n))
        assert inter["ICC(2,k)"]["icc"] == pytest.approx((bms - ems) / (bms + (jms - ems) / n))
        assert inter["ICC(2,1)"]["ci_low"] <= inter["ICC(2,1)"]["icc"] <= \
            inter["ICC(2,1)"]["ci_high"]
        # Ordinal alpha with the 1-5 domain: every value 1..5 used here, so it equals the
        # hand computation over the observed values.
        if set(np.unique(x)) == {1, 2, 3, 4, 5}:
            assert inter["alpha_ordinal"] == pytest.approx(alpha_by_hand(x.T, "ordinal"))
        assert inter["alpha_ordinal"] > 0.5  # simulated readers agree


def test_poor_self_agreement_is_flagged(expert_pack, rated, tmp_path):
    """Reader 1 contradicts their first reading on every repeat: flagged; others are not."""
    key = json.loads(expert_pack.key_path.read_text())
    rep = {it["item"]: it["repeat_of"] for rl in key["reading_lists"] for it in rl["items"]}
    rows = _read(rated[0])
    by_item = {r["item"]: r for r in rows}
    for r in rows:
        if rep[r["item"]] is not None:
            for c in ("readability", "correctness"):
                first = int(by_item[rep[r["item"]]][c])
                r[c] = str(1 if first >= 3 else 5)
    bad = _write(tmp_path / "reader1.csv", rows)
    report, _, mp = score_pack(expert_pack.out, [bad, *rated[1:]], out=tmp_path / "s",
                               n_boot=200)
    assert report.intra["sim1"]["poor"] and report.intra["sim1"]["poor_criteria"]
    assert not report.intra["sim2"]["poor"]
    assert "POOR self-agreement" in mp.read_text()
    assert any("sim1" in n and "poor self-agreement" in n for n in report.notes)


def test_json_export_and_one_reader(expert_pack, rated, tmp_path):
    """The form's JSON export scores too; with one reader agreement is reported missing."""
    rows = _read(rated[0])
    js = tmp_path / "r.json"
    js.write_text(json.dumps({"format": "marbench-expert-ratings/1", "ratings": rows}))
    report, jp, _ = score_pack(expert_pack.out, [js], out=tmp_path / "s", n_boot=100)
    assert report.inter["readability"]["ICC(2,1)"] is None
    assert any("one reader" in n for n in report.notes)
    assert json.loads(jp.read_text())["inter_reader"]["readability"]["alpha_ordinal"] is None


def test_cli_score_prints_table_and_paper(expert_pack, rated, tmp_path):
    from benchmark.expert.cli import app

    r = CliRunner().invoke(app, ["score", str(expert_pack.out), *map(str, rated), "--paper",
                                 "--bootstrap", "200", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    for text in ("| blendmar |", "OSCNet+ | 2.15 | 3.90", "LGA | 4.47 | 4.23",
                 "LI | 1.58 | 2.87", "DuDoDp | 1.55 | 2.59", "OSCNet | 2.21 | 3.58"):
        assert text in r.output, text
    assert (tmp_path / "table4.json").is_file() and (tmp_path / "table4.md").is_file()


# ----------------------------------------------------------------------------- bad input


def test_missing_image_is_named(expert_pack, rated, tmp_path):
    rows = _read(rated[0])
    del rows[4]
    rows[7]["correctness"] = ""
    f = _write(tmp_path / "r1.csv", rows)
    with pytest.raises(MissingRatingsError, match=r"reader 'sim1' \(list 1\): 2 of 30 images "
                                                  r"unrated: position 5 \(readability, "
                                                  r"correctness\), position 9 \(correctness\)"):
        score_pack(expert_pack.out, [f, *rated[1:]], out=tmp_path / "s")


@pytest.mark.parametrize("value", ["6", "0", "abc", "2.5"])
def test_score_out_of_range_is_named(expert_pack, rated, tmp_path, value):
    rows = _read(rated[1])
    rows[2]["readability"] = value
    f = _write(tmp_path / "r2.csv", rows)
    with pytest.raises(ScoreRangeError, match=rf"r2.csv:4: readability = '{value}'"):
        score_pack(expert_pack.out, [rated[0], f], out=tmp_path / "s")


def test_ratings_of_another_pack_and_its_key_are_refused(expert_pack, expert_runs, expert_data,
                                                         simulate, rated, tmp_path):
    from benchmark.expert.pack import make_pack

    other = make_pack(expert_runs, tmp_path / "other", data=expert_data, cases=3, readers=1,
                      seed=3)
    theirs = simulate(other.out, other.key_path, tmp_path / "theirs")
    with pytest.raises(ForeignPackError, match=f"pack_id '{other.pack_id}', this pack is "
                                               f"'{expert_pack.pack_id}'"):
        score_pack(expert_pack.out, theirs, out=tmp_path / "s")
    # Ids from the other pack under this pack's id: unknown ids.
    rows = _read(theirs[0])
    for r in rows:
        r["pack_id"] = expert_pack.pack_id
    f = _write(tmp_path / "relabelled.csv", rows)
    with pytest.raises(UnknownIdError, match="is not in this pack"):
        score_pack(expert_pack.out, [f], out=tmp_path / "s")
    # The wrong key.
    with pytest.raises(WrongKeyError, match="sha256"):
        score_pack(expert_pack.out, rated, key=other.key_path, out=tmp_path / "s")


def test_edited_key_is_refused_even_with_its_hash_patched(expert_pack, rated, tmp_path):
    """Swapping two methods' labels in a copy of the key (and patching the manifest's hash)
    would unblind wrongly: the ids no longer follow from the secret."""
    import shutil

    copy = tmp_path / "pack"
    shutil.copytree(expert_pack.out, copy)
    key = json.loads((copy / "key.json").read_text())
    imgs = key["images"]
    a, b = [i for i, m in imgs.items() if m["kind"] == "rated"][:2]
    imgs[a]["method"], imgs[b]["method"] = imgs[b]["method"], imgs[a]["method"]
    if imgs[a]["method"] == imgs[b]["method"]:
        imgs[a]["method"] = "somethingelse"
    text = json.dumps(key, indent=1) + "\n"
    (copy / "key.json").write_text(text)
    man = json.loads((copy / "reader" / "manifest.json").read_text())
    import hashlib

    man["key_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    (copy / "reader" / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(WrongKeyError, match="does not follow from the key's secret"):
        score_pack(copy, rated, out=tmp_path / "s")


def test_duplicates_must_agree(expert_pack, rated, tmp_path):
    rows = _read(rated[0])
    same = _write(tmp_path / "again.csv", rows[:3])  # the same rows exported twice: fine
    report, _, _ = score_pack(expert_pack.out, [*rated, same], out=tmp_path / "s", n_boot=50)
    assert len(report.readers) == 3
    changed = [dict(r) for r in rows[:3]]
    changed[1]["correctness"] = str(6 - int(changed[1]["correctness"]) or 1)
    if changed[1]["correctness"] == rows[1]["correctness"]:
        changed[1]["correctness"] = "1" if rows[1]["correctness"] != "1" else "2"
    diff = _write(tmp_path / "changed.csv", changed)
    with pytest.raises(DuplicateConflictError, match=f"item '{rows[1]['item']}' correctness"):
        score_pack(expert_pack.out, [*rated, diff], out=tmp_path / "s")


def test_other_malformed_input(expert_pack, rated, tmp_path):
    rows = _read(rated[1])
    for r in rows:
        r["reader_id"] = "sim1"  # the same reader in lists 1 and 2
    f = _write(tmp_path / "dup_reader.csv", rows)
    with pytest.raises(ReaderConflictError, match=r"reader 'sim1' has ratings in lists \[1, 2\]"):
        score_pack(expert_pack.out, [rated[0], f], out=tmp_path / "s")
    rows = _read(rated[0])
    rows[0]["image"] = rows[1]["image"]
    f = _write(tmp_path / "swapped.csv", rows)
    with pytest.raises(UnknownIdError, match="is not the image shown as item"):
        score_pack(expert_pack.out, [f], out=tmp_path / "s")
    (tmp_path / "cols.csv").write_text("reader,score\nA,3\n")
    with pytest.raises(RatingsFormatError, match="missing column"):
        score_pack(expert_pack.out, [tmp_path / "cols.csv"], out=tmp_path / "s")
    with pytest.raises(FileNotFoundError, match="no pack manifest"):
        score_pack(tmp_path / "nopack", rated, out=tmp_path / "s")


def test_cli_score_errors_exit_2_with_the_error_name(expert_pack, rated, tmp_path):
    from benchmark.expert.cli import app

    rows = _read(rated[0])
    rows[0]["readability"] = "9"
    f = _write(tmp_path / "bad.csv", rows)
    r = CliRunner().invoke(app, ["score", str(expert_pack.out), str(f)])
    assert r.exit_code == 2
    assert "ScoreRangeError" in r.output and "bad.csv:2: readability = '9'" in r.output


def test_holm_equals_statsmodels():
    from statsmodels.stats.multitest import multipletests

    from benchmark.expert.score import holm

    rng = np.random.default_rng(0)
    for p in ([0.01, 0.04, 0.03, 0.2], [0.5, 0.5, 0.001], list(rng.uniform(0, 0.2, 10)),
              [1.0], [0.02, 0.02, 0.02]):
        np.testing.assert_allclose(holm(p), multipletests(p, method="holm")[1], rtol=0,
                                   atol=1e-12)
