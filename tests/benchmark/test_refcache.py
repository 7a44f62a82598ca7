"""The reference cache: scores with it equal scores without it, bit for bit; a cache of another
dataset revision or protocol is never read; a cache file cut short is rebuilt, not read."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmark.metrics import MARBENCH_V1, find_lpips_weights
from benchmark.refcache import ReferenceCache
from benchmark.results import Results
from benchmark.run import run_benchmark

pytestmark = pytest.mark.slow


def scores(r: Results) -> str:
    """Every per-slice value, exactly (repr of each float; NaN equals NaN)."""
    return repr([(s.patient_id, s.slice_index, s.scores, s.segmentation)
                 for s in r.per_slice])


def lpips_or_none() -> str | None:
    return "auto" if find_lpips_weights() is not None else None


@pytest.fixture(scope="module")
def uncached(tiny_built, tmp_path_factory):
    out = tmp_path_factory.mktemp("uncached")
    return run_benchmark("li", tiny_built.built, out=out, verbose=False,
                         lpips=lpips_or_none(), reference_cache=None)


def test_cached_scores_equal_uncached_bit_for_bit(tiny_built, uncached, tmp_path):
    cache = tmp_path / "cache"
    cold = run_benchmark("li", tiny_built.built, out=tmp_path / "a", verbose=False,
                         lpips=lpips_or_none(), reference_cache=cache)
    warm = run_benchmark("li", tiny_built.built, out=tmp_path / "b", verbose=False,
                         lpips=lpips_or_none(), reference_cache=cache)
    # cold: computed once (the ideal image's states are shared by method vs ideal and GSI vs
    # ideal within the run); warm: nothing computed
    assert cold.timing.reference_states_computed > 0
    assert warm.timing.reference_states_computed == 0
    assert warm.timing.reference_states_reused > 0
    # exact equality (floats compared with ==), every comparison and metric
    assert scores(cold) == scores(uncached)
    assert scores(warm) == scores(uncached)
    for key, comp in uncached.comparisons.items():
        assert repr(warm.comparisons[key].summary) == repr(comp.summary)
    if lpips_or_none():
        assert "lpips" in warm.comparisons["method_vs_gsi"].summary


def test_another_method_reuses_the_references(tiny_built, tmp_path):
    cache = tmp_path / "cache"
    run_benchmark("li", tiny_built.built, out=tmp_path / "li", verbose=False, lpips=None,
                  reference_cache=cache)
    other = run_benchmark("identity", tiny_built.built, out=tmp_path / "id", verbose=False,
                          lpips=None, reference_cache=cache)
    fresh = run_benchmark("identity", tiny_built.built, out=tmp_path / "id0", verbose=False,
                          lpips=None, reference_cache=None)
    assert other.timing.reference_states_computed == 0
    assert scores(other) == scores(fresh)


def test_another_protocol_or_dataset_revision_never_reads_the_cache(tiny_built, tmp_path):
    from dataclasses import replace

    def counts(r: Results) -> tuple[int, int]:
        return r.timing.reference_states_reused, r.timing.reference_states_computed

    cache = tmp_path / "cache"
    run_benchmark("identity", tiny_built.built, out=tmp_path / "a", verbose=False, lpips=None,
                  reference_cache=cache)
    # Each run below finds exactly what a run into an empty cache finds (it may reuse states
    # shared within the run, never the earlier run's).
    other = replace(MARBENCH_V1, noise_roi_radius_mm=MARBENCH_V1.noise_roi_radius_mm + 1.0)
    kw = {"verbose": False, "lpips": None, "protocol": other}
    shared = run_benchmark("identity", tiny_built.built, out=tmp_path / "b",
                           reference_cache=cache, **kw)
    empty = run_benchmark("identity", tiny_built.built, out=tmp_path / "b0",
                          reference_cache=tmp_path / "empty1", **kw)
    assert counts(shared) == counts(empty) and counts(empty)[1] > 0
    # another revision of the data: a copy with a different manifest
    data = tmp_path / "data"
    shutil.copytree(tiny_built.built, data)
    manifest = data / "manifest.json"
    manifest.write_text(manifest.read_text().replace("{", '{"note": "another build", ', 1))
    kw = {"verbose": False, "lpips": None}
    shared = run_benchmark("identity", data, out=tmp_path / "c", reference_cache=cache, **kw)
    empty = run_benchmark("identity", data, out=tmp_path / "c0",
                          reference_cache=tmp_path / "empty2", **kw)
    assert counts(shared) == counts(empty) and counts(empty)[1] > 0
    # the key names every input: different keys, different folders
    a = ReferenceCache(cache, {"dataset_manifest_sha256": "a" * 64})
    b = ReferenceCache(cache, {"dataset_manifest_sha256": "b" * 64})
    assert a.folder != b.folder


def test_a_cache_file_cut_short_is_rebuilt_not_read(tiny_built, uncached, tmp_path):
    from safetensors.numpy import load_file

    cache = tmp_path / "cache"
    run_benchmark("li", tiny_built.built, out=tmp_path / "a", verbose=False,
                  lpips=lpips_or_none(), reference_cache=cache)
    files = sorted(cache.rglob("*.safetensors"))
    assert len(files) >= 2
    victim = files[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])       # cut short (a full disk, a bad copy)
    emptied = files[-1]
    emptied.write_bytes(b"")                           # nothing but a name
    # a run killed mid-write leaves its temporary file, never under the final name
    stray = victim.with_name(f".{victim.name}.tmp999-deadbeef")
    stray.write_bytes(data[: len(data) // 3])
    r = run_benchmark("li", tiny_built.built, out=tmp_path / "b", verbose=False,
                      lpips=lpips_or_none(), reference_cache=cache)
    assert r.timing.reference_states_computed > 0
    assert scores(r) == scores(uncached)
    # rebuilt: both files are whole again
    for f in (victim, emptied):
        assert load_file(f)


def test_cache_file_round_trip_keeps_every_dtype_and_shape(tmp_path):
    from safetensors import safe_open

    root = tmp_path / "cache"
    # "f", "m", "x", "n": one shape for every slice (stacked in the file); "v": the shape
    # differs (one tensor per slice); "roi": only in some slices; "notes": text
    states = [{"f": np.arange(12, dtype=np.float32).reshape(3, 4), "m": np.eye(3, dtype=bool),
               "x": np.asarray(2.5), "n": np.asarray([7], dtype=np.int64),
               "v": np.arange(3.0), "roi": np.ones((2, 2), bool),
               "notes": np.asarray(["metal at the edge", "ü"], dtype=str)},
              {"f": np.full((3, 4), -1.0, dtype=np.float32), "m": np.zeros((3, 3), bool),
               "x": np.asarray(np.nan), "n": np.asarray([1], dtype=np.int64),
               "v": np.arange(5.0), "notes": np.asarray([], dtype=str)},
              {"f": np.zeros((3, 4), dtype=np.float32), "m": np.ones((3, 3), bool),
               "x": np.asarray(-1.0), "n": np.asarray([0], dtype=np.int64),
               "v": np.arange(3.0), "roi": np.zeros((2, 2), bool),
               "notes": np.asarray(["x"], dtype=str)}]
    a = ReferenceCache(root, {"dataset_manifest_sha256": "c" * 64})
    a.put_many("s", "gsi", [("P1", 3), ("P1", 10), ("P1", 7)], states)
    a.close()
    (path,) = (root / a.key_hash).rglob("*.safetensors")
    with safe_open(str(path), framework="np") as f:
        assert sorted(f.keys()) == ["*/f", "*/m", "*/n", "*/roi", "*/x", "10/v", "3/v", "7/v"]
        assert f.get_tensor("*/f").shape == (3, 3, 4) and f.get_tensor("*/roi").shape == (2, 2, 2)
    b = ReferenceCache(root, {"dataset_manifest_sha256": "c" * 64})
    got = b.get_many("s", "gsi", [("P1", 10), ("P1", 3), ("P1", 4), ("P1", 7)])
    assert got[2] is None and b.hits == 3 and b.misses == 1
    assert "roi" not in got[0]  # type: ignore[operator]
    for want, have in zip([states[1], states[0], states[2]], [got[0], got[1], got[3]],
                          strict=True):
        assert set(have) == set(want)
        for k in want:
            assert have[k].shape == want[k].shape
            assert (have[k].dtype.kind == "U") if k == "notes" else have[k].dtype == want[k].dtype
            np.testing.assert_array_equal(have[k], want[k])


def test_at_its_limit_the_cache_evicts_the_least_recently_used_other_key(tmp_path):
    import os

    root = tmp_path / "cache"
    state = [{"x": np.zeros(10_000)}]  # 80 kB
    old = ReferenceCache(root, {"dataset_manifest_sha256": "1" * 64}, max_bytes=200_000)
    old.put_many("s", "gsi", [("P", 0)], state)
    old.close()
    older = ReferenceCache(root, {"dataset_manifest_sha256": "2" * 64}, max_bytes=200_000)
    older.put_many("s", "gsi", [("P", 0)], state)
    older.close()
    os.utime(older.folder / "key.json", (1, 1))  # used long ago
    new = ReferenceCache(root, {"dataset_manifest_sha256": "3" * 64}, max_bytes=200_000)
    new.put_many("s", "gsi", [("P", 0)], state)
    new.close()
    assert new.evicted == [older.key_hash] and new.unwritten == 0
    assert not older.folder.exists() and old.folder.exists()
    assert ReferenceCache(root, new.key).get_many("s", "gsi", [("P", 0)])[0] is not None
    # this key alone over the limit: nothing of its own is deleted, the rest is not stored
    big = ReferenceCache(root, new.key, max_bytes=100_000)
    big.put_many("s", "gsi", [("P", 1)], [{"x": np.zeros(20_000)}])
    big.close()
    assert big.unwritten > 0 and new.folder.exists()
    assert ReferenceCache(root, new.key).get_many("s", "gsi", [("P", 0)])[0] is not None


def test_no_manifest_means_no_disk_cache(tmp_path):
    c = ReferenceCache(None, {"dataset_manifest_sha256": None})
    c.put_many("s", "gsi", [("P", 0)], [{"x": np.zeros(2)}])
    c.close()
    assert c.folder is None
    assert not list(Path(tmp_path).iterdir())
