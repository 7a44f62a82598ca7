"""Reading packs: blinding, balanced reading lists with repeats, stratified and seeded case
choice, the images themselves (windows, int16), the key kept apart, errors that teach."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from benchmark.expert.pack import PackError, add_repeats, make_pack, select_cases


def _png_chunks(path: Path) -> list[tuple[str, bytes]]:
    """(type, data) of every chunk of a PNG file."""
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", path
    out, i = [], 8
    while i < len(raw):
        (n,) = struct.unpack(">I", raw[i:i + 4])
        out.append((raw[i + 4:i + 8].decode("ascii"), raw[i + 8:i + 8 + n]))
        i += 12 + n
    return out


def test_reader_material_does_not_reveal_the_methods(expert_pack, expert_runs):
    """Every method name, run folder, results path and predictions hash is absent from the
    form, the manifest, every file name and every PNG's chunks (only pixel chunks exist)."""
    from benchmark.results import Results

    key = json.loads(expert_pack.key_path.read_text())
    secrets_ = set()
    for run in expert_runs:
        res = Results.load(run)
        secrets_ |= {res.method.name, res.method.target, str(run), str(run / "results.json"),
                     run.name, res.predictions.sha256, res.predictions.sha256[:12]}
    secrets_ |= {m["label"] for m in key["methods"]} | {m["results"] for m in key["methods"]}
    secrets_ |= {key["secret_hex"]}
    needles = sorted({s.lower() for s in secrets_})
    files = sorted(p for p in expert_pack.reader_dir.rglob("*") if p.is_file())
    assert {p.suffix for p in files} == {".html", ".json", ".png", ".npy"}
    for p in files:
        name = str(p.relative_to(expert_pack.out)).lower()
        assert not [s for s in needles if s in name], p
        if p.suffix in (".html", ".json"):
            text = p.read_text(encoding="utf-8").lower()
            assert not [s for s in needles if s in text], f"{p} names a method or run"
        if p.suffix == ".png":
            chunks = _png_chunks(p)
            assert [c for c, _ in chunks if c not in ("IDAT",)] == ["IHDR", "IEND"], \
                f"{p} carries metadata chunks {[c for c, _ in chunks]}"
    # The key (the only place with the methods) is outside the reader folder.
    assert expert_pack.key_path.parent == expert_pack.out
    assert expert_pack.reader_dir not in expert_pack.key_path.parents
    manifest = json.loads(expert_pack.manifest_path.read_text())
    assert manifest["key_sha256"] == hashlib.sha256(expert_pack.key_path.read_bytes()).hexdigest()
    # The manifest lists images sorted by id, not grouped by method.
    ids = [im["id"] for im in manifest["images"]]
    assert ids == sorted(ids)


