"""artifactgsi.hub: manifest checks, and download / push through a fake Hugging Face Hub.

The manifests are written by the fixture with ``hashlib`` and ``pyarrow`` directly, so they are an
independent reference for :func:`verify_manifest`. Hub tests run the real ``huggingface_hub`` and
``datasets`` clients in a subprocess against ``tests.helpers.fakehub.FakeHub`` (see the root
conftest.py) and check both what arrives on disk and what the server saw.
"""

from __future__ import annotations

import glob
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from artifactgsi import settings
from artifactgsi.hub import (
    DatasetCardError,
    ManifestError,
    glob_to_regex,
    validate_folder,
    verify_manifest,
)
from tests.helpers.fakehub import REPO_ID, make_dataset_folder, write_manifest


def files_of(folder: Path) -> dict[str, bytes]:
    """Non-hidden files under ``folder`` (symlinks followed) -> content."""
    out = {}
    for path in folder.rglob("*"):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and not any(part.startswith(".") for part in rel.split("/")):
            out[rel] = path.read_bytes()
    return out


def content_gets(hub, repo_id: str, path: str) -> list:
    """GET requests that delivered ``path``'s current content (resolve, or the CDN for LFS)."""
    sha256 = hashlib.sha256(hub.files(repo_id)[path]).hexdigest()
    return [r for r in hub.requests if r.method == "GET" and r.status in (200, 206) and (
        (r.server == "cdn" and sha256 in r.path)
        or (r.server == "hub" and r.path.partition("?")[0].endswith("/" + path)))]


def flip_middle_byte(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:]


# ---------------------------------------------------------------------------------------------
# Manifest and card checks (no network)
# ---------------------------------------------------------------------------------------------
def test_verify_manifest_names_every_bad_file(dataset_folder):
    folder, _ = dataset_folder
    verify_manifest(folder)  # as built: consistent
    flipped, truncated, removed = ("pairs/test-00000-of-00001.parquet",
                                   "clean/train-00000-of-00001.parquet", "README.md")
    (folder / flipped).write_bytes(flip_middle_byte((folder / flipped).read_bytes()))
    (folder / truncated).write_bytes((folder / truncated).read_bytes()[:-7])
    (folder / removed).unlink()
    (folder / "pairs" / "train-00001-of-00002.parquet").write_bytes(b"stale shard")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "ignored.lock").write_bytes(b"hidden files are not dataset files")

    with pytest.raises(ManifestError) as info:
        verify_manifest(folder)
    err = info.value
    assert err.bad_files == sorted([flipped, truncated, removed,
                                    "pairs/train-00001-of-00002.parquet"])
    assert "sha256" in err.problems[flipped]
    size = (folder / truncated).stat().st_size
    assert err.problems[truncated].startswith(f"{size} bytes, the manifest says {size + 7}")
    assert "missing" in err.problems[removed]
    assert "not listed" in err.problems["pairs/train-00001-of-00002.parquet"]
    assert str(folder) in str(err) and flipped in str(err)  # the message names folder and file


def test_verify_manifest_checks_parquet_row_counts_and_structure(dataset_folder):
    folder, _ = dataset_folder
    manifest_path = folder / settings.MANIFEST_FILENAME
    manifest = json.loads(manifest_path.read_text())
    entry = next(e for e in manifest["files"] if e["path"] == "pairs/train-00000-of-00001.parquet")
    entry["rows"] = 7  # the shard holds 6 rows
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError) as info:
        verify_manifest(folder)
    assert info.value.problems == {entry["path"]: "6 rows, the manifest says 7"}

    manifest["files"].append({"path": "../outside.parquet", "sha256": "0" * 64, "bytes": 1})
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"must be relative, POSIX, without '\.\.'"):
        verify_manifest(folder)
    manifest_path.write_text(json.dumps({**manifest, "format": "other/2"}))
    with pytest.raises(ManifestError, match="format is 'other/2'"):
        verify_manifest(folder)
    manifest_path.unlink()
    with pytest.raises(ManifestError, match="manifest.json: missing"):
        verify_manifest(folder)


