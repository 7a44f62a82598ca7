"""A user's files and patients' data under a careless user, a full disk and a doctored file.

Grouped by class: nothing of a user's is deleted; patient data stays private and temporary
folders go (also on SIGTERM); a doctored dataset is refused by name instead of changing the
numbers; ``apply`` reads every supported syntax with memory bounded by the slices in flight;
DICOM oddities are named; every failure of every command is one clean line (one error printer,
one ``KEY=VALUE`` parser). The expert study's part is in
``tests/benchmark/expert/test_expert_integrity.py``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from artifactgsi.dicom import DicomError, SeriesMeta, read_series, write_ct_series
from artifactgsi.physics.geometry import ImageGrid

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- helpers


def _series(folder: Path, n: int = 4, size: int = 32, px: float = 1.0) -> Path:
    """A small series (water body, bone ring, a 3000 HU metal disk) with a patient's name,
    id and birth date in its headers, written by the project's writer."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(xx, yy / 0.8)
    vol = np.full((n, size, size), -1000.0)
    vol[:, r < size * 0.45] = 40.0
    vol[:, (r > size * 0.3) & (r < size * 0.34)] = 900.0
    vol[:, np.hypot(xx - 3, yy) < 2] = 3000.0
    vol += rng.normal(0, 10, vol.shape)
    meta = SeriesMeta(patient_name="DOE^JANE", patient_id="PID123", birth_date="19500101",
                      sex="F", study_date="20240102", study_time="101010",
                      institution="Test Hospital", referring_physician="DR^WHO",
                      accession_number="ACC1", study_uid="2.25.123456789012345678901",
                      series_number=3, series_description="Pelvis 120 kV",
                      manufacturer="Sim", model="SimCT", kvp=120.0, kev=None,
                      convolution_kernel="STANDARD",
                      frame_of_reference_uid="2.25.987654321098765432109",
                      slice_thickness_mm=2.5, body_part="PELVIS")
    write_ct_series(np.rint(vol).astype(np.int16), [2.5 * i for i in range(n)],
                    ImageGrid((size, size), px, (0.0, 0.0)), meta, folder)
    return folder


def _digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> hex)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _line(result) -> str:
    return " ".join(result.output.split())


def _clean_failure(result) -> str:
    """Exit code 2, no traceback, one ``error:`` message; returns the text unwrapped."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert "error:" in result.output
    return _line(result)


def _marbench(*args: str):
    from benchmark.cli import app

    return CliRunner().invoke(app, list(args))


def _artifactgsi(*args: str):
    from artifactgsi.cli import app

    return CliRunner().invoke(app, list(args))


def _subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith(("HF_", "HUGGINGFACE_"))}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    return env


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 180) -> None:
    end = time.monotonic() + seconds
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the command ended early:\n{proc.stderr.read()}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("the command never got there")
        time.sleep(0.1)


# ============================================================================ class 1
# Nothing of a user's is deleted.


@pytest.mark.parametrize("where", ["input itself", "patient folder", "inside input",
                                   "symlink to input"])
def test_apply_never_writes_over_or_into_its_input(tmp_path, where):
    from benchmark.apply import ApplyError, apply_to_series

    patient = tmp_path / "patient"
    src = _series(patient / "ct")
    _series(patient / "other", n=3)  # another series of the same patient
    (patient / "notes.txt").write_text("keep me")
    before = _digest(patient)
    out = {"input itself": src, "patient folder": patient, "inside input": src / "mar",
           "symlink to input": tmp_path / "link"}[where]
    if where == "symlink to input":
        out.symlink_to(src, target_is_directory=True)
    with pytest.raises(ApplyError, match="input"):
        apply_to_series("identity", src, out, overwrite=True)
    assert _digest(patient) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_apply_cli_overwrite_onto_the_source_is_a_clean_error(tmp_path):
    src = _series(tmp_path / "ct")
    before = _digest(src)
    text = _clean_failure(_marbench("apply", str(src), str(src), "-m", "identity",
                                    "--overwrite"))
    assert "is the input folder itself" in text
    assert _digest(src) == before


@pytest.mark.parametrize("case", ["report exists", "report inside input"])
def test_report_is_checked_before_the_derived_series_is_written(tmp_path, case):
    src = _series(tmp_path / "ct")
    report = tmp_path / "report" if case == "report exists" else src / "report"
    if case == "report exists":
        report.mkdir()
    out = tmp_path / "derived"
    text = _clean_failure(_marbench("apply", str(src), str(out), "-m", "identity",
                                    "--report", str(report)))
    assert "--report" in text
    assert not out.exists()  # nothing was written before the report was found unusable


# ============================================================================ class 2
# Patient data stays private; temporary folders go, also on SIGTERM.


APPLY_SLOWLY = """
import pathlib, sys, time
import benchmark.apply.series as A
ready, src, out = sys.argv[1:4]
real = A._to_stored
def slow(*args, **kwargs):  # widens the window in which the derived series is half written
    pathlib.Path(ready).touch()
    time.sleep(120)
    return real(*args, **kwargs)