def test_reading_lists_are_balanced_with_spaced_repeats(expert_pack):
    """Every reader sees each (case, method) once in the base list; each method equally often
    in each slot of the method cycles (9 cases = 3 Latin squares of 3); a cycle never shows a
    case twice; repeats (about 10 %) show an earlier image again, well after it."""
    key = json.loads(expert_pack.key_path.read_text())
    images = key["images"]
    n_cases, methods = len(key["cases"]), [m["label"] for m in key["methods"]]
    orders = []
    for rl in key["reading_lists"]:
        items = rl["items"]
        base = [it for it in items if it["repeat_of"] is None]
        reps = [it for it in items if it["repeat_of"] is not None]
        pairs = Counter((images[it["image"]]["case"], images[it["image"]]["method"])
                        for it in base)
        assert len(pairs) == n_cases * len(methods) and set(pairs.values()) == {1}
        for slot in range(len(methods)):
            counts = Counter(images[it["image"]]["method"] for it in base if it["slot"] == slot)
            assert counts == {m: n_cases // len(methods) for m in methods}, (slot, counts)
        for cycle in range(n_cases):
            cases = [images[it["image"]]["case"] for it in base if it["cycle"] == cycle]
            assert len(set(cases)) == len(methods)
        assert len(reps) == round(0.1 * len(base))
        pos = {it["item"]: it["position"] for it in items}
        img = {it["item"]: it["image"] for it in items}
        for it in reps:
            assert img[it["repeat_of"]] == it["image"]
            assert it["position"] - pos[it["repeat_of"]] >= 2 * len(methods)
        assert [it["position"] for it in items] == list(range(1, len(items) + 1))
        orders.append([it["image"] for it in base])
    # Readers get different orders.
    assert len({tuple(o) for o in orders}) == len(orders)


def test_repeats_spread_over_methods():
    rng = np.random.default_rng(0)
    base = [(c, m, c, m) for c in range(40) for m in range(4)]  # 160 items, 4 methods
    out = add_repeats(base, 0.1, 4, rng)
    reps = [o for o in out if o[4] is not None]
    assert len(reps) == 16
    assert Counter(o[1] for o in reps) == {0: 4, 1: 4, 2: 4, 3: 4}
    with pytest.raises(PackError, match="--repeat"):
        add_repeats(base, 0.9, 4, rng)


def test_case_choice_is_stratified_seeded_and_spread_over_patients():
    slices = [(f"H{p}", s, "hip", 10) for p in range(10) for s in range(5)]      # 50
    slices += [(f"S{p}", s, "spine", 10) for p in range(6) for s in range(5)]    # 30
    slices += [(f"K{p}", s, "knee", 10) for p in range(4) for s in range(5)]     # 20
    slices += [("Z0", s, "hip", 0) for s in range(30)]  # no metal: never drawn
    got = select_cases(slices, 10, np.random.default_rng(1))
    assert Counter(t for _, _, t, _ in got) == {"hip": 5, "spine": 3, "knee": 2}
    for t in ("hip", "spine", "knee"):  # one slice per patient while patients remain
        pats = [p for p, _, tt, _ in got if tt == t]
        assert len(pats) == len(set(pats))
    assert select_cases(slices, 10, np.random.default_rng(1)) == got
    assert select_cases(slices, 10, np.random.default_rng(2)) != got
    # Every stratum is represented even when small; a stratum cannot give what it lacks.
    tiny = [("A", 0, "rare", 5)] + [(f"B{p}", 0, "common", 5) for p in range(20)]
    assert Counter(t for *_, t, _ in [(a, b, c, d) for a, b, c, d in
                                       select_cases(tiny, 4, np.random.default_rng(0))]) \
        == {"rare": 1, "common": 3}
    with pytest.raises(PackError, match="only 100 slices"):
        select_cases(slices, 101, np.random.default_rng(0))


def test_images_hold_the_predictions_at_both_windows(expert_pack, expert_runs, expert_data):
    """The .npy is the run's int16 prediction (read here with pyarrow); the PNGs are its
    windows (WL 500 / WW 2000 and WL 40 / WW 400); the reference is the ordinary image."""
    import pyarrow.parquet as pq
    from PIL import Image

    from benchmark.results import Results

    key = json.loads(expert_pack.key_path.read_text())
    manifest = json.loads(expert_pack.manifest_path.read_text())
    cases = {c["case"]: c for c in key["cases"]}
    runs = {Results.load(r).method.name: r for r in expert_runs}
    ordinary = {}
    table = pq.read_table(expert_data / "pairs" / "test-00000-of-00001.parquet",
                          columns=["patient_id", "slice_index", "ordinary"])
    for p, s, o in zip(*(table.column(c).to_pylist() for c in
                         ("patient_id", "slice_index", "ordinary")), strict=True):
        ordinary[(p, s)] = np.asarray(o, np.int16)
    checked = Counter()
    for im in manifest["images"]:
        meta, case = key["images"][im["id"]], cases[im["case"]]
        k = (case["patient_id"], case["slice_index"])
        arr = np.load(expert_pack.reader_dir / im["files"]["int16_npy"])
        assert arr.dtype == np.int16
        if meta["kind"] == "reference":
            np.testing.assert_array_equal(arr, ordinary[k])
        else:
            run = runs[meta["method"]]
            t = pq.read_table(run / "predictions" / "test-00000-of-00001.parquet")
            rows = {(p, s): i for i, (p, s) in enumerate(zip(
                t.column("patient_id").to_pylist(), t.column("slice_index").to_pylist(),
                strict=True))}
            want = np.asarray(t.column("prediction")[rows[k]].as_py(), np.int16)
            np.testing.assert_array_equal(arr, want)
        for name, (lo, hi) in (("bone", (-500, 1500)), ("soft", (-160, 240))):
            png = np.asarray(Image.open(expert_pack.reader_dir / im["files"][f"{name}_png"]))
            expect = np.rint(np.clip((arr - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
            np.testing.assert_array_equal(png, expect)
        for f, digest in im["sha256"].items():
            assert hashlib.sha256((expert_pack.reader_dir / im["files"][f]).read_bytes()
                                  ).hexdigest() == digest
        checked[meta["kind"]] += 1
    assert checked == {"rated": 27, "reference": 9}


def test_pack_warns_when_a_method_equals_the_reference(expert_pack):
    assert any("identity" in w and "--no-reference" in w for w in expert_pack.warnings)


def test_same_seed_same_design(expert_runs, expert_data, tmp_path):
    a = make_pack(expert_runs, tmp_path / "a", data=expert_data, cases=3, readers=2, seed=7,
                  reference=False)
    b = make_pack(expert_runs, tmp_path / "b", data=expert_data, cases=3, readers=2, seed=7,
                  reference=False)

    def design(p):
        key = json.loads(p.key_path.read_text())
        cases = {c["case"]: (c["patient_id"], c["slice_index"]) for c in key["cases"]}
        return [[(cases[key["images"][it["image"]]["case"]],
                  key["images"][it["image"]]["method"]) for it in rl["items"]]
                for rl in key["reading_lists"]]

    assert design(a) == design(b)
    assert a.pack_id != b.pack_id  # ids come from a fresh secret
    assert not json.loads(a.manifest_path.read_text())["reference"]
    assert not a.warnings


def test_pack_errors_name_the_problem(expert_runs, expert_data, tmp_path):
    with pytest.raises(PackError, match="at least two"):
        make_pack(expert_runs[:1], tmp_path / "one", data=expert_data)
    with pytest.raises(PackError, match="fewer than the 3 methods"):
        make_pack(expert_runs, tmp_path / "few", data=expert_data, cases=2)
    with pytest.raises(PackError, match="--cases 50: only 12 slices"):
        make_pack(expert_runs, tmp_path / "many", data=expert_data, cases=50)
    with pytest.raises(FileNotFoundError, match="no such results file"):
        make_pack([expert_runs[0], tmp_path / "nowhere"], tmp_path / "x", data=expert_data)
    # A run on other data cannot join.
    other = tmp_path / "other"
    shutil.copytree(expert_runs[1], other)
    res = json.loads((other / "results.json").read_text())
    res["dataset"]["manifest_sha256"] = "0" * 64
    (other / "results.json").write_text(json.dumps(res))
    with pytest.raises(PackError, match="same dataset and split"):
        make_pack([expert_runs[0], other], tmp_path / "mixed", data=expert_data, cases=3)
    # An existing pack is never overwritten.
    make_pack(expert_runs, tmp_path / "done", data=expert_data, cases=3, readers=1)
    with pytest.raises(PackError, match="already holds a pack"):
        make_pack(expert_runs, tmp_path / "done", data=expert_data, cases=3, readers=1)


def test_cli_pack_takes_several_results_after_one_flag(expert_runs, expert_data, tmp_path):
    from benchmark.expert.cli import app

    out = tmp_path / "cli"
    r = CliRunner().invoke(app, ["pack", "--results", *map(str, expert_runs), "--data",
                                 str(expert_data), "--out", str(out), "--cases", "3",
                                 "--readers", "2", "--no-reference"])
    assert r.exit_code == 0, r.output
    assert "3 cases" in r.output and "x 3 methods" in r.output and "keep apart" in r.output
    assert (out / "key.json").is_file() and (out / "reader" / "form.html").is_file()
    r = CliRunner().invoke(app, ["pack", "--results", str(expert_runs[0]), "--data",
                                 str(expert_data), "--out", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "at least two" in r.output
