"""``marbench run`` sharded by patient: the merged run is the serial run, byte for byte (but
the fields that describe the run itself), with Dask workers, after a worker is killed, and
when a rerun resumes from finished patients."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark.distributed import PartsError, parts_dir, run_distributed
from benchmark.run import run_benchmark

#: Fields of results.json that describe the run itself, not its results.
PER_RUN = ("created_utc", "hardware", "timing")
#: The train split of the tiny build holds two patients of 4 slices; batches of 3 slices
#: cross the patients' boundary in the serial run.
OPTS = dict(split="train", lpips=None, batch_size=3, verbose=False)
#: Quick settings for the merge logic: the identity method, image metrics only.
QUICK = dict(OPTS, clinical=False)


def _results(run_dir: Path) -> dict:
    d = json.loads((run_dir / "results.json").read_text())
    for k in PER_RUN:
        d.pop(k)
    return d


def _assert_same_run(a: Path, b: Path) -> None:
    assert _results(a) == _results(b)
    names = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    assert "figure.png" in names and "per_slice.csv" in names
    for name in names:
        if name != "results.json":
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.fixture(scope="module")
def serial(tiny_built, tmp_path_factory) -> Path:
    """LI with every metric, serially."""
    out = tmp_path_factory.mktemp("serial") / "li"
    cache = tmp_path_factory.mktemp("hf-cache")
    run_benchmark("li", tiny_built.built, out=out, data_cache_dir=cache, **OPTS)
    return out


@pytest.fixture(scope="module")
def serial_quick(tiny_built, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serial") / "identity"
    cache = tmp_path_factory.mktemp("hf-cache")
    run_benchmark("identity", tiny_built.built, out=out, data_cache_dir=cache, **QUICK)
    return out


@pytest.mark.slow
def test_resume_keeps_finished_patients_and_merges_the_serial_run(tiny_built, serial_quick,
                                                                   tmp_path, monkeypatch):
    import benchmark.distributed as dist

    out = tmp_path / "identity"
    kw = dict(QUICK, data_cache_dir=tmp_path / "cache")
    run_distributed("identity", tiny_built.built, out=out, workers=1, keep_parts=True, **kw)
    _assert_same_run(serial_quick, out)
    parts = sorted(p for p in parts_dir(out).iterdir() if p.is_dir())
    assert len(parts) == 2
    import shutil

    shutil.rmtree(parts[1])  # as if the run had stopped before the second patient
    calls = []
    real = dist._run_part
    monkeypatch.setattr(dist, "_run_part", lambda a: calls.append(a[3]) or real(a))
    run_distributed("identity", tiny_built.built, out=out, workers=1, **kw)
    assert len(calls) == 1
    _assert_same_run(serial_quick, out)
    assert not parts_dir(out).exists()


@pytest.mark.slow
def test_parts_that_disagree_are_refused(tiny_built, tmp_path):
    out = tmp_path / "identity"
    kw = dict(QUICK, data_cache_dir=tmp_path / "cache", limit=6)
    run_distributed("identity", tiny_built.built, out=out, workers=1, keep_parts=True, **kw)
    part = sorted(p for p in parts_dir(out).iterdir() if p.is_dir())[1]
    d = json.loads((part / "results.json").read_text())
    d["method"]["version"] = "another"
    (part / "results.json").write_text(json.dumps(d))
    with pytest.raises(PartsError, match="differs from patient .* in method"):
        run_distributed("identity", tiny_built.built, out=out, workers=1, **kw)
    r = json.loads((out / "results.json").read_text())  # the first run's, untouched
    assert r["dataset"]["n_slices_scored"] == 6 and r["dataset"]["limit"] == 6


@pytest.mark.slow
def test_two_local_workers_give_the_serial_run(tiny_built, serial, tmp_path):
    out = tmp_path / "li"
    run_distributed("li", tiny_built.built, out=out, workers=2,
                    data_cache_dir=tmp_path / "cache", **OPTS)
    _assert_same_run(serial, out)


@pytest.mark.slow
def test_a_worker_killed_mid_run_is_replaced_and_the_run_is_the_same(tiny_built, serial,
                                                                      tmp_path):
    from tests.helpers.dask import KillOnce, local_cluster

    marker = tmp_path / "killed"
    out = tmp_path / "li"
    # the part's predictions file is begun, then the worker ends
    with local_cluster() as (c, client):
        client.register_plugin(KillOnce("benchmark.run.runner", "reduce_batch", str(marker),
                                        "call"))
        run_distributed("li", tiny_built.built, out=out, scheduler=c.scheduler_address,
                        keep_parts=True, data_cache_dir=tmp_path / "cache", **OPTS)
    assert marker.is_file(), "no worker was killed"
    left = [p.name for p in parts_dir(out).iterdir() if p.name.startswith(".")
            and "partial" in p.name]
    assert not left, f"half-written parts left: {left}"
    _assert_same_run(serial, out)
