"""A fake Hugging Face Hub on 127.0.0.1 for tests (stdlib only).

It speaks the HTTP routes that ``huggingface_hub`` (2.x) and ``datasets`` (5.x) call to download,
stream and push a repository, with the headers and error codes those clients check:

    GET  /api/whoami-v2
    POST /api/repos/create                              (409 + {"url"} if it exists)
    POST /api/validate-yaml                             (400 + {"errors"} on bad YAML)
    GET  /api/{type}s/{repo}[/revision/{rev}]           (repo info: sha, siblings, cardData)
    GET  /api/{type}s/{repo}/tree/{rev}[/{path}]        (recursive, cursor-paginated by Link header)
    POST /api/{type}s/{repo}/paths-info/{rev}           (form: paths=..., expand=...)
    POST /api/{type}s/{repo}/preupload/{rev}            (always uploadMode "regular": no LFS / Xet)
    POST /api/{type}s/{repo}/commit/{rev}               (NDJSON: header, file (base64), deletedFile,
                                                         deletedFolder, lfsFile of a known blob)
    POST /api/{type}s/{repo}/branch/{branch}            (409 if it exists)
    HEAD/GET /[{type}s/]{repo}/resolve/{rev}/{path}     (X-Repo-Commit, ETag, Content-Length, Range)

Pull requests (``create_commit(..., create_pr=True)``): ``/commit/main?create_pr=1`` commits to a
new ref ``refs/pr/<n>`` (readable as a revision, like a branch) and answers ``pullRequestUrl``;

    GET  /api/{type}s/{repo}/discussions                (get_repo_discussions: type, status, author)
    GET  /api/{type}s/{repo}/discussions/{n}            (get_discussion_details)
    POST /api/{type}s/{repo}/discussions/{n}/merge      (merge_pull_request: a commit on main)
    POST /api/{type}s/{repo}/discussions/{n}/status     (change_discussion_status: open / closed)

``{repo}`` may be ``namespace/name`` or a single segment; ``{rev}`` a branch or a full commit sha.
Errors carry ``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound) as on the real Hub.

Files are stored in memory per commit, so every commit stays downloadable. Files seeded with
:meth:`FakeHub.add_folder` whose names look binary (``.parquet`` ...) are stored as Git LFS
objects, as the real Hub's default ``.gitattributes`` does: their ``resolve`` answers ``302`` to a
second server on another port (the "CDN", a different origin, so the client stops at the redirect
and reads ``X-Linked-Etag`` / ``X-Linked-Size`` as it does with the real CDN). Files pushed through
``/commit`` are regular git blobs (ETag = git blob sha1), because preupload answers "regular".

Every request is recorded in :attr:`FakeHub.requests`; a route the server does not know is
answered 404 and also recorded in :attr:`FakeHub.unknown_routes`, so a test can assert that the
clients called nothing unexpected. :meth:`FakeHub.inject_fault` makes the next GET of a file drop
the connection after N bytes, serve corrupted bytes, or fail with HTTP 500.

:func:`make_dataset_folder` writes a tiny built dataset (card, Parquet shards, manifest) to serve.
Run ``python tests/helpers/fakehub.py FOLDER [REPO_ID]`` to serve a folder by hand.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlencode

import numpy as np
import yaml

# Extensions the real Hub's default .gitattributes sends to LFS (a subset that covers our files).
LFS_SUFFIXES = (".parquet", ".arrow", ".safetensors", ".bin", ".npy", ".npz", ".gz", ".zip", ".png")
# The .gitattributes the real Hub commits when it creates a dataset repo (abridged).
DEFAULT_GITATTRIBUTES = "".join(
    f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES
).encode()
_API_ACTIONS = ("revision", "tree", "paths-info", "preupload", "commit", "branch", "discussions")
_TYPE_PREFIX = {"models": "model", "datasets": "dataset", "spaces": "space"}
_SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")

FaultKind = Literal["drop", "corrupt", "error500"]


def git_blob_sha1(data: bytes) -> str:
    """Git blob id, ``sha1("blob <len>\\0" + data)``: the Hub's ETag of regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class Blob:
    """One file's content; ``lfs`` says whether git stores it as an LFS pointer."""

    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        """The Git LFS pointer file that git itself stores for an LFS blob."""
        return (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
            f"size {len(self.data)}\n"
        ).encode()

    @property
    def git_oid(self) -> str:
        """Git blob id as listed by the tree API: of the pointer for LFS files, else of the data."""
        return git_blob_sha1(self.pointer if self.lfs else self.data)


@dataclass
class Commit:
    sha: str
    parent: str | None
    files: dict[str, Blob]
    title: str
    date: str


