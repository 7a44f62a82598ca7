"""``artifactgsi build`` with hostile or careless input: manifest encodings and line numbers,
folders the manifest does not list, warnings printed once, error text through rich shown
literally, and no worker left alive when the build's parent is killed."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from artifactgsi.build import BuildError, build_dataset, read_raw_manifest
from artifactgsi.cli import app
from artifactgsi.synthetic_raw import SyntheticPatient, write_synthetic_raw

REPO_ROOT = Path(__file__).resolve().parents[2]
PATIENTS = [SyntheticPatient("PAT-A", "hip_prosthesis", "hip"),
            SyntheticPatient("PAT-B", "spinal_fixation", "lumbar_spine", labels=False,
                             ideal=False)]


@pytest.fixture(scope="module")
def raw_tree(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("raw")
    write_synthetic_raw(folder, PATIENTS, size=32, slices=3)
    return folder


def _copy_raw(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _rows(raw: Path) -> tuple[list[str], list[list[str]]]:
    with (raw / "manifest.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def _write(raw: Path, header: list[str], rows: list[list[str]], *, bom: bool = False,
           blank_lines_before: int = 0, encoding: str = "utf-8") -> None:
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    buf.write("\n" * blank_lines_before)
    for r in rows:
        w.writerow(r)
    data = buf.getvalue().encode(encoding)
    (raw / "manifest.csv").write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)


# --------------------------------------------------------------------------- class 8
def test_build_manifest_with_utf8_bom_is_read(raw_tree, tmp_path):
    raw = _copy_raw(raw_tree, tmp_path / "raw")
    header, rows = _rows(raw)
    _write(raw, header, rows, bom=True)
    assert [p.patient_id for p in read_raw_manifest(raw)] == ["PAT-A", "PAT-B"]


def test_build_manifest_not_utf8_names_the_file(raw_tree, tmp_path):
    raw = _copy_raw(raw_tree, tmp_path / "raw")
    header, rows = _rows(raw)
    rows[1][3] = "Hôpital Süd"  # scanner column, written as Latin-1
    _write(raw, header, rows, encoding="latin-1")
    with pytest.raises(BuildError) as err:
        read_raw_manifest(raw)
    msg = str(err.value)
    assert str(raw / "manifest.csv") in msg and "UTF-8" in msg and "line 3" in msg, msg


# --------------------------------------------------------------------------- class 12
def test_build_manifest_line_numbers_count_blank_lines(raw_tree, tmp_path):
    raw = _copy_raw(raw_tree, tmp_path / "raw")
    header, rows = _rows(raw)
    rows[1][1] = "pacemaker"  # unknown implant type on the second data row
    _write(raw, header, rows, blank_lines_before=3)
    # header line 1, three blank lines 2-4, first row line 5, second row line 6
    with pytest.raises(BuildError, match=r"line 6: unknown implant_type 'pacemaker'"):
        read_raw_manifest(raw)


# --------------------------------------------------------------------------- classes 11, 17, 5
def _cli_build(raw: Path, out: Path, *extra: str):
    return CliRunner().invoke(app, ["build", str(raw), str(out), *extra])


def test_build_unlisted_patient_folder_is_warned_about_once(raw_tree, tmp_path):
    raw = _copy_raw(raw_tree, tmp_path / "raw")
    header, rows = _rows(raw)
    _write(raw, header, rows[:1])  # PAT-B no longer listed
    res = _cli_build(raw, tmp_path / "out")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # rich wraps long lines
    assert text.count("PAT-B: a patient folder that manifest.csv does not list") == 1, text
    report = build_dataset(raw, tmp_path / "out2", secret=b"k")
    assert any("PAT-B" in w and "does not list" in w for w in report.warnings)


def test_build_warnings_are_printed_once(raw_tree, tmp_path):
    raw = _copy_raw(raw_tree, tmp_path / "raw")
    import shutil

    shutil.rmtree(raw / "PAT-B" / "gsi")  # skipped with a warning
    res = _cli_build(raw, tmp_path / "out")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert text.count("skipped: no GSI series") == 1, text


def test_build_error_paths_are_shown_literally(raw_tree, tmp_path):
    raw = _copy_raw(raw_tree, tmp_path / "raw[ab]")
    (raw / "manifest.csv").unlink()
    res = _cli_build(raw, tmp_path / "out")
    assert res.exit_code == 2
    text = "".join(res.output.split())
    assert "raw[ab]/manifest.csv" in text, res.output  # not "raw/manifest.csv"


def test_build_geometry_errors_show_plain_numbers(raw_tree, tmp_path):
    import pydicom

    raw = _copy_raw(raw_tree, tmp_path / "raw")
    victim = sorted((raw / "PAT-A" / "gsi").iterdir())[1]
    ds = pydicom.dcmread(victim)
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [x + 3.0, y, z]
    ds.save_as(victim)
    res = _cli_build(raw, tmp_path / "out")
    assert res.exit_code == 2
    text = "".join(res.output.split())
    assert "in-planeImagePositionPatient" in text and "np.float64" not in text, res.output
    assert f"[{x + 3.0}," in text, res.output


# --------------------------------------------------------------------------- class 10
def _session_pids(sid: int) -> list[int]:
    """Processes of session ``sid`` that are still running (zombies excluded)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid and fields[0] != "Z":  # fields[3]: session id
            out.append(int(entry.name))
    return out


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_build_workers_die_with_their_killed_parent(tmp_path):
    raw = tmp_path / "raw"
    write_synthetic_raw(raw, [SyntheticPatient(f"P{i}", "hip_prosthesis", "hip")
                              for i in range(6)], size=48, slices=6)
    out = tmp_path / "out"
    code = textwrap.dedent(f"""
        from artifactgsi.build import build_dataset
        build_dataset({str(raw)!r}, {str(out)!r}, workers=2, secret=b"k")
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    parent = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until both workers run
            if len(_session_pids(parent.pid)) >= 3:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the build never started two workers")
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        # Generous for a loaded CI machine: a worker still starting up must first get to
        # its initializer (about a second on an idle machine).
        deadline = time.monotonic() + 30
        while _session_pids(parent.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _session_pids(parent.pid)
        assert not left, f"processes left after the parent died: {left}"
    finally:
        for pid in _session_pids(parent.pid):  # the test never leaves orphans itself
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# --------------------------------------------------------------------------- class 9
def test_build_preview_of_a_missing_patient_is_a_clean_error(tmp_path):
    # A subprocess: ITK writes its warnings to the process's stderr, below Python.
    proc = subprocess.run(
        [sys.executable, "-c", "from artifactgsi.cli import app; app()", "preview",
         str(tmp_path / "raw" / "NOPE")],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "200"},
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error:"), proc.stderr  # nothing before the error
    assert "NOPE: no such patient folder" in proc.stderr
    assert "WARNING" not in proc.stderr and "Traceback" not in proc.stderr