A._to_stored = slow
from benchmark.cli import app
sys.argv = ["marbench", "apply", src, out, "-m", "identity"]
app()
"""


@pytest.mark.slow
def test_sigterm_while_apply_writes_leaves_no_hidden_folder(tmp_path):
    src = _series(tmp_path / "ct")
    out_parent = tmp_path / "results"
    out_parent.mkdir()
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", APPLY_SLOWLY, str(ready), str(src),
                             str(out_parent / "mar")], env=_subprocess_env(),
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(ready, proc)
        assert [p.name for p in out_parent.iterdir()][0].startswith(".")  # half written
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    assert list(out_parent.iterdir()) == []  # no hidden half-written series with patient data


VIEW = """
import sys
from benchmark.cli import app
sys.argv = ["marbench", "view", sys.argv[1], "-m", "identity", "--port", sys.argv[2]]
app()
"""


@pytest.mark.slow
def test_view_keeps_derived_series_private_and_removes_them_at_exit(tmp_path):
    """The viewer's outputs (derived series with the patient's name, ID and birth date, their
    zips, gradio's copies of them) live in one 0700 folder under the system temp folder while
    it runs, and nothing is left there after SIGTERM."""
    from gradio_client import Client

    src = _series(tmp_path / "ct")
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", VIEW, str(src), str(port)],
                            env=_subprocess_env(TMPDIR=str(systmp)),
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        end = time.monotonic() + 240
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > end:
                raise AssertionError(f"the viewer did not start:\n{proc.stderr.read()}")
            time.sleep(0.5)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
        client.predict(str(src), None, ["identity"], "", "", "metal (L 500 / W 2000)",
                       api_name="/open_")
        top = list(systmp.iterdir())
        assert [p.name.startswith("marbench-view-") for p in top] == [True], top
        work = top[0]
        assert work.stat().st_mode & 0o077 == 0  # owner only
        derived = [p for p in work.rglob("*.dcm")] + [p for p in work.rglob("*.zip")]
        assert derived, "the viewer wrote no derived series"
        assert any(b"DOE^JANE" in p.read_bytes() for p in work.rglob("*.dcm"))
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        proc.kill()
    assert list(systmp.iterdir()) == []


# ============================================================================ class 3
# A doctored dataset is refused by name; it never changes the numbers.


def _redo_manifest(folder: Path) -> None:
    """Rewrite manifest.json for the files as they now are (as a doctorer would)."""
    import pyarrow.parquet as pq

    from artifactgsi.fileio import sha256_file

    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    for e in manifest["files"]:
        p = folder / e["path"]
        e["sha256"], e["bytes"] = sha256_file(p), p.stat().st_size
        if e["path"].endswith(".parquet"):
            e["rows"] = pq.read_metadata(p).num_rows
    path.write_text(json.dumps(manifest))


@pytest.fixture()
def pairs(tmp_path, write_tiny_pairs, isolated_datasets_cache) -> Path:
    return write_tiny_pairs(tmp_path / "pairs", size=32, slices=2)


def test_a_card_pointing_the_test_split_at_the_train_file_is_refused(pairs):
    from artifactgsi.dataset import DatasetContentError
    from benchmark.data import open_split

    card = pairs / "README.md"
    card.write_text(card.read_text().replace("path: pairs/test-*.parquet",
                                             "path: pairs/train-*.parquet"))
    with pytest.raises(DatasetContentError, match="README.md"):
        open_split(pairs, "test")
    _redo_manifest(pairs)  # the manifest re-hashed to cover the edited card
    with pytest.raises(DatasetContentError, match="train-00000-of-00001.parquet.*split 'test'"):
        open_split(pairs, "test")


def test_the_manifest_record_of_a_split_must_match_what_is_read(pairs):
    from artifactgsi.dataset import DatasetContentError
    from benchmark.data import open_split

    path = pairs / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["configs"] = {"pairs": {"test": {"rows": 5, "files": [
        "pairs/test-00000-of-00001.parquet"]}}}
    path.write_text(json.dumps(manifest))
    with pytest.raises(DatasetContentError, match="4 rows.*records 5"):
        open_split(pairs, "test")


@pytest.mark.parametrize("doctor", ["float HU", "int32 HU of 40000", "negative spacing",
                                    "zero spacing"])
def test_doctored_columns_are_refused_naming_the_file(pairs, doctor):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from artifactgsi.dataset import DatasetContentError
    from benchmark.data import open_split

    shard = pairs / "pairs" / "test-00000-of-00001.parquet"
    t = pq.read_table(shard).replace_schema_metadata(None)  # no stored features to fall back on
    if doctor.endswith("HU") or "HU" in doctor:
        col = "ordinary" if doctor == "float HU" else "gsi"
        arr = np.stack([np.asarray(v) for v in t.column(col).to_pylist()])
        if doctor == "float HU":
            new = (arr.astype(np.float32) * 1.0001).tolist()
            typ = pa.list_(pa.list_(pa.float32()))
        else:
            arr = arr.astype(np.int32)
            arr[:, 0, 0] = 40000
            new, typ = arr.tolist(), pa.list_(pa.list_(pa.int32()))
        t = t.set_column(t.schema.get_field_index(col), col, pa.array(new, typ))
        match = f"column '{col}' holds"
    else:
        v = -0.7 if doctor == "negative spacing" else 0.0
        i = t.schema.get_field_index("pixel_spacing_mm")
        t = t.set_column(i, "pixel_spacing_mm", pa.array([v] * t.num_rows, pa.float64()))
        match = "pixel_spacing_mm is"
    pq.write_table(t, shard)
    _redo_manifest(pairs)
    with pytest.raises(DatasetContentError, match=match) as err:
        open_split(pairs, "test")
    assert str(shard) in str(err.value)


def test_true_is_not_a_number_for_a_method_option():
    from artifactgsi.cli_common import parse_key_values
    from benchmark.registry import OptionTypeError, create_method

    opts = parse_key_values(["bone_hu=true"])
    assert opts == {"bone_hu": True}
    with pytest.raises(OptionTypeError, match="bone_hu"):
        create_method("nmar", **opts)
    assert create_method("nmar", bone_hu=600).bone_hu == 600  # a number still is


def test_an_empty_secret_file_is_refused_not_replaced_by_a_random_key(tmp_path):
    from benchmark.apply import ApplyError, apply_to_series

    src = _series(tmp_path / "ct")
    empty = tmp_path / "secret"
    empty.write_bytes(b"")
    text = _clean_failure(_marbench("apply", str(src), str(tmp_path / "o"), "-m", "identity",
                                    "--deidentify", "--secret-file", str(empty)))
    assert str(empty) in text and "empty" in text
    assert not (tmp_path / "o").exists()
    with pytest.raises(ApplyError, match="empty"):
        apply_to_series("identity", src, tmp_path / "o", deidentify=True, secret=b"")


# ============================================================================ class 4
# apply: every supported syntax, memory bounded by the slices in flight.


def _to_jpeg_lossless(folder: Path) -> None:
    """Re-encode every file's pixels as JPEG Lossless SV1 (GDCM through SimpleITK), keeping
    the header as the project's writer made it."""
    import SimpleITK as sitk
    from pydicom.uid import JPEGLosslessSV1

    for f in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        tmp = f.parent.parent / f"jpeg-{f.name}"
        writer = sitk.ImageFileWriter()
        writer.SetFileName(str(tmp))
        writer.SetUseCompression(True)
        writer.SetCompressor("JPEG")
        writer.Execute(sitk.GetImageFromArray(ds.pixel_array[None].astype(np.uint16)))
        enc = pydicom.dcmread(tmp)
        tmp.unlink()
        assert enc.file_meta.TransferSyntaxUID == JPEGLosslessSV1
        ds.PixelData = enc.PixelData
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        ds.save_as(f, enforce_file_format=True)


