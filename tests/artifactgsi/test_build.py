"""Dataset builder: layout, exact HU through ``datasets.load_dataset``, registration against
the known motion, de-identification of every output byte, splits, skipped patients, named
errors without partial output, and byte-identical resume."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
import SimpleITK as sitk

from artifactgsi import build as build_mod
from artifactgsi.build import (
    BuildError,
    RawPatient,
    assign_splits,
    build_dataset,
    info,
    neighbour_stack,
    print_info,
)
from artifactgsi.dicom import DicomError, pseudonym
from artifactgsi.hub import read_card_metadata, validate_folder
from artifactgsi.physics.geometry import ImageGrid
from artifactgsi.register import RegistrationError, apply_affine, grid_points
from artifactgsi.synthetic_raw import IDENTITY, SyntheticPatient, write_synthetic_raw

SECRET = b"test-secret-0123456789"
SIZE, SLICES = 48, 6
PATIENTS = [
    SyntheticPatient("ID-123456", "hip_prosthesis", "hip", pose=(1.5, 3.0, -2.0),
                     z_shift_slices=1, z_motion_mm=0.8),
    SyntheticPatient("PAT-B", "fracture_fixation", "femur", pose=(-2.0, -4.0, 3.0),
                     z_motion_mm=-0.7, header_patient_id="ID-654321"),
    SyntheticPatient("PAT-C", "spinal_fixation", "lumbar_spine", pose=(0.5, 5.0, 4.0),
                     z_shift_slices=-1, labels=False, ideal=False),
    SyntheticPatient("PAT-D", "hip_prosthesis", "pelvis", pose=(-1.0, 2.0, 2.0)),
    SyntheticPatient("PAT-E", "none", "pelvis"),
    SyntheticPatient("PAT-F", "fracture_fixation", "knee", split_hint="generalization"),
    SyntheticPatient("PAT-G", "spinal_fixation", "thoracic_spine", with_gsi=False),
]
RAW_IDS = [p.patient_id for p in PATIENTS] + ["ID-654321"]
IDENTIFYING = [*IDENTITY.values(), *RAW_IDS, "HOUSE^GREGORY", "St Example"]
IDENTIFYING.remove("F")  # the sex code is one letter: too short to search for in bytes


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("raw")
    truth = write_synthetic_raw(folder, PATIENTS, size=SIZE, slices=SLICES)
    return folder, truth


@pytest.fixture(scope="module")
def built(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "ArtifactGSI"
    report = build_dataset(raw[0], out, secret=SECRET, keep_work=True)
    return out, report


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pid(raw_id: str) -> str:
    return pseudonym(SECRET, raw_id)


def _dicom_volume(folder: Path) -> np.ndarray:
    """Independent reader: pydicom only, sorted by z of ImagePositionPatient."""
    dss = sorted((pydicom.dcmread(f) for f in folder.iterdir()),
                 key=lambda d: float(d.ImagePositionPatient[2]))
    return np.stack([d.pixel_array.astype(np.int64) * int(d.RescaleSlope)
                     + int(d.RescaleIntercept) for d in dss])


def _load(out: Path, config: str, split: str):
    from datasets import load_dataset

    # A private cache: `datasets` caches a local folder by its name and card infos, not by
    # content, so a cache shared with earlier test sessions could serve their bytes.
    ds = load_dataset(str(out), config, split=split, cache_dir=str(out.parent / "hf_cache"))
    return ds, ds.with_format("numpy", dtype=None)


# --------------------------------------------------------------------------- layout
def test_layout_manifest_and_card(built):
    out, report = built
    validate_folder(out)  # manifest, hashes, card configs agree (artifactgsi.hub)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "artifactgsi-manifest/1"
    for entry in manifest["files"]:
        assert _sha(out / entry["path"]) == entry["sha256"]
        assert (out / entry["path"]).stat().st_size == entry["bytes"]
        if entry["path"].endswith(".parquet"):
            assert pq.read_metadata(out / entry["path"]).num_rows == entry["rows"]
            assert re.fullmatch(r"\w+/(train|test)-\d{5}-of-\d{5}\.parquet", entry["path"])
            assert pq.ParquetFile(out / entry["path"]).metadata.row_group(0).column(
                0).compression == "ZSTD"
    assert report.rows["pairs"]["train"] + report.rows["pairs"]["test"] > 0
    assert report.patients == {"pairs": {"train": 3, "test": 1}, "clean": {"train": 1},
                               "generalization": {"test": 1}}
    card = read_card_metadata(out)
    assert card["license"] == "cc-by-4.0"
    assert {c["config_name"] for c in card["configs"]} == {"pairs", "clean", "generalization"}
    text = (out / "README.md").read_text()
    assert "2500 HU" in text and "Han, Wencheng" in text and "Eq. 1" in text
    assert not [p for p in out.iterdir() if p.name not in
                ("README.md", "manifest.json", "pairs", "clean", "generalization", ".work")]


def test_load_dataset_returns_exact_int16_hu(built, raw):
    out, _ = built
    rawdir, _ = raw
    by_pid = {_pid(p.patient_id): p for p in PATIENTS}
    seen = set()
    for split in ("train", "test"):
        ds, x = _load(out, "pairs", split)
        assert ds.features["ordinary"].dtype == "int16"
        for r in range(len(ds)):
            row = x[r]
            assert row["ordinary"].dtype == np.int16 and row["gsi"].dtype == np.int16
            assert row["metal_mask"].dtype == np.uint8
            pid = str(row["patient_id"])
            p = by_pid[pid]
            cache = np.load(out / ".work" / "patients" / f"{pid}.npz")
            k = int(np.flatnonzero(cache["slice_index"] == row["slice_index"])[0])
            np.testing.assert_array_equal(row["ordinary"], cache["ordinary"][k])
            j = int(row["slice_index"])
            np.testing.assert_array_equal(row["gsi"], _dicom_volume(rawdir / p.patient_id /
                                                                    "gsi")[j])
            np.testing.assert_array_equal(row["metal_mask"], row["ordinary"] > 2500)
            if p.labels:
                lab = sitk.GetArrayFromImage(sitk.ReadImage(str(rawdir / p.patient_id /
                                                                "labels.nii.gz")))
                ideal = sitk.GetArrayFromImage(sitk.ReadImage(str(rawdir / p.patient_id /
                                                                  "ideal.nii.gz")))
                np.testing.assert_array_equal(row["labels"], lab[j])
                np.testing.assert_array_equal(row["ideal"], ideal[j])
                assert row["ideal"].dtype == np.int16
            else:
                assert ds[r]["labels"] is None and ds[r]["ideal"] is None
            seen.add(pid)
    assert seen == {_pid(p) for p in ("ID-123456", "PAT-B", "PAT-C", "PAT-D")}
    ds, x = _load(out, "clean", "train")
    np.testing.assert_array_equal(np.stack(x[:]["ordinary"]),
                                  _dicom_volume(rawdir / "PAT-E" / "ordinary"))
    ds, x = _load(out, "generalization", "test")
    assert ds.features["implant_type"].int2str(int(x[0]["implant_type"])) == "fracture_fixation"
    np.testing.assert_array_equal(np.stack(x[:]["metal_mask"]),
                                  _dicom_volume(rawdir / "PAT-F" / "ordinary") > 2500)


def test_pairs_match_the_known_motion(built, raw):
    out, _ = built
    rawdir, truth = raw
    by_pid = {_pid(p.patient_id): p for p in PATIENTS}
    errors = []
    for split in ("train", "test"):
        _, x = _load(out, "pairs", split)
        for r in range(len(x)):
            row = x[r]
            p = by_pid[str(row["patient_id"])]
            t = truth[p.patient_id]
            assert t["gsi_slice_for_ordinary"][int(row["ordinary_slice_index"])] == int(
                row["slice_index"])
            a = math.radians(p.pose[0])
            true = [math.cos(a), -math.sin(a), p.pose[1], math.sin(a), math.cos(a), p.pose[2]]
            grid = ImageGrid((SIZE, SIZE), p.gsi_fov_mm / SIZE, p.gsi_centre_mm)
            body = (row["gsi"] > -500).ravel()
            pts = grid_points(grid)[body]
            d = np.linalg.norm(apply_affine(row["affine"], pts) - apply_affine(true, pts), axis=1)
            errors.append(d.mean() / grid.pixel_mm)
            assert row["registration_ncc"] > 0.8 and row["match_score"] > 0.5
    assert np.mean(errors) < 0.5, errors


def test_no_identifying_value_in_any_output_byte(built):
    out, _ = built
    files = [p for p in out.rglob("*") if p.is_file() and ".work" not in p.parts]
    assert files
    for f in files:
        data = f.read_bytes()
        for value in IDENTIFYING:
            assert value.encode() not in data, (f, value)
    # Parquet pages are compressed: also search the decoded values and footers.
    for f in out.rglob("*.parquet"):
        table = pq.read_table(f)
        text = json.dumps(table.drop_columns([c for c in table.column_names if c in (
            "ordinary", "gsi", "metal_mask", "ideal", "labels")]).to_pylist())
        text += str(pq.read_metadata(f).metadata)
        for value in IDENTIFYING:
            assert value not in text, (f, value)
        assert all(re.fullmatch(r"P[0-9a-f]{16}", p) for p in table.column("patient_id")
                   .to_pylist())


def test_missing_gsi_is_skipped_and_listed(built):
    out, report = built
    assert [s["patient"] for s in report.skipped] == [_pid("PAT-G")]
    assert any("PAT-G" in w and "no GSI" in w for w in report.warnings)
    text = (out / "README.md").read_text()
    assert _pid("PAT-G") in text and "no GSI series" in text


def test_info_and_print_info(built, capsys):
    out, report = built
    summary = info(out)
    for config, splits in report.rows.items():
        for split, rows in splits.items():
            assert summary["configs"][config][split]["rows"] == rows
            assert summary["configs"][config][split]["patients"] == report.patients[config][split]
    assert summary["configs"]["pairs"]["train"]["implant_types"]["hip_prosthesis"] >= 1
    assert summary["registration"]["registration_ncc"]["n"] == sum(report.rows["pairs"].values())
    print_info(summary)
    assert "registration quality" in capsys.readouterr().out


def test_neighbour_stack_repeats_edges(built):
    out, _ = built
    ds, x = _load(out, "pairs", "train")
    pids = [str(p) for p in ds["patient_id"]]
    sidx = [int(s) for s in ds["slice_index"]]
    pid = pids[0]
    rows = sorted((s, r) for r, (p, s) in enumerate(zip(pids, sidx, strict=True)) if p == pid)
    first, second, last = rows[0][1], rows[1][1], rows[-1][1]
    stack = neighbour_stack(ds, first, 2)
    assert stack.shape == (5, SIZE, SIZE) and stack.dtype == np.int16
    for k, r in enumerate([first, first, first, second, rows[2][1]]):
        np.testing.assert_array_equal(stack[k], x[r]["ordinary"])
    np.testing.assert_array_equal(neighbour_stack(ds, last, 1)[2], x[last]["ordinary"])
    table = pq.read_table(sorted((out / "pairs").glob("train-*.parquet"))[0])
    np.testing.assert_array_equal(neighbour_stack(table, first, 2), stack)


# --------------------------------------------------------------------------- splits
def _raw_patients(n_per_type: dict[str, int]) -> list[RawPatient]:
    out = []
    for t, n in n_per_type.items():
        out += [RawPatient(f"{t}-{i}", t, "hip", "", True, "", 2, Path("."))
                for i in range(n)]
    return out


def test_split_is_by_patient_stratified_and_seeded():
    patients = _raw_patients({"hip_prosthesis": 10, "fracture_fixation": 5,
                              "spinal_fixation": 5, "none": 3})
    s = assign_splits(patients, seed=0)
    assert assign_splits(patients, seed=0) == s and assign_splits(patients, seed=1) != s
    test = [p for p in patients if s.get(p.patient_id) == "test"]
    assert len(test) == 4 and len(s) == 20  # 20 % of the 20 implant patients; none -> clean
    kinds = [p.implant_type for p in test]
    assert kinds.count("hip_prosthesis") == 2 and kinds.count("fracture_fixation") == 1
    hinted = [*patients[:1], RawPatient("x", "spinal_fixation", "hip", "", True, "test", 3,
                                        Path("."))]
    assert assign_splits(hinted)["x"] == "test"


def test_split_does_not_depend_on_the_secret(raw, tmp_path):
    a = build_dataset(raw[0], tmp_path / "a", secret=b"one")
    b = build_dataset(raw[0], tmp_path / "b", secret=b"two")
    assert a.patients == b.patients
    ta = pq.read_table(tmp_path / "a" / "pairs" / "test-00000-of-00001.parquet")
    tb = pq.read_table(tmp_path / "b" / "pairs" / "test-00000-of-00001.parquet")
    assert ta.column("ordinary_slice_index") == tb.column("ordinary_slice_index")
    assert set(ta.column("patient_id").to_pylist()) != set(tb.column("patient_id").to_pylist())


# --------------------------------------------------------------------------- errors
SMALL = [SyntheticPatient("P1", "hip_prosthesis", "hip"), SyntheticPatient("P2", "none", "hip")]


def _small_raw(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    write_synthetic_raw(raw, SMALL, size=32, slices=4)
    return raw


def _spoil_truncate(raw: Path) -> str:
    f = sorted((raw / "P1" / "gsi").iterdir())[1]
    f.write_bytes(f.read_bytes()[:700])
    return f.name


def _spoil_modality(raw: Path) -> str:
    f = sorted((raw / "P1" / "ordinary").iterdir())[0]
    ds = pydicom.dcmread(f)
    ds.Modality = "MR"
    ds.save_as(f)
    return f.name


def _spoil_mixed(raw: Path) -> str:
    f = sorted((raw / "P1" / "ordinary").iterdir())[0]
    target = raw / "P1" / "gsi" / "stray.dcm"
    target.write_bytes(f.read_bytes())
    return "2 series in one folder"


def _spoil_overlap(raw: Path) -> str:
    """The GSI series lies 20 mm further along z than the 9 mm it spans: no overlap."""
    for f in (raw / "P1" / "gsi").iterdir():
        ds = pydicom.dcmread(f)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 20.0]
        ds.save_as(f)
    for name in ("labels.nii.gz", "ideal.nii.gz"):
        (raw / "P1" / name).unlink()
    rows = list(csv.DictReader((raw / "manifest.csv").open()))
    rows[0]["has_labels"] = "0"
    _write_manifest(raw, rows)
    return "do not overlap"


def _spoil_implant(raw: Path) -> str:
    rows = list(csv.DictReader((raw / "manifest.csv").open()))
    rows[0]["implant_type"] = "dental_filling"
    _write_manifest(raw, rows)
    return "manifest.csv line 2: unknown implant_type 'dental_filling'"


def _spoil_labels_grid(raw: Path) -> str:
    img = sitk.ReadImage(str(raw / "P1" / "labels.nii.gz"))
    img.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(img, str(raw / "P1" / "labels.nii.gz"))
    return "labels.nii.gz: labels origin"


def _spoil_labels_missing(raw: Path) -> str:
    (raw / "P1" / "labels.nii.gz").unlink()
    return "labels.nii.gz: missing, but manifest.csv line 2 says has_labels=1"


def _spoil_sizes(raw: Path) -> str:
    """A second clean patient with a 40 x 40 matrix beside the 32 x 32 one."""
    other = raw.parent / "other"
    write_synthetic_raw(other, [SyntheticPatient("P3", "none", "hip")], size=40, slices=4)
    (other / "P3").rename(raw / "P3")
    with (raw / "manifest.csv").open("a", newline="") as f:
        f.write("P3,none,hip,scanner,0,\n")
    return "images of different sizes 32x32 (e.g. patient P2), 40x40 (e.g. patient P3)"


def _write_manifest(raw: Path, rows: list[dict]) -> None:
    with (raw / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.mark.parametrize("spoil,error", [
    (_spoil_truncate, DicomError), (_spoil_modality, DicomError), (_spoil_mixed, DicomError),
    (_spoil_overlap, RegistrationError), (_spoil_implant, BuildError),
    (_spoil_labels_grid, BuildError), (_spoil_labels_missing, BuildError),
    (_spoil_sizes, BuildError),
])
def test_bad_inputs_fail_clearly_without_partial_output(tmp_path, spoil, error):
    raw = _small_raw(tmp_path)
    needle = spoil(raw)
    out = tmp_path / "out"
    with pytest.raises(error) as err:
        build_dataset(raw, out, secret=SECRET)
    assert needle in str(err.value), str(err.value)
    if spoil is not _spoil_sizes:
        assert str(raw) in str(err.value)  # names the file or folder
    assert not out.exists() or not [p for p in out.rglob("*") if ".work" not in p.parts]


def test_output_folder_rules(tmp_path):
    raw = _small_raw(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(BuildError, match="not empty"):
        build_dataset(raw, out, secret=SECRET)
    assert (out / "notes.txt").read_text() == "mine"
    out2 = tmp_path / "out2"
    build_dataset(raw, out2, secret=SECRET)
    with pytest.raises(BuildError, match="overwrite"):
        build_dataset(raw, out2, secret=SECRET)
    (out2 / "pairs" / "train-00009-of-00010.parquet").write_bytes(b"stale")
    build_dataset(raw, out2, secret=SECRET, overwrite=True)
    validate_folder(out2)  # the stale shard is gone: every file is listed
    assert not (out2 / ".work").exists()


# --------------------------------------------------------------------------- resume
RESUME = [SyntheticPatient("R1", "hip_prosthesis", "hip", pose=(1.0, 2.0, -1.0)),
          SyntheticPatient("R2", "spinal_fixation", "lumbar_spine", pose=(-1.0, -2.0, 1.0)),
          SyntheticPatient("R3", "fracture_fixation", "femur"),
          SyntheticPatient("R4", "none", "hip")]


def _interrupt_at(monkeypatch, n: int) -> None:
    real = build_mod.process_patient
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(build_mod.patient, "process_patient", flaky)


def test_interrupted_build_resumes_to_identical_bytes(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    write_synthetic_raw(raw, RESUME, size=32, slices=4)
    ref = tmp_path / "ref"
    build_dataset(raw, ref, secret=SECRET)
    out = tmp_path / "out"
    _interrupt_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(raw, out, secret=SECRET)
    assert not list(out.rglob("*.parquet")) and not (out / "manifest.json").exists()
    assert len(list((out / ".work" / "patients").glob("*.json"))) == 2
    monkeypatch.undo()
    with pytest.raises(BuildError, match="secret differs"):
        build_dataset(raw, out, resume=True, secret=b"another")
    report = build_dataset(raw, out, resume=True, secret=SECRET)
    assert report.resumed_patients == 2
    files = sorted(p.relative_to(ref) for p in ref.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    for rel in files:
        assert _sha(ref / rel) == _sha(out / rel), rel
    assert not (out / ".work").exists()


def test_random_secret_resume_and_nothing_kept(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    write_synthetic_raw(raw, RESUME[:3], size=32, slices=4)
    out = tmp_path / "out"
    _interrupt_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(raw, out)
    key = (out / ".work" / "secret").read_bytes()
    assert len(key) == 32 and oct((out / ".work" / "secret").stat().st_mode)[-3:] == "600"
    monkeypatch.undo()
    report = build_dataset(raw, out, resume=True)
    assert report.resumed_patients == 1
    ids = set()
    for f in out.rglob("*.parquet"):
        ids |= set(pq.read_table(f, columns=["patient_id"]).column("patient_id").to_pylist())
    assert ids == {pseudonym(key, p.patient_id) for p in RESUME[:3]}  # one key throughout
    assert not (out / ".work").exists()
    for f in out.rglob("*"):
        if f.is_file():
            assert key not in f.read_bytes()


@pytest.mark.slow
def test_two_workers_give_the_same_bytes(raw, built, tmp_path):
    out, _ = built
    build_dataset(raw[0], tmp_path / "w2", workers=2, secret=SECRET)
    for entry in json.loads((out / "manifest.json").read_text())["files"]:
        assert _sha(tmp_path / "w2" / entry["path"]) == entry["sha256"], entry["path"]
