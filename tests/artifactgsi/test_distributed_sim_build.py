"""Simulate and build as patient tasks on Dask: the same bytes as a serial run, whatever the
number of workers, also when a worker is killed mid-task; a rerun resumes.

The kill is real: a Dask worker plugin (installed on every worker, also on the ones that
replace killed workers) wraps one writer of the task so that the first call, and only that
one (a marker file decides), ends the worker process with ``os._exit`` halfway through
writing. The scheduler then runs the task again on another worker.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("distributed")


from artifactgsi.build import build_dataset  # noqa: E402
from artifactgsi.simulate import SimConfig, simulate_dataset  # noqa: E402
from artifactgsi.testing import _quiet_console  # noqa: E402
from artifactgsi.workers import TaskError, check_workers, run_tasks  # noqa: E402
from tests.helpers.dask import KillOnce, local_cluster  # noqa: E402

CFG = SimConfig(patients=3, slices=2, size=32, seed=4, clean_patients=0, supersample=2)
SECRET = b"distributed-test-secret"


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _assert_same_tree(a: Path, b: Path) -> None:
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    assert fa, "nothing written"
    for name in fa:
        assert fa[name] == fb[name], name


@pytest.fixture(scope="module")
def serial(tmp_path_factory) -> tuple[Path, Path]:
    """The serial reference: raw tree and build (one process, no Dask)."""
    root = tmp_path_factory.mktemp("serial")
    simulate_dataset(CFG, root / "raw", console=_quiet_console())
    build_dataset(root / "raw", root / "built", secret=SECRET, test_fraction=0.34,
                  console=_quiet_console())
    return root / "raw", root / "built"


@pytest.fixture
def cluster():
    with local_cluster() as (c, client):
        yield c, client


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_two_local_workers_simulate_and_build_the_serial_bytes(serial, tmp_path):
    raw, built = serial
    simulate_dataset(CFG, tmp_path / "raw", workers=2, console=_quiet_console())
    _assert_same_tree(raw, tmp_path / "raw")
    report = build_dataset(tmp_path / "raw", tmp_path / "built", workers=2, secret=SECRET,
                           test_fraction=0.34, console=_quiet_console())
    _assert_same_tree(built, tmp_path / "built")
    assert report.resumed_patients == 0
    manifest = json.loads((tmp_path / "built" / "manifest.json").read_text())
    assert {e["path"] for e in manifest["files"]} >= {"README.md"}


@pytest.mark.slow
def test_simulate_worker_killed_mid_write_is_retried(serial, cluster, tmp_path):
    c, client = cluster
    marker = tmp_path / "killed"
    # write_ct_series is looked up at call time by write_patient: the first patient's
    # ordinary series is written into its temporary folder, then the worker dies.
    client.register_plugin(KillOnce("artifactgsi.dicom_write", "write_ct_series", str(marker),
                                    "call"))
    raw = tmp_path / "raw"
    simulate_dataset(CFG, raw, scheduler=c.scheduler_address, console=_quiet_console())
    assert marker.is_file(), "no worker was killed"
    assert not _alive(int(marker.read_text()))
    assert not list(raw.glob(".tmp-*")), "a half-written patient folder was left behind"
    _assert_same_tree(serial[0], raw)


@pytest.mark.slow
def test_build_worker_killed_mid_write_is_retried(serial, cluster, tmp_path):
    c, client = cluster
    marker = tmp_path / "killed"
    client.register_plugin(KillOnce("artifactgsi.build.patient", "_save_npz_atomic",
                                    str(marker), "tmp"))
    out = tmp_path / "built"
    report = build_dataset(serial[0], out, secret=SECRET, test_fraction=0.34,
                           scheduler=c.scheduler_address, keep_work=True,
                           console=_quiet_console())
    assert marker.is_file(), "no worker was killed"
    assert not _alive(int(marker.read_text()))
    assert report.resumed_patients == 0
    work = out / ".work"
    assert not [p for p in (work / "patients").iterdir() if ".tmp" in p.name]
    import shutil

    shutil.rmtree(work)
    _assert_same_tree(serial[1], out)


@pytest.mark.slow
def test_a_task_that_keeps_killing_workers_fails_clearly_and_the_rerun_resumes(serial,
                                                                                tmp_path):
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            local_cluster() as (c, client):
        marker = tmp_path / "killed"
        client.register_plugin(KillOnce("artifactgsi.dicom_write", "write_ct_series", str(marker),
                                        "call"))
        raw = tmp_path / "raw"
        with pytest.raises(TaskError, match="died 1 time "):
            simulate_dataset(CFG, raw, scheduler=c.scheduler_address,
                             console=_quiet_console())
    # The kill can stop the run before any patient is finished, and then raw/ was never made.
    done = [p for p in raw.iterdir() if (p / "truth.json").is_file()] if raw.is_dir() else []
    assert len(done) < CFG.patients  # the killed patient is not there, half-written or not
    stats = simulate_dataset(CFG, raw, console=_quiet_console())  # resume, serially
    assert stats["simulated"] == CFG.patients - len(done)
    _assert_same_tree(serial[0], raw)


def test_bad_worker_settings_fail_clearly():
    with pytest.raises(ValueError, match="--workers must be an integer >= 1"):
        check_workers(0)
    with pytest.raises(ValueError, match="--scheduler must be"):
        check_workers(2, "  ")
    with pytest.raises(ValueError, match="2 items but 1 names"):
        run_tasks(str, [1, 2], ["a"])


def test_serial_tasks_keep_the_order_and_report_each(tmp_path):
    seen = []
    assert run_tasks(str, [3, 1, 2], ["a", "b", "c"],
                     on_done=lambda i, r: seen.append((i, r))) == ["3", "1", "2"]
    assert seen == [(0, "3"), (1, "1"), (2, "2")]


def test_an_unreachable_scheduler_is_a_clear_error(tmp_path):
    with pytest.raises(TaskError, match="no such scheduler file"):
        simulate_dataset(CFG, tmp_path / "raw", scheduler=str(tmp_path / "scheduler.json"),
                         console=_quiet_console())