@dataclass
class PullRequest:
    """A pull request: its commits live on ``refs/pr/<num>``; ``base`` is the commit it started
    from (its changes are what differs from ``base``)."""

    num: int
    title: str
    description: str
    author: str
    created: str
    base: str
    status: str = "open"  # open | closed | merged (the real Hub also has "draft")
    merge_commit: str | None = None

    @property
    def ref(self) -> str:
        return f"refs/pr/{self.num}"


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    pulls: list[PullRequest] = field(default_factory=list)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it (``server`` is "hub" or "cdn")."""

    server: str
    method: str
    path: str
    range: str | None
    status: int


@dataclass
class _Fault:
    kind: FaultKind
    after_bytes: int
    times: int


class HubError(Exception):
    """Raised inside a handler to answer with an error status and Hub error headers."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 commit: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit


class FakeHub:
    """In-memory Hub served on ``127.0.0.1:<random port>``; use as a context manager.

    Args:
        token: the only token accepted for writes and for reading private repos.
        user: the name ``whoami`` returns; namespace of repos created without one.
        page_size: entries per page of the tree API (the real Hub uses 1000; tests use a small
            value to exercise the ``Link: <...>; rel="next"`` pagination).
    """

    def __init__(
        self, token: str = "hf_fake_token", user: str = "fake-user", page_size: int = 1000
    ) -> None:
        self.token = token
        self.user = user
        self.page_size = page_size
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[RecordedRequest] = []
        self.unknown_routes: list[str] = []
        self._faults: dict[str, list[_Fault]] = {}  # keyed by sha256 of the blob's content
        self._lock = threading.RLock()
        self._clock = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
        self._hub = _Server(("127.0.0.1", 0), _Handler, self, "hub")
        self._cdn = _Server(("127.0.0.1", 0), _Handler, self, "cdn")
        self._threads: list[threading.Thread] = []

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """Base URL to put in ``HF_ENDPOINT``."""
        return f"http://127.0.0.1:{self._hub.server_address[1]}"

    @property
    def cdn_endpoint(self) -> str:
        return f"http://127.0.0.1:{self._cdn.server_address[1]}"

    def start(self) -> FakeHub:
        for server in (self._hub, self._cdn):
            thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in (self._hub, self._cdn):
            server.shutdown()
            server.server_close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- repository state (test side) ---------------------------------------------------------
    def create_repo(self, repo_id: str, repo_type: str = "dataset", private: bool = False) -> Repo:
        """Create a repo whose first commit holds the Hub's default ``.gitattributes``."""
        with self._lock:
            if (repo_type, repo_id) in self.repos:
                raise ValueError(f"{repo_type} repo {repo_id!r} already exists on the fake hub")
            repo = Repo(repo_type, repo_id, private, self._now())
            self.repos[(repo_type, repo_id)] = repo
            self._commit(repo, {".gitattributes": Blob(DEFAULT_GITATTRIBUTES, False)}, None,
                         "initial commit")
            return repo

    def add_folder(
        self, repo_id: str, folder: Path, repo_type: str = "dataset", private: bool = False,
        message: str = "Upload folder",
    ) -> str:
        """Commit every file under ``folder`` (binary suffixes as LFS); returns the commit sha.

        Creates the repo if needed. Files under hidden folders (``.cache/``) are skipped.
        """
        with self._lock:
            repo = self.repos.get((repo_type, repo_id)) or self.create_repo(
                repo_id, repo_type, private
            )
            files = dict(repo.commits[repo.branches["main"]].files)
            for path in sorted(Path(folder).rglob("*")):
                rel = path.relative_to(folder).as_posix()
                if path.is_file() and not any(p.startswith(".") for p in rel.split("/")[:-1]):
                    files[rel] = Blob(path.read_bytes(), rel.endswith(LFS_SUFFIXES))
            return self._commit(repo, files, repo.branches["main"], message).sha

    def head(self, repo_id: str, repo_type: str = "dataset", branch: str = "main") -> str:
        """Commit sha the branch points to."""
        return self._repo(repo_type, repo_id).branches[branch]

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> dict[
        str, bytes
    ]:
        """``{path: content}`` of the repo at ``revision``."""
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            commit = repo.commits[self._resolve(repo, revision)]
            return {path: blob.data for path, blob in commit.files.items()}

    def tamper(self, repo_id: str, path: str, data: bytes, repo_type: str = "dataset") -> None:
        """Replace a file's content in the head commit *without* a new commit.

        Models a repo whose file no longer matches what was published (e.g. a manifest that a
        later upload forgot to update, or storage corruption): every later download gets ``data``.
        """
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            commit = repo.commits[repo.branches["main"]]
            if path not in commit.files:
                raise KeyError(f"{path!r} is not in {repo_id}@main")
            commit.files[path] = Blob(data, commit.files[path].lfs)

    def inject_fault(
        self, repo_id: str, path: str, kind: FaultKind, after_bytes: int = 0, times: int = 1,
        repo_type: str = "dataset",
    ) -> None:
        """Make the next ``times`` GETs of ``path``'s content misbehave.

        ``drop``: send the headers (full length) and ``after_bytes`` bytes of the body, then close
        the connection. ``corrupt``: serve the right length with one byte flipped.
        ``error500``: answer HTTP 500. HEAD requests are never affected.
        """
        with self._lock:
            blob = self._repo(repo_type, repo_id).commits[self.head(repo_id, repo_type)].files[path]
            self._faults.setdefault(blob.sha256, []).append(_Fault(kind, after_bytes, times))

    def requests_for(self, path_part: str, method: str | None = None) -> list[RecordedRequest]:
        """Recorded requests whose (unquoted) path contains ``path_part``."""
        with self._lock:
            return [
                r for r in self.requests
                if path_part in unquote(r.path) and (method is None or r.method == method)
            ]

    # -- internals ----------------------------------------------------------------------------
    def _now(self) -> str:
        self._clock += dt.timedelta(seconds=1)
        return self._clock.strftime("%Y-%m-%dT%H:%M:%S.000Z")

    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _resolve(self, repo: Repo, revision: str) -> str:
        if revision in repo.branches:
            return repo.branches[revision]
        if _SHA1_RE.match(revision) and revision in repo.commits:
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _commit(self, repo: Repo, files: dict[str, Blob], parent: str | None, title: str,
                branch: str = "main") -> Commit:
        digest = hashlib.sha1(f"{parent}\n{title}\n{len(repo.commits)}\n".encode())
        for path in sorted(files):
            digest.update(f"{path}\0{files[path].git_oid}\n".encode())
        commit = Commit(digest.hexdigest(), parent, files, title, self._now())
        repo.commits[commit.sha] = commit
        repo.branches[branch] = commit.sha
        return commit

    def _take_fault(self, blob: Blob) -> _Fault | None:
        with self._lock:
            faults = self._faults.get(blob.sha256)
            if not faults:
                return None
            fault = faults[0]
            fault.times -= 1
            if fault.times <= 0:
                faults.pop(0)
            return fault


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, hub: FakeHub, name: str) -> None:
        super().__init__(address, handler)
        self.hub = hub
        self.name = name