def test_validate_folder_checks_the_card_against_the_manifest(dataset_folder):
    folder, _ = dataset_folder
    metadata = validate_folder(folder)
    assert [c["config_name"] for c in metadata["configs"]] == ["pairs", "clean"]

    card = (folder / "README.md").read_text()
    (folder / "README.md").write_text(card.replace("clean/train-*.parquet", "clean/dev-*.parquet"))
    write_manifest(folder)
    with pytest.raises(DatasetCardError) as info:
        validate_folder(folder)
    assert info.value.problems == {
        "configs[clean]": "data_files 'clean/dev-*.parquet' matches no listed file",
        "clean/train-00000-of-00001.parquet":
            "listed Parquet file that no config's data_files matches",
    }
    (folder / "README.md").write_text("# no front matter\n")
    write_manifest(folder)
    with pytest.raises(DatasetCardError, match="no YAML front matter"):
        validate_folder(folder)


@pytest.mark.parametrize("pattern", [
    "pairs/train-*.parquet", "*.parquet", "*/*.parquet", "**/*.parquet", "pairs/**",
    "**/test-0000?-of-*.parquet", "[cp]*/train-*", "README.md", "pairs/*",
])
def test_data_files_globs_match_like_the_glob_module(tmp_path, pattern):
    paths = ["README.md", "manifest.json", "pairs/train-00000-of-00002.parquet",
             "pairs/train-00001-of-00002.parquet", "pairs/test-00000-of-00001.parquet",
             "clean/train-00000-of-00001.parquet", "generalization/a/test-00000-of-00001.parquet"]
    for rel in paths:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    # Reference: the stdlib glob on real files (recursive ** like fsspec, which datasets uses).
    expected = {p for p in glob.glob(pattern, root_dir=tmp_path, recursive=True)
                if (tmp_path / p).is_file()}
    regex = glob_to_regex(pattern)
    assert {p for p in paths if regex.fullmatch(p)} == expected


# ---------------------------------------------------------------------------------------------
# The fake Hub itself: HTTP semantics the clients rely on
# ---------------------------------------------------------------------------------------------
def test_fake_hub_answers_ranges_and_errors_like_the_hub(fake_hub, dataset_folder):
    import http.client

    folder, _ = dataset_folder
    commit = fake_hub.add_folder(REPO_ID, folder)
    data = (folder / "README.md").read_bytes()
    port = int(fake_hub.endpoint.rsplit(":", 1)[1])

    def request(method: str, path: str, **headers: str):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        conn.close()
        return response.status, dict(response.getheaders()), body

    url = f"/datasets/{REPO_ID}/resolve/main/README.md"
    status, headers, body = request("HEAD", url)
    assert (status, body) == (200, b"")
    assert headers["X-Repo-Commit"] == commit and headers["Content-Length"] == str(len(data))
    git_blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # as `git hash-object`
    assert headers["ETag"] == f'"{git_blob}"'
    status, headers, body = request("GET", url, Range="bytes=2-5")  # RFC 9110 byte ranges
    assert (status, body, headers["Content-Range"]) == (206, data[2:6], f"bytes 2-5/{len(data)}")
    assert request("GET", url, Range="bytes=-3")[2] == data[-3:]
    status, headers, _ = request("GET", url, Range=f"bytes={len(data)}-")
    assert (status, headers["Content-Range"]) == (416, f"bytes */{len(data)}")

    status, headers, _ = request("HEAD", f"/datasets/{REPO_ID}/resolve/main/nope.txt")
    assert (status, headers["X-Error-Code"], headers["X-Repo-Commit"]) == (
        404, "EntryNotFound", commit)
    assert request("GET", f"/api/datasets/{REPO_ID}/revision/v9")[1]["X-Error-Code"] == (
        "RevisionNotFound")
    assert request("GET", "/api/datasets/a/b/revision/main")[1]["X-Error-Code"] == "RepoNotFound"
    assert fake_hub.unknown_routes == []
    # A route the fake Hub does not serve is a 404 and is recorded for the test to see.
    assert request("GET", f"/api/datasets/{REPO_ID}/no-such-route")[0] == 404
    assert fake_hub.unknown_routes == [f"GET /api/datasets/{REPO_ID}/no-such-route"]