def test_apply_on_a_jpeg_lossless_series(tmp_path):
    from benchmark.apply import apply_to_series

    plain = _series(tmp_path / "plain")
    expected = read_series(plain).volume_hu
    src = _series(tmp_path / "jpeg")
    _to_jpeg_lossless(src)
    assert pydicom.dcmread(next(src.glob("*.dcm"))).file_meta.TransferSyntaxUID.is_compressed
    res = apply_to_series("identity", src, tmp_path / "out")
    assert res.n_slices == expected.shape[0]
    np.testing.assert_array_equal(read_series(res.out_dir).volume_hu, expected)


def test_apply_memory_is_bounded_by_the_slices_in_flight(tmp_path):
    """Apart from the int16 volume the reader returns (2 bytes per voxel; the files' pixel
    bytes are held while it reads), apply holds only the batch in flight: the peak of what
    Python allocates is about 6.5 bytes per voxel here, where the float copies of the whole
    series made it 38 before."""
    import tracemalloc

    from benchmark.apply import apply_to_series

    n, size = 64, 128
    src = _series(tmp_path / "ct", n=n, size=size)
    apply_to_series("identity", src, tmp_path / "warm", batch_size=2)  # imports, caches
    voxels = n * size * size
    tracemalloc.start()
    try:
        apply_to_series("identity", src, tmp_path / "out", batch_size=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * voxels + 2_000_000, f"{peak / voxels:.1f} bytes per voxel"


# ============================================================================ class 5
# DICOM oddities are named.


def test_float_pixel_data_is_named_not_called_truncated(tmp_path):
    src = _series(tmp_path / "ct")
    f = sorted(src.glob("*.dcm"))[1]
    ds = pydicom.dcmread(f)
    ds.FloatPixelData = ds.pixel_array.astype(np.float32).tobytes()
    del ds.PixelData
    ds.save_as(f, enforce_file_format=True)
    with pytest.raises(DicomError, match="FloatPixelData") as err:
        read_series(src)
    assert "truncated" not in str(err.value) and str(f) in str(err.value)


def test_duplicate_sop_instance_uids_are_refused(tmp_path):
    src = _series(tmp_path / "ct")
    a, b = sorted(src.glob("*.dcm"))[:2]
    ds = pydicom.dcmread(b)
    ds.SOPInstanceUID = pydicom.dcmread(a).SOPInstanceUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(b, enforce_file_format=True)
    with pytest.raises(DicomError, match="SOPInstanceUID") as err:
        read_series(src)
    assert a.name in str(err.value) and b.name in str(err.value)


@pytest.mark.parametrize("spacing", [[0, 0], [-0.5, -0.5]])
def test_zero_or_negative_pixel_spacing_is_a_clean_error(tmp_path, spacing):
    src = _series(tmp_path / "ct")
    for f in src.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.PixelSpacing = spacing
        ds.save_as(f, enforce_file_format=True)
    with pytest.raises(DicomError, match="PixelSpacing"):
        read_series(src)
    text = _clean_failure(_marbench("apply", str(src), str(tmp_path / "o"), "-m", "li"))
    assert "PixelSpacing" in text


# ============================================================================ class 6
# Every failure is one line: a full disk, no permission, bad sizes, devices, repo ids.


def test_marbench_run_on_a_full_disk_names_the_output(pairs, tmp_path, monkeypatch):
    import benchmark.run.runner as runner

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runner, "atomic_write_text", full)
    out = tmp_path / "run"
    text = _clean_failure(_marbench("run", "-m", "identity", "-d", str(pairs), "--out",
                                    str(out), "--no-lpips", "--no-clinical"))
    assert "no space left on the device" in text and str(out) in text