def _tree_entry(path: str, blob: Blob) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "file", "oid": blob.git_oid, "size": len(blob.data),
                             "path": path}
    if blob.lfs:
        entry["lfs"] = {"oid": blob.sha256, "size": len(blob.data),
                        "pointerSize": len(blob.pointer)}
    return entry


def _dir_entry(path: str, files: dict[str, Blob]) -> dict[str, Any]:
    inside = sorted(p for p in files if p.startswith(path + "/"))
    oid = hashlib.sha1("".join(f"{p}{files[p].git_oid}" for p in inside).encode()).hexdigest()
    return {"type": "directory", "oid": oid, "size": 0, "path": path}


def _directories(files: dict[str, Blob]) -> set[str]:
    dirs: set[str] = set()
    for path in files:
        parts = path.split("/")[:-1]
        dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return dirs


def _card_data(files: dict[str, Blob]) -> dict[str, Any] | None:
    readme = files.get("README.md")
    if readme is None:
        return None
    text = readme.data.decode("utf-8", errors="replace")
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    if match is None:
        return None
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real clients expect
    server: _Server

    # -- plumbing -----------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # quiet: tests read FakeHub.requests instead

    @property
    def hub(self) -> FakeHub:
        return self.server.hub

    def _record(self, status: int) -> None:
        with self.hub._lock:
            self.hub.requests.append(RecordedRequest(
                self.server.name, self.command, self.path, self.headers.get("Range"), status
            ))

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json; charset=utf-8") -> None:
        self._record(status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, err: HubError) -> None:
        headers = {"X-Error-Message": err.message}
        if err.code:
            headers["X-Error-Code"] = err.code
        if err.commit:
            headers["X-Repo-Commit"] = err.commit
        self._json({"error": err.message}, err.status, headers)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _authorized(self) -> bool:
        return self.headers.get("Authorization", "") == f"Bearer {self.hub.token}"

    def _readable(self, repo: Repo) -> None:
        if repo.private and not self._authorized():
            # The Hub answers anonymous users about a private repo as about a missing one.
            raise HubError(401, "Repository not found", "RepoNotFound")

    def _require_write(self) -> None:
        if not self._authorized():
            raise HubError(401, "Invalid credentials in Authorization header")

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch()

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch()

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch()

    # -- routing ------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        raw_path, _, query_string = self.path.partition("?")
        self.query = parse_qs(query_string, keep_blank_values=True)
        # Split before unquoting: a revision such as "refs%2Fpr%2F1" is one segment.
        segs = [unquote(s) for s in raw_path.split("/")[1:]]
        body = self._body() if self.command in ("POST", "PUT") else b""
        try:
            if self.server.name == "cdn":
                if self.command in ("GET", "HEAD") and len(segs) == 2 and segs[0] == "lfs":
                    return self._cdn(segs[1])
            elif segs[:1] == ["api"]:
                if self._api(segs[1:], body) is not False:
                    return
            elif self.command in ("GET", "HEAD") and self._resolve_route(segs) is not False:
                return
            with self.hub._lock:
                self.hub.unknown_routes.append(f"{self.command} {self.path}")
            raise HubError(404, f"fake hub: unknown route {self.command} {raw_path}")
        except HubError as err:
            self._error(err)

    @staticmethod
    def _split_repo(segs: list[str], actions: tuple[str, ...]) -> tuple[str, str, list[str]] | None:
        """``[ns, name, action, ...]`` or ``[name, action, ...]`` -> (repo_id, action, rest)."""
        for n in (2, 1):
            if len(segs) > n and segs[n] in actions and all(segs[:n]):
                return "/".join(segs[:n]), segs[n], segs[n + 1:]
        return None

    def _api(self, segs: list[str], body: bytes) -> bool | None:
        hub, method = self.hub, self.command
        if segs == ["whoami-v2"] and method == "GET":
            self._require_write()
            return self._json({"type": "user", "name": hub.user, "fullname": hub.user,
                               "orgs": [], "auth": {"type": "access_token",
                                                    "accessToken": {"role": "write"}}})
        if segs == ["repos", "create"] and method == "POST":
            return self._create(json.loads(body or b"{}"))
        if segs == ["validate-yaml"] and method == "POST":
            return self._validate_yaml(json.loads(body or b"{}"))
        if not segs or segs[0] not in _TYPE_PREFIX:
            return False
        repo_type, rest = _TYPE_PREFIX[segs[0]], segs[1:]
        split = self._split_repo(rest, _API_ACTIONS)
        if split is None:
            if method == "GET" and 1 <= len(rest) <= 2 and all(rest):
                return self._info(repo_type, "/".join(rest), "main")
            return False
        repo_id, action, tail = split
        if action == "discussions":
            return self._discussions(repo_type, repo_id, tail, body)
        if not tail or not tail[0]:
            return False
        revision, path = tail[0], "/".join(tail[1:]).strip("/")
        if action == "revision" and method == "GET" and not path:
            return self._info(repo_type, repo_id, revision)
        if action == "tree" and method == "GET":
            return self._tree(repo_type, repo_id, revision, path)
        if action == "paths-info" and method == "POST" and not path:
            return self._paths_info(repo_type, repo_id, revision, body)
        if action == "preupload" and method == "POST" and not path:
            return self._preupload(repo_type, repo_id, revision, json.loads(body or b"{}"))
        if action == "commit" and method == "POST" and not path:
            return self._commit_route(repo_type, repo_id, revision, body)
        if action == "branch" and method == "POST" and not path:
            return self._branch(repo_type, repo_id, revision, json.loads(body or b"{}"))
        return False

    # -- read routes --------------------------------------------------------------------------
    def _snapshot(self, repo_type: str, repo_id: str, revision: str) -> tuple[Repo, Commit]:
        with self.hub._lock:
            repo = self.hub._repo(repo_type, repo_id)
            self._readable(repo)
            return repo, repo.commits[self.hub._resolve(repo, revision)]

    def _info(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo, commit = self._snapshot(repo_type, repo_id, revision)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id,
            "author": repo_id.split("/")[0] if "/" in repo_id else None, "sha": commit.sha,
            "lastModified": commit.date, "createdAt": repo.created, "private": repo.private,
            "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
            "cardData": _card_data(commit.files),
            "siblings": [{"rfilename": p} for p in sorted(commit.files)],
            "usedStorage": sum(len(b.data) for b in commit.files.values()),
        }
        if repo_type == "model":
            info["modelId"] = repo_id
        self._json(info)

    def _tree(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        _, commit = self._snapshot(repo_type, repo_id, revision)
        files, dirs = commit.files, _directories(commit.files)
        if path and path not in dirs:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", commit.sha)
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = f"{path}/" if path else ""
        entries = []
        for name in sorted(set(files) | dirs):
            if not name.startswith(prefix):
                continue
            if not recursive and "/" in name[len(prefix):]:
                continue
            entries.append(_tree_entry(name, files[name]) if name in files
                           else _dir_entry(name, files))
        if self.query.get("expand", ["false"])[0].lower() in ("1", "true"):
            for entry in entries:
                entry["lastCommit"] = {"id": commit.sha, "title": commit.title, "date": commit.date}
        # Cursor pagination with a GitHub-style Link header, as the Hub does.
        start = int(base64.urlsafe_b64decode(self.query["cursor"][0]).decode()) if (
            "cursor" in self.query) else 0
        end = start + self.hub.page_size
        headers = {}
        if end < len(entries):
            params = {k: v[0] for k, v in self.query.items() if k != "cursor"}
            params["cursor"] = base64.urlsafe_b64encode(str(end).encode()).decode()
            url = f"{self.hub.endpoint}{self.path.partition('?')[0]}?{urlencode(params)}"
            headers["Link"] = f'<{url}>; rel="next"'
        self._json(entries[start:end], headers=headers)

    def _paths_info(self, repo_type: str, repo_id: str, revision: str, body: bytes) -> None:
        _, commit = self._snapshot(repo_type, repo_id, revision)
        form = parse_qs(body.decode(), keep_blank_values=True)
        dirs = _directories(commit.files)
        out = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in commit.files:
                out.append(_tree_entry(path, commit.files[path]))
            elif path in dirs:
                out.append(_dir_entry(path, commit.files))
        self._json(out)

    def _resolve_route(self, segs: list[str]) -> bool | None:
        repo_type = "model"
        if segs and segs[0] in ("datasets", "spaces"):
            repo_type, segs = _TYPE_PREFIX[segs[0]], segs[1:]
        split = self._split_repo(segs, ("resolve",))
        if split is None or len(split[2]) < 2:
            return False
        repo_id, _, tail = split
        _, commit = self._snapshot(repo_type, repo_id, tail[0])
        path = "/".join(tail[1:])
        blob = commit.files.get(path)
        if blob is None:
            raise HubError(404, "Entry not found", "EntryNotFound", commit.sha)
        headers = {"X-Repo-Commit": commit.sha}
        if blob.lfs:
            # LFS objects live on the CDN: redirect there with the linked etag / size.
            location = f"{self.hub.cdn_endpoint}/lfs/{blob.sha256}?" + urlencode(
                {"response-content-disposition": f'inline; filename="{quote(path)}"'})
            headers.update({"ETag": f'"{blob.git_oid}"', "X-Linked-Etag": f'"{blob.sha256}"',
                            "X-Linked-Size": str(len(blob.data)), "Location": location})
            return self._send(302, b"", headers, "text/plain; charset=utf-8")
        headers["ETag"] = f'"{blob.git_oid}"'
        return self._content(blob, headers)

    def _cdn(self, sha256: str) -> None:
        with self.hub._lock:
            blob = next((b for repo in self.hub.repos.values() for c in repo.commits.values()
                         for b in c.files.values() if b.lfs and b.sha256 == sha256), None)
        if blob is None:
            raise HubError(404, "NoSuchKey")
        self._content(blob, {"ETag": f'"{sha256}"'})

    def _content(self, blob: Blob, headers: dict[str, str]) -> None:
        """Serve a blob with Range support (single range, RFC 9110) and injected faults."""
        data, status = blob.data, 200
        fault = self.hub._take_fault(blob) if self.command == "GET" else None
        if fault is not None and fault.kind == "error500":
            raise HubError(500, "fake hub: injected internal error")
        if fault is not None and fault.kind == "corrupt":
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
        headers = {**headers, "Accept-Ranges": "bytes"}
        requested = self.headers.get("Range")
        match = _RANGE_RE.match(requested.strip()) if requested else None
        if match and (match.group(1) or match.group(2)):
            first, last = match.group(1), match.group(2)
            if first:
                start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
            else:  # suffix range "bytes=-N"
                start, end = max(len(data) - int(last), 0), len(data) - 1
            if start >= len(data) or start > end:
                headers["Content-Range"] = f"bytes */{len(data)}"
                return self._send(416, b"", headers)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start:end + 1], 206
        if fault is not None and fault.kind == "drop":
            return self._drop(status, data, headers, fault.after_bytes)
        self._send(status, data, headers, "application/octet-stream")

    def _drop(self, status: int, data: bytes, headers: dict[str, str], after: int) -> None:
        """Announce the full body, send only ``after`` bytes, then cut the TCP connection."""
        self._record(status)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data[:after])
        self.wfile.flush()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- write routes -------------------------------------------------------------------------
    def _create(self, payload: dict[str, Any]) -> None:
        self._require_write()
        name, org = payload.get("name"), payload.get("organization") or self.hub.user
        repo_type = payload.get("type") or "model"
        if not name or repo_type not in ("model", "dataset", "space"):
            raise HubError(400, "fake hub: create needs a name and a valid type")
        repo_id = f"{org}/{name}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.hub.endpoint}/{prefix}{repo_id}"
        with self.hub._lock:
            if (repo_type, repo_id) in self.hub.repos:
                return self._json({"error": f"You already created this {repo_type} repo",
                                   "url": url}, 409)
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            self.hub.create_repo(repo_id, repo_type, private)
        self._json({"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self, payload: dict[str, Any]) -> None:
        content = payload.get("content", "")
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.DOTALL)
        if match is None:
            return self._json({"errors": [], "warnings": [{"message": "empty or missing yaml"}]})
        try:
            data = yaml.safe_load(match.group(1))
        except yaml.YAMLError as err:
            return self._json({"errors": [{"message": f"Invalid YAML: {err}"}]}, 400)
        errors = []
        if not isinstance(data, dict):
            errors.append({"message": "YAML metadata must be a mapping"})
        elif payload.get("repoType") == "dataset" and "configs" in data:
            for config in data["configs"] if isinstance(data["configs"], list) else [None]:
                if not isinstance(config, dict) or not isinstance(config.get("config_name"), str):
                    errors.append({"message": '"configs" items must have a "config_name"'})
        if errors:
            return self._json({"errors": errors}, 400)
        self._json({"errors": [], "warnings": []})

    def _preupload(self, repo_type: str, repo_id: str, revision: str,
                   payload: dict[str, Any]) -> None:
        self._require_write()
        _, commit = self._snapshot(repo_type, repo_id, revision)
        out = []
        for item in payload.get("files", []):
            existing = commit.files.get(item["path"])
            oid = None if existing is None else (
                existing.sha256 if existing.lfs else existing.git_oid)
            out.append({"path": item["path"], "uploadMode": "regular", "shouldIgnore": False,
                        "oid": oid})
        self._json({"files": out, "commitOid": commit.sha})

    def _branch(self, repo_type: str, repo_id: str, branch: str, payload: dict[str, Any]) -> None:
        self._require_write()
        with self.hub._lock:
            repo, start = self._snapshot(repo_type, repo_id, payload.get("startingPoint") or "main")
            if branch in repo.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            repo.branches[branch] = start.sha
        self._json({})

    def _commit_route(self, repo_type: str, repo_id: str, revision: str, body: bytes) -> None:
        self._require_write()
        create_pr = self.query.get("create_pr", ["0"])[0] in ("1", "true")
        hub = self.hub
        with hub._lock:
            repo, parent = self._snapshot(repo_type, repo_id, revision)
            if revision not in repo.branches:
                raise HubError(400, f"fake hub: can only commit to a branch, not {revision!r}")
            files = dict(parent.files)
            title = "Commit"
            for line in body.splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                key, value = item.get("key"), item.get("value", {})
                if key == "header":
                    title = value.get("summary") or title
                    wanted = value.get("parentCommit")
                    if wanted and not parent.sha.startswith(wanted):
                        raise HubError(412, "A commit has happened since. Please refresh and try"
                                            " again.")
                elif key == "file":
                    if value.get("encoding") != "base64":
                        raise HubError(400, f"fake hub: unsupported encoding {value!r:.80}")
                    files[value["path"]] = Blob(base64.b64decode(value["content"]), False)
                elif key == "lfsFile":
                    known = next((b for c in repo.commits.values() for b in c.files.values()
                                  if b.lfs and b.sha256 == value.get("oid")), None)
                    if known is None:
                        raise HubError(400, f"LFS object {value.get('oid')} was never uploaded")
                    files[value["path"]] = known
                elif key == "deletedFile":
                    if value["path"] not in files:
                        raise HubError(404, "A file with this name doesn't exist",
                                       "EntryNotFound")
                    del files[value["path"]]
                elif key == "deletedFolder":
                    folder = value["path"].rstrip("/") + "/"
                    files = {p: b for p, b in files.items() if not p.startswith(folder)}
                else:
                    raise HubError(400, f"fake hub: unsupported commit operation {key!r}")
            if create_pr:
                return self._open_pull(repo, parent, files, title, body)
            commit = hub._commit(repo, files, parent.sha, title, branch=revision)
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        self._json({"success": True, "commitOid": commit.sha, "hookOutput": "",
                    "commitUrl": f"{hub.endpoint}/{prefix}{repo_id}/commit/{commit.sha}"})

    # -- pull requests ------------------------------------------------------------------------
    def _pull_url(self, repo: Repo, num: int) -> str:
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return f"{self.hub.endpoint}/{prefix}{repo.repo_id}/discussions/{num}"

    def _open_pull(self, repo: Repo, parent: Commit, files: dict[str, Blob], title: str,
                   body: bytes) -> None:
        """The commit of ``create_pr=1`` goes to a new ``refs/pr/<n>``, not to the branch."""
        description = ""
        for line in body.splitlines():
            item = json.loads(line) if line.strip() else {}
            if item.get("key") == "header":
                description = item.get("value", {}).get("description") or ""
        with self.hub._lock:
            pull = PullRequest(len(repo.pulls) + 1, title, description, self.hub.user,
                               self.hub._now(), parent.sha)
            repo.pulls.append(pull)
            commit = self.hub._commit(repo, files, parent.sha, title, branch=pull.ref)
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        self._json({"success": True, "commitOid": commit.sha, "hookOutput": "",
                    "commitUrl": f"{self.hub.endpoint}/{prefix}{repo.repo_id}/commit/{commit.sha}",
                    "pullRequestUrl": self._pull_url(repo, pull.num)})

    def _pull_json(self, repo: Repo, pull: PullRequest) -> dict[str, Any]:
        return {"num": pull.num, "title": pull.title, "status": pull.status,
                "author": {"name": pull.author}, "createdAt": pull.created,
                "isPullRequest": True, "repo": {"name": repo.repo_id, "type": repo.repo_type},
                "pinned": False, "numComments": 1, "topReactions": []}

    def _discussions(self, repo_type: str, repo_id: str, tail: list[str], body: bytes) -> None:
        with self.hub._lock:
            repo = self.hub._repo(repo_type, repo_id)
            self._readable(repo)
        if not tail or not tail[0]:
            if self.command != "GET":
                return False  # type: ignore[return-value]
            return self._list_pulls(repo)
        if not tail[0].isdigit() or not 1 <= int(tail[0]) <= len(repo.pulls):
            raise HubError(404, "Discussion not found")
        pull = repo.pulls[int(tail[0]) - 1]
        if len(tail) == 1 and self.command == "GET":
            return self._pull_details(repo, pull)
        if tail[1:] == ["merge"] and self.command == "POST":
            return self._merge_pull(repo, pull)
        if tail[1:] == ["status"] and self.command == "POST":
            self._require_write()
            wanted = json.loads(body or b"{}").get("status")
            if wanted not in ("open", "closed") or pull.status == "merged":
                raise HubError(400, f"fake hub: cannot set status {wanted!r} on a "
                                    f"{pull.status} pull request")
            pull.status = wanted
            return self._json({"newStatus": {"id": f"status-{pull.num}", "type": "status-change",
                                             "createdAt": self.hub._now(),
                                             "author": {"name": self.hub.user},
                                             "data": {"status": wanted}}})
        return False  # type: ignore[return-value]

    def _list_pulls(self, repo: Repo) -> None:
        want_type = self.query.get("type", ["all"])[0]
        want_status = self.query.get("status", ["all"])[0]
        author = self.query.get("author", [None])[0]
        items = [p for p in reversed(repo.pulls)  # newest first, as the Hub lists them
                 if want_type in ("all", "pull_request")
                 and want_status in ("all", p.status) and author in (None, p.author)]
        page, per_page = int(self.query.get("p", ["0"])[0]), 50
        start = page * per_page
        self._json({"discussions": [self._pull_json(repo, p)
                                    for p in items[start:start + per_page]],
                    "count": len(items), "start": start, "numClosedDiscussions": 0})

    def _pull_details(self, repo: Repo, pull: PullRequest) -> None:
        head = repo.commits[repo.branches[pull.ref]]
        base = repo.commits[pull.base]
        changed = sorted(p for p in set(head.files) | set(base.files)
                         if head.files.get(p) != base.files.get(p))
        changes: dict[str, Any] = {"base": "refs/heads/main"}
        if pull.merge_commit:
            changes["mergeCommitId"] = pull.merge_commit
        events = [{"id": f"comment-{pull.num}", "type": "comment", "createdAt": pull.created,
                   "author": {"name": pull.author},
                   "data": {"edited": False, "hidden": False, "latest": {
                       "raw": pull.description, "html": pull.description,
                       "updatedAt": pull.created}, "numEdits": 0}}]
        self._json({**self._pull_json(repo, pull), "events": events, "changes": changes,
                    "filesWithConflicts": [], "diff": "".join(f"diff --git a/{p} b/{p}\n"
                                                              for p in changed)})

    def _merge_pull(self, repo: Repo, pull: PullRequest) -> None:
        """Apply the pull request's changes (head vs. its base) on top of main."""
        self._require_write()
        with self.hub._lock:
            if pull.status != "open":
                raise HubError(400, f"fake hub: pull request #{pull.num} is {pull.status}")
            head = repo.commits[repo.branches[pull.ref]]
            base = repo.commits[pull.base]
            files = dict(repo.commits[repo.branches["main"]].files)
            for path in set(head.files) | set(base.files):
                if path not in head.files:
                    files.pop(path, None)
                elif head.files[path] != base.files.get(path):
                    files[path] = head.files[path]
            commit = self.hub._commit(repo, files, repo.branches["main"],
                                      f"Merge pull request #{pull.num}: {pull.title}")
            pull.status, pull.merge_commit = "merged", commit.sha
        self._json({"success": True})


# ---------------------------------------------------------------------------------------------
# Test data: a tiny built dataset folder, as artifactgsi's builder writes it (docs/dataset.md)
# ---------------------------------------------------------------------------------------------
REPO_ID = "artifactgsi/ArtifactGSI-Sim"
IMAGE_SHAPE = (8, 8)
BIG_SHAPE = (128, 128)

CARD = """\
---
license: cc-by-4.0
pretty_name: ArtifactGSI tiny test build
configs:
- config_name: pairs
  data_files:
  - split: train
    path: pairs/train-*.parquet
  - split: test
    path: pairs/test-*.parquet
- config_name: clean
  data_files:
  - split: train
    path: clean/train-*.parquet
{extra}---
# ArtifactGSI (tiny test build)
"""
GENERALIZATION_CONFIG = """\
- config_name: generalization
  data_files:
  - split: test
    path: generalization/test-*.parquet
"""


def write_manifest(folder: Path) -> None:
    """(Re)write ``manifest.json`` listing every non-hidden file with hashlib sha256 and rows."""
    import pyarrow.parquet as pq

    entries = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        hidden = any(part.startswith(".") for part in rel.split("/"))
        if not path.is_file() or rel == "manifest.json" or hidden:
            continue
        data = path.read_bytes()
        rows = pq.read_metadata(path).num_rows if rel.endswith(".parquet") else None
        entries.append({"path": rel, "sha256": hashlib.sha256(data).hexdigest(),
                        "bytes": len(data), "rows": rows})
    configs = sorted({e["path"].split("/")[0] for e in entries if e["path"].endswith(".parquet")})
    manifest = {"format": "artifactgsi-manifest/1", "files": entries,
                "configs": {name: {} for name in configs}}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))