# ---------------------------------------------------------------------------------------------
# Download through the fake Hub
# ---------------------------------------------------------------------------------------------
def test_download_returns_identical_verified_files(fake_hub, hub_client, dataset_folder,
                                                   tmp_path):
    folder, _ = dataset_folder
    commit = fake_hub.add_folder(REPO_ID, folder)

    out = hub_client("""
        from artifactgsi.hub import download
        emit({"path": str(download())})  # default repo id, default (HF cache) location
    """)
    cached = Path(out["path"])
    assert cached.parent.name == "snapshots" and cached.name == commit
    assert files_of(cached) == files_of(folder)
    manifest = json.loads((cached / "manifest.json").read_text())
    for entry in manifest["files"]:  # independent re-hash of what arrived
        assert hashlib.sha256((cached / entry["path"]).read_bytes()).hexdigest() == entry["sha256"]
    assert len(fake_hub.requests_for("/tree/", "GET")) == 4  # 8 entries, 2 per page: paginated
    assert fake_hub.unknown_routes == []

    # Into a plain folder: copied from the cache, no file content fetched again.
    def content_requests() -> int:
        return sum(r.server == "cdn" or (r.method == "GET" and "/resolve/" in r.path)
                   for r in fake_hub.requests)

    gets_before = content_requests()
    local = tmp_path / "plain"
    out = hub_client(f"""
        from artifactgsi.hub import download
        emit({{"path": str(download({REPO_ID!r}, local_dir={str(local)!r}))}})
    """)
    assert Path(out["path"]) == local.resolve()
    assert files_of(local) == files_of(folder)
    assert content_requests() == gets_before

    # Offline: the cached copy is verified without a single request.
    n_requests = len(fake_hub.requests)
    out = hub_client("""
        from artifactgsi.hub import download
        emit({"path": str(download())})
    """, HF_HUB_OFFLINE="1")
    assert Path(out["path"]) == cached and len(fake_hub.requests) == n_requests


def test_download_of_a_repo_that_disagrees_with_its_manifest_raises(fake_hub, hub_client,
                                                                   dataset_folder):
    folder, _ = dataset_folder
    fake_hub.add_folder(REPO_ID, folder)
    victim = "pairs/test-00000-of-00001.parquet"
    fake_hub.tamper(REPO_ID, victim, flip_middle_byte((folder / victim).read_bytes()))

    out = hub_client("""
        from artifactgsi.hub import ManifestError, download
        try:
            download()
        except ManifestError as err:
            emit({"bad": err.bad_files, "message": str(err)})
    """)
    assert out["bad"] == [victim]
    assert f"{victim}: sha256" in out["message"] and "downloaded twice" in out["message"]
    assert len(content_gets(fake_hub, REPO_ID, victim)) == 2  # downloaded, then once more


def test_download_refetches_a_file_corrupted_in_transit(fake_hub, hub_client, dataset_folder):
    folder, _ = dataset_folder
    fake_hub.add_folder(REPO_ID, folder)
    victim = "clean/train-00000-of-00001.parquet"
    fake_hub.inject_fault(REPO_ID, victim, "corrupt")  # same length, one byte flipped, once

    out = hub_client("""
        from artifactgsi.hub import download
        emit({"path": str(download())})
    """)
    assert files_of(Path(out["path"])) == files_of(folder)
    assert len(content_gets(fake_hub, REPO_ID, victim)) == 2
    assert "do not match the manifest, downloading them again" in out["stderr"]