def test_simulate_without_permission_is_a_line_and_leaves_no_empty_folder(tmp_path,
                                                                          monkeypatch):
    import artifactgsi.simulate as sim

    out = tmp_path / "new" / "raw"

    def denied(args):
        raise PermissionError(errno.EACCES, "Permission denied", str(out / "SIM0000000"))

    monkeypatch.setattr(sim, "_run_one", denied)
    text = _clean_failure(_artifactgsi("simulate", "--out", str(out), "--patients", "1",
                                       "--clean-patients", "0", "--slices", "1",
                                       "--size", "32"))
    assert "permission denied" in text and "SIM0000000" in text
    assert list(tmp_path.iterdir()) == []  # the folders it made are gone again


@pytest.mark.parametrize("args,words", [
    (["--size", "200000"], "--size must be within 32..1024"),
    (["--patients", "1000000000000"], "at most 100000"),
    (["--slices", "100000"], "--slices must be within 1..2000"),
], ids=["size", "patients", "slices"])
def test_simulate_sizes_that_cannot_work_are_refused_at_once(tmp_path, args, words):
    start = time.monotonic()
    text = _clean_failure(_artifactgsi("simulate", "--out", str(tmp_path / "raw"), *args))
    assert words in text
    assert time.monotonic() - start < 30
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("command", ["run", "apply", "simulate"])
def test_a_bogus_device_is_a_line(tmp_path, pairs, command):
    if command == "run":
        r = _marbench("run", "-m", "identity", "-d", str(pairs), "--device", "bogus",
                      "--out", str(tmp_path / "o"), "--no-lpips")
    elif command == "apply":
        r = _marbench("apply", str(_series(tmp_path / "ct")), str(tmp_path / "o"),
                      "-m", "identity", "--device", "bogus")
    else:
        r = _artifactgsi("simulate", "--out", str(tmp_path / "o"), "--device", "bogus")
    assert "bogus" in _clean_failure(r)
    assert not (tmp_path / "o").exists()