def make_dataset_folder(folder: Path, seed: int = 0, big_rows: int = 0,
                        train_shards: int = 1) -> dict[str, np.ndarray]:
    """Write a tiny built dataset (card, Parquet shards, manifest) like the builder's output.

    Returns the ``gsi`` arrays (int16 HU, ``(rows, H, W)``) written per ``config/split``, so tests
    can compare what comes back through the Hub. ``big_rows > 0`` adds a ``generalization``
    config of random 128x128 slices (~25 kB of Parquet per row) to test interrupted downloads.
    """
    from datasets import Array2D, Dataset, Features, Value

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, np.ndarray] = {}
    plan = [("pairs", "train", 6, IMAGE_SHAPE, train_shards), ("pairs", "test", 3, IMAGE_SHAPE, 1),
            ("clean", "train", 4, IMAGE_SHAPE, 1)]
    if big_rows:
        plan.append(("generalization", "test", big_rows, BIG_SHAPE, 1))
    for config, split, rows, shape, shards in plan:
        features = Features({"patient_id": Value("string"), "slice_index": Value("int32"),
                             "gsi": Array2D(shape, "int16")})
        # HU span of CT (-1024 air ... 3071 dense metal) at full int16 precision.
        gsi = rng.integers(-1024, 3072, size=(rows, *shape), dtype=np.int16)
        written[f"{config}/{split}"] = gsi
        for shard, index in enumerate(np.array_split(np.arange(rows), shards)):
            ds = Dataset.from_dict(
                {"patient_id": [f"P{seed}{i // 2:03d}" for i in index],
                 "slice_index": [int(i) for i in index], "gsi": gsi[index]},
                features=features)
            (folder / config).mkdir(exist_ok=True)
            ds.to_parquet(folder / config / f"{split}-{shard:05d}-of-{shards:05d}.parquet")
    extra = GENERALIZATION_CONFIG if big_rows else ""
    (folder / "README.md").write_text(CARD.format(extra=extra), encoding="utf-8")
    write_manifest(folder)
    return written


def iter_routes(hub: FakeHub) -> Iterator[str]:
    """Distinct ``METHOD route`` pairs the hub served (query strings dropped), for debugging."""
    seen: set[str] = set()
    for request in hub.requests:
        key = f"{request.server} {request.method} {request.path.partition('?')[0]}"
        if key not in seen:
            seen.add(key)
            yield key


if __name__ == "__main__":  # pragma: no cover - manual use
    import argparse
    import time

    parser = argparse.ArgumentParser(description="Serve a folder as a fake Hub dataset repo.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("repo_id", nargs="?", default="artifactgsi/ArtifactGSI-Sim")
    args = parser.parse_args()
    with FakeHub() as fake:
        fake.add_folder(args.repo_id, args.folder)
        print(f"HF_ENDPOINT={fake.endpoint} HF_TOKEN={fake.token} HF_HUB_DISABLE_XET=1  (Ctrl-C)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