def test_interrupted_download_resumes_with_a_range_request(fake_hub, hub_client, tmp_path):
    # huggingface_hub writes a download in DOWNLOAD_CHUNK_SIZE (10 MiB) pieces and, when the
    # connection drops, asks for the rest from the last complete piece ("Range: bytes=K-").
    # So the shard must be > 10 MiB and the drop must come after the first piece.
    folder = tmp_path / "built"
    make_dataset_folder(folder, big_rows=480)
    fake_hub.add_folder(REPO_ID, folder)
    big = "generalization/test-00000-of-00001.parquet"
    size = (folder / big).stat().st_size
    cut = size - 1_000_000
    fake_hub.inject_fault(REPO_ID, big, "drop", after_bytes=cut)  # connection closed once

    out = hub_client("""
        from huggingface_hub import constants
        from artifactgsi.hub import download
        emit({"path": str(download()), "chunk": constants.DOWNLOAD_CHUNK_SIZE})
    """)
    assert out["chunk"] < cut, f"make the shard bigger than {out['chunk']} bytes"
    assert files_of(Path(out["path"])) == files_of(folder)
    resume_at = cut - cut % out["chunk"]
    gets = content_gets(fake_hub, REPO_ID, big)
    assert [(g.status, g.range) for g in gets] == [(200, None), (206, f"bytes={resume_at}-")]
    assert "Trying to resume download" in out["stderr"]


def test_rerun_after_a_failed_download_fetches_only_the_missing_file(fake_hub, hub_client,
                                                                     dataset_folder):
    folder, _ = dataset_folder
    fake_hub.add_folder(REPO_ID, folder)
    victim = "pairs/train-00000-of-00001.parquet"
    fake_hub.inject_fault(REPO_ID, victim, "error500")

    failed = hub_client("""
        from artifactgsi.hub import download
        download()
    """, expect_error=True)
    assert "500" in failed["stderr"]
    first_run = len(fake_hub.requests)

    out = hub_client("""
        from artifactgsi.hub import download
        emit({"path": str(download())})
    """)
    assert files_of(Path(out["path"])) == files_of(folder)
    refetched = {r.path for r in fake_hub.requests[first_run:]
                 if r.method == "GET" and (r.server == "cdn" or "/resolve/" in r.path)}
    sha256 = hashlib.sha256((folder / victim).read_bytes()).hexdigest()
    assert len(refetched) == 1 and sha256 in refetched.pop()


def test_hub_errors_reach_the_caller_as_huggingface_hub_exceptions(fake_hub, hub_client,
                                                                   dataset_folder):
    folder, _ = dataset_folder
    fake_hub.add_folder("fake-user/private-build", folder, private=True)
    out = hub_client("""
        from artifactgsi.hub import download
        outcome = {}
        for name, kwargs in {
            "missing repo": {"repo_id": "artifactgsi/does-not-exist"},
            "missing revision": {"repo_id": "fake-user/private-build", "revision": "v9"},
            "private, no token": {"repo_id": "fake-user/private-build", "token": False},
            "private, token": {"repo_id": "fake-user/private-build"},
        }.items():
            try:
                download(**kwargs)
                outcome[name] = "ok"
            except Exception as err:
                outcome[name] = type(err).__name__
        emit(outcome)
    """)
    assert {k: v for k, v in out.items() if k != "stderr"} == {
        "missing repo": "RepositoryNotFoundError",
        "missing revision": "RevisionNotFoundError",
        "private, no token": "RepositoryNotFoundError",
        "private, token": "ok",
    }


def test_load_dataset_through_the_hub_returns_exact_int16_hu(fake_hub, hub_client,
                                                             dataset_folder, tmp_path):
    folder, written = dataset_folder
    fake_hub.add_folder(REPO_ID, folder)
    npz = tmp_path / "loaded.npz"
    out = hub_client(f"""
        import datasets, numpy as np
        ds = datasets.load_dataset({REPO_ID!r}, "pairs")
        arrays = {{split: ds[split].with_format("numpy", dtype=None)[:]["gsi"] for split in ds}}
        np.savez({str(npz)!r}, **arrays)
        emit({{"splits": sorted(ds), "feature": repr(ds["train"].features["gsi"])}})
    """)
    assert out["splits"] == ["test", "train"]
    assert "int16" in out["feature"]
    loaded = np.load(npz)
    for split in ("train", "test"):
        assert loaded[split].dtype == np.int16
        np.testing.assert_array_equal(loaded[split], written[f"pairs/{split}"])
    assert fake_hub.requests_for("/resolve/main/README.md", "GET")  # the card chose the files
    assert fake_hub.unknown_routes == []