def test_run_out_naming_a_file_is_a_line_before_any_scoring(pairs, tmp_path, monkeypatch):
    import benchmark.run as run

    def never(*args, **kwargs):
        raise AssertionError("scored although --out cannot be written")

    monkeypatch.setattr(run, "run_benchmark", never)
    f = tmp_path / "afile"
    f.write_text("x")
    assert "not a folder" in _clean_failure(_marbench("run", "-m", "identity", "-d",
                                                      str(pairs), "--out", str(f),
                                                      "--no-lpips"))
    assert f.read_text() == "x"


@pytest.mark.parametrize("command", ["download", "push"])
def test_a_bad_hub_repo_id_is_a_line(pairs, command):
    args = ["download", "bad id!!"] if command == "download" else ["push", str(pairs),
                                                                     "a/b/c d"]
    text = _clean_failure(_artifactgsi(*args))
    assert "is not a Hub repo id" in text


@pytest.mark.slow
def test_push_without_network_is_a_line(pairs, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ("import sys\nfrom artifactgsi.cli import app\n"
            f"sys.argv = ['artifactgsi', 'push', {str(pairs)!r}, 'someone/data']\napp()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300, env=_subprocess_env(
                           HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_TOKEN="hf_test",
                           HF_HOME=str(tmp_path / "hf"), HF_HUB_ETAG_TIMEOUT="2",
                           HF_HUB_DOWNLOAD_TIMEOUT="2"))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    err = " ".join(r.stderr.split())
    assert "connection failed" in err and f"127.0.0.1:{port}" in err, err


def test_one_key_value_parser_for_every_command():
    from artifactgsi.cli_common import KeyValueError, parse_flag_overrides, parse_key_values

    assert parse_key_values(["a=1", "b = x", "c=[1, 2]", "d=", "e=a=b"]) == {
        "a": 1, "b": " x", "c": [1, 2], "d": "", "e": "a=b"}
    assert parse_flag_overrides(["--max-steps", "3", "--flag", "--name=x"]) == {
        "max_steps": 3, "flag": True, "name": "x"}
    for bad in (["novalue"], ["=1"]):
        with pytest.raises(KeyValueError, match="KEY=VALUE"):
            parse_key_values(bad)
    # The CLIs read -O through it (the trainers run under `marbench train` and
    # `python -m benchmark.learn`, which is that CLI), and no module keeps a parser of its own.
    sources = {p: p.read_text() for pkg in ("artifactgsi", "benchmark", "baselines")
               for p in (REPO / pkg).rglob("*.py")}
    own = [str(p.relative_to(REPO)) for p, text in sources.items()
           if 'partition("=")' in text and p.name != "cli_common.py"]
    assert own == []
    users = {str(p.relative_to(REPO)) for p, text in sources.items()
             if "parse_key_values" in text and p.name != "cli_common.py"}
    assert {"benchmark/cli.py", "benchmark/apply/cli.py"} <= users


def test_one_error_printer_for_every_command():
    """No command module prints its own ``error:`` line: all use
    :func:`artifactgsi.cli_common.print_error` (through ``fail`` / ``cli_errors``)."""
    offenders = []
    for pkg in ("artifactgsi", "benchmark", "baselines"):
        for p in (REPO / pkg).rglob("*.py"):
            text = p.read_text()
            if p.name != "cli_common.py" and ("error:[/]" in text or 'echo(f"error:' in text
                                              or "Exit(2)" in text):
                offenders.append(str(p.relative_to(REPO)))
    assert offenders == []