# ---------------------------------------------------------------------------------------------
# Push through the fake Hub
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("disable_xet", ["1", "0"], ids=["http-commit", "xet-pipeline"])
def test_push_then_download_round_trip(fake_hub, hub_client, dataset_folder, disable_xet):
    folder, _ = dataset_folder
    out = hub_client(f"""
        from pathlib import Path
        from artifactgsi.hub import download, push
        url = push(Path({str(folder)!r}), "ArtifactGSI-Test")  # namespace from the token
        emit({{"url": url, "path": str(download("fake-user/ArtifactGSI-Test"))}})
    """, HF_HUB_DISABLE_XET=disable_xet)
    repo_id = "fake-user/ArtifactGSI-Test"
    head = fake_hub.head(repo_id)
    assert out["url"] == f"{fake_hub.endpoint}/datasets/{repo_id}/commit/{head}"
    assert fake_hub.repos[("dataset", repo_id)].private  # push defaults to private
    on_server = fake_hub.files(repo_id)
    assert on_server.pop(".gitattributes")  # the Hub's own file survives the push
    assert on_server == files_of(folder)
    assert files_of(Path(out["path"])) == files_of(folder)
    assert fake_hub.requests_for("/api/validate-yaml", "POST")
    assert fake_hub.unknown_routes == []


def test_push_replaces_stale_shards_and_old_revisions_stay_downloadable(fake_hub, hub_client,
                                                                        tmp_path):
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    make_dataset_folder(v1, seed=1)
    make_dataset_folder(v2, seed=2, train_shards=2)  # train split re-sharded in two files
    repo_id = "fake-user/ArtifactGSI-Test"
    out = hub_client(f"""
        from pathlib import Path
        from artifactgsi.hub import download, push
        first = push(Path({str(v1)!r}), {repo_id!r}, private=False).rsplit("/", 1)[-1]
        second = push(Path({str(v2)!r}), {repo_id!r}).rsplit("/", 1)[-1]
        emit({{"first": first, "second": second, "latest": str(download({repo_id!r})),
              "old": str(download({repo_id!r}, revision=first))}})
    """)
    assert out["second"] == fake_hub.head(repo_id) != out["first"]
    assert not fake_hub.repos[("dataset", repo_id)].private
    assert "pairs/train-00000-of-00001.parquet" not in fake_hub.files(repo_id)
    assert files_of(Path(out["latest"])) == files_of(v2)
    assert files_of(Path(out["old"])) == files_of(v1)


def test_push_to_a_branch_leaves_main_alone(fake_hub, hub_client, tmp_path):
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    make_dataset_folder(v1, seed=1)
    make_dataset_folder(v2, seed=2)
    repo_id = "fake-user/ArtifactGSI-Test"
    out = hub_client(f"""
        from pathlib import Path
        from artifactgsi.hub import download, push
        push(Path({str(v1)!r}), {repo_id!r})
        push(Path({str(v2)!r}), {repo_id!r}, revision="dev")
        emit({{"main": str(download({repo_id!r})),
              "dev": str(download({repo_id!r}, revision="dev"))}})
    """)
    repo = fake_hub.repos[("dataset", repo_id)]
    assert set(repo.branches) == {"main", "dev"}
    assert repo.commits[repo.branches["dev"]].parent == repo.branches["main"]
    assert files_of(Path(out["main"])) == files_of(v1)
    assert files_of(Path(out["dev"])) == files_of(v2)


def test_push_refuses_an_invalid_folder_before_any_request(fake_hub, hub_client,
                                                          dataset_folder):
    folder, _ = dataset_folder
    victim = folder / "pairs" / "test-00000-of-00001.parquet"
    victim.write_bytes(flip_middle_byte(victim.read_bytes()))
    out = hub_client(f"""
        from pathlib import Path
        from artifactgsi.hub import ManifestError, push
        try:
            push(Path({str(folder)!r}), "fake-user/ArtifactGSI-Test")
        except ManifestError as err:
            emit({{"bad": err.bad_files}})
    """)
    assert out["bad"] == ["pairs/test-00000-of-00001.parquet"]
    assert fake_hub.requests == []

