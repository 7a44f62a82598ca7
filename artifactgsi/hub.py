"""Download and publish the built ArtifactGSI dataset on the Hugging Face Hub.

A built dataset folder (see docs/dataset.md) holds ``README.md`` (the dataset card, YAML
``configs:`` naming Parquet globs), the Parquet shards, and ``manifest.json``::

    {"format": "artifactgsi-manifest/1",
     "files": [{"path": "pairs/train-00000-of-00001.parquet", "sha256": "<hex>", "bytes": 123,
                "rows": 10}, ..., {"path": "README.md", "sha256": "<hex>", "bytes": 456}],
     "configs": {...}}

The manifest lists every file of the dataset, README.md included, and never itself; paths are
POSIX and relative to the folder; ``rows`` is given for Parquet files. Hidden files and folders
(``.gitattributes``, ``.cache/``) are not part of the dataset. :func:`verify_manifest` checks a
folder against it; :func:`download` and :func:`push` call it, so what is published and what is
received are byte-identical to what the builder wrote.

The network is used only inside :func:`download` and :func:`push`; ``huggingface_hub`` is
imported there too, so importing this module is cheap and reads no environment variable of
``huggingface_hub`` (``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` are read when it is first imported).
"""

from __future__ import annotations

import glob
import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from artifactgsi import settings
from artifactgsi.errors import ArtifactGSIError, HubTransferError
from artifactgsi.fileio import sha256_file

logger = logging.getLogger(__name__)

_FRONT_MATTER_RE = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.DOTALL)


class DatasetFolderError(ArtifactGSIError, ValueError):
    """A built dataset folder is not valid; ``problems`` maps a file (or field) to what is wrong."""

    def __init__(self, folder: Path, problems: dict[str, str], what: str, hint: str = "") -> None:
        self.folder = Path(folder)
        self.problems = dict(problems)
        lines = "\n".join(f"  - {name}: {why}" for name, why in sorted(self.problems.items()))
        message = f"{self.folder}: {len(self.problems)} problem(s) with {what}:\n{lines}"
        super().__init__(message + (f"\n{hint}" if hint else ""))

    @property
    def bad_files(self) -> list[str]:
        """The files (paths relative to the folder) named in ``problems``, sorted."""
        return sorted(self.problems)


class ManifestError(DatasetFolderError):
    """Files of a dataset folder do not match its ``manifest.json`` (or the manifest is bad)."""

    def __init__(self, folder: Path, problems: dict[str, str], hint: str = "") -> None:
        super().__init__(folder, problems, settings.MANIFEST_FILENAME, hint)


class DatasetCardError(DatasetFolderError):
    """The dataset card (``README.md``) is missing or disagrees with the manifest."""

    def __init__(self, folder: Path, problems: dict[str, str], hint: str = "") -> None:
        super().__init__(folder, problems, f"the dataset card {settings.CARD_FILENAME}", hint)


# ---------------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------------
def read_manifest(folder: Path) -> dict[str, Any]:
    """Load and structurally check ``folder/manifest.json``; raise :class:`ManifestError` if bad.

    Returns the parsed manifest; its ``files`` entries have ``path``, ``sha256`` (64 hex),
    ``bytes`` (int >= 0) and optionally ``rows`` (int >= 0 or null).
    """
    folder = Path(folder)
    name = settings.MANIFEST_FILENAME
    path = folder / name
    if not path.is_file():
        raise ManifestError(folder, {name: "missing: not an ArtifactGSI dataset folder?"})
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ManifestError(folder, {name: f"not valid JSON ({err})"}) from err
    if not isinstance(manifest, dict) or manifest.get("format") != settings.MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ManifestError(folder, {name: f"format is {found!r}, expected "
                                           f"{settings.MANIFEST_FORMAT!r}"})
    files = manifest.get("files")
    if not isinstance(files, list) or not files:
        raise ManifestError(folder, {name: "'files' must be a non-empty list"})
    problems: dict[str, str] = {}
    seen: set[str] = set()
    for i, entry in enumerate(files):
        where = f"{name} files[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            problems[where] = "entry needs a string 'path'"
            continue
        rel = entry["path"]
        parts = PurePosixPath(rel).parts
        if (not rel or rel.startswith("/") or "\\" in rel or ".." in parts
                or rel != PurePosixPath(rel).as_posix()):
            problems[where] = f"path {rel!r} must be relative, POSIX, without '..'"
        elif rel == name:
            problems[where] = "the manifest must not list itself"
        elif rel in seen:
            problems[where] = f"path {rel!r} is listed twice"
        elif not re.fullmatch(r"[0-9a-f]{64}", str(entry.get("sha256", ""))):
            problems[where] = f"{rel}: 'sha256' must be 64 lowercase hex digits"
        elif not _is_count(entry.get("bytes")):
            problems[where] = f"{rel}: 'bytes' must be an integer >= 0"
        elif entry.get("rows") is not None and not _is_count(entry.get("rows")):
            problems[where] = f"{rel}: 'rows' must be an integer >= 0 or null"
        seen.add(rel)
    if problems:
        raise ManifestError(folder, problems)
    return manifest


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def manifest_entry_problems(folder: Path, entries: Iterable[dict[str, Any]]
                            ) -> tuple[dict[str, str], set[str]]:
    """Check listed files (manifest entries: ``path``, ``bytes``, ``sha256``, optional
    ``rows``) in ``folder`` -> (problems by path, paths whose content is wrong). The one
    implementation of "is this file the one the manifest lists", used by the builder's
    checks, downloads and the benchmark's reader."""
    problems: dict[str, str] = {}
    wrong_content: set[str] = set()
    for entry in entries:
        rel = entry["path"]
        path = folder / rel
        if not path.is_file():
            problems[rel] = "missing (listed in the manifest)"
            continue
        size = path.stat().st_size
        if size != entry["bytes"]:
            problems[rel] = f"{size} bytes, the manifest says {entry['bytes']}"
            wrong_content.add(rel)
            continue
        digest = sha256_file(path) if entry.get("sha256") is not None else None
        if digest is not None and digest != entry["sha256"]:
            problems[rel] = f"sha256 {digest[:12]}..., the manifest says {entry['sha256'][:12]}..."
            wrong_content.add(rel)
            continue
        if entry.get("rows") is not None and rel.endswith(".parquet"):
            import pyarrow.parquet as pq

            rows = pq.read_metadata(path).num_rows
            if rows != entry["rows"]:
                problems[rel] = f"{rows} rows, the manifest says {entry['rows']}"
    return problems, wrong_content


def _manifest_problems(folder: Path, check_unlisted: bool) -> tuple[dict[str, str], set[str]]:
    """Compare a folder with its manifest -> (problems by path, paths whose content is wrong)."""
    manifest = read_manifest(folder)
    listed = {entry["path"]: entry for entry in manifest["files"]}
    problems, wrong_content = manifest_entry_problems(folder, listed.values())
    if check_unlisted:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            if (path.is_file() and rel not in listed and rel != settings.MANIFEST_FILENAME
                    and not _is_hidden(rel)):
                problems[rel] = ("not listed in the manifest (a stale file from another build or"
                                 " revision? the card's data_files globs would load it)")
    return problems, wrong_content


def verify_manifest(folder: Path, *, check_unlisted: bool = True) -> None:
    """Check every file of a built dataset folder against ``manifest.json``.

    Checks, per listed file: present, size in bytes, SHA-256, and for Parquet files the row
    count in the Parquet footer. With ``check_unlisted``, any non-hidden file that the manifest
    does not list is an error too (``load_dataset`` globs would pick it up).

    Raises:
        ManifestError: listing every bad file and why (``err.problems``, ``err.bad_files``).
    """
    folder = Path(folder)
    problems, _ = _manifest_problems(folder, check_unlisted)
    if problems:
        raise ManifestError(folder, problems)


# ---------------------------------------------------------------------------------------------
# Dataset card
# ---------------------------------------------------------------------------------------------
def read_card_metadata(folder: Path) -> dict[str, Any]:
    """The YAML front matter of ``folder/README.md`` as a dict; :class:`DatasetCardError` if bad."""
    folder = Path(folder)
    name = settings.CARD_FILENAME
    path = folder / name
    if not path.is_file():
        raise DatasetCardError(folder, {name: "missing (build the card with artifactgsi.card)"})
    match = _FRONT_MATTER_RE.match(path.read_text(encoding="utf-8"))
    if match is None:
        raise DatasetCardError(folder, {name: "no YAML front matter (a '---' block at the top)"})
    try:
        metadata = yaml.safe_load(match.group(1))
    except yaml.YAMLError as err:
        raise DatasetCardError(folder, {name: f"invalid YAML front matter ({err})"}) from err
    if not isinstance(metadata, dict):
        raise DatasetCardError(folder, {name: "YAML front matter must be a mapping"})
    return metadata


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a ``data_files`` glob: ``*``/``?`` stay inside one folder, ``**`` crosses folders."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2:]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1:end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _config_patterns(config: dict[str, Any]) -> list[str]:
    """All path globs of one ``configs:`` item (``data_files`` as str, list, or split dicts)."""
    data_files = config.get("data_files")
    items = data_files if isinstance(data_files, list) else [data_files]
    patterns: list[str] = []
    for item in items:
        paths = item.get("path") if isinstance(item, dict) else item
        for pattern in paths if isinstance(paths, list) else [paths]:
            if isinstance(pattern, str) and pattern:
                patterns.append(pattern.removeprefix("./"))
    return patterns


def validate_folder(folder: Path) -> dict[str, Any]:
    """Check that a built folder can be published: manifest, files, and card agree.

    Runs :func:`verify_manifest`, then checks the card: every ``configs:`` item has a
    ``config_name`` and ``data_files`` whose globs each match at least one listed file, every
    listed Parquet file belongs to some config, and (if the manifest's ``configs`` is a mapping)
    the manifest and the card name the same configs. Returns the card metadata.

    Raises:
        ManifestError, DatasetCardError: naming each problem.
    """
    folder = Path(folder)
    verify_manifest(folder)
    manifest = read_manifest(folder)
    metadata = read_card_metadata(folder)
    listed = [e["path"] for e in manifest["files"]]
    if settings.CARD_FILENAME not in listed:
        raise ManifestError(folder, {settings.CARD_FILENAME: "the manifest must list the card"})
    problems: dict[str, str] = {}
    configs = metadata.get("configs")
    if not isinstance(configs, list) or not configs:
        raise DatasetCardError(folder, {"configs": "the YAML needs a non-empty 'configs:' list"})
    covered: set[str] = set()
    names: list[str] = []
    for i, config in enumerate(configs):
        name = config.get("config_name") if isinstance(config, dict) else None
        if not isinstance(name, str) or not name:
            problems[f"configs[{i}]"] = "needs a 'config_name'"
            continue
        names.append(name)
        patterns = _config_patterns(config)
        if not patterns:
            problems[f"configs[{name}]"] = "needs 'data_files' with at least one path"
        for pattern in patterns:
            regex = glob_to_regex(pattern)
            matched = {p for p in listed if regex.fullmatch(p)}
            if not matched:
                problems[f"configs[{name}]"] = f"data_files {pattern!r} matches no listed file"
            covered |= matched
    for rel in listed:
        if rel.endswith(".parquet") and rel not in covered:
            problems[rel] = "listed Parquet file that no config's data_files matches"
    manifest_configs = manifest.get("configs")
    if isinstance(manifest_configs, dict) and set(manifest_configs) != set(names):
        problems["configs"] = (f"the manifest names {sorted(manifest_configs)}, the card names "
                               f"{sorted(names)}")
    if problems:
        raise DatasetCardError(folder, problems)
    return metadata


# ---------------------------------------------------------------------------------------------
# Hub
# ---------------------------------------------------------------------------------------------
class HubRepoIdError(ArtifactGSIError, ValueError):
    """A Hub repo id that the Hub would refuse (names it and the rule)."""


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if the Hub accepts its form (``name`` or ``namespace/name``; letters,
    digits, ``-``, ``_``, ``.``; at most 96 characters); else :class:`HubRepoIdError`."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise HubRepoIdError(f"{repo_id!r} is not a Hub repo id: {err}") from None
    return repo_id


def _transfer_failed(err: BaseException, what: str) -> HubTransferError | None:
    """A :class:`HubTransferError` for ``what`` if ``err`` is a connection failure, else
    ``None``."""
    from huggingface_hub import constants

    cause = _transport_error(err)
    if cause is None:
        return None
    return HubTransferError(
        f"{what} {constants.ENDPOINT} stopped: the connection failed ({type(cause).__name__}: "
        f"{cause}); check the network (or HF_ENDPOINT) and run the same command again")


def download(
    repo_id: str | None = None,
    revision: str | None = None,
    local_dir: Path | None = None,
    token: str | bool | None = None,
) -> Path:
    """Download the dataset repo and verify every file against its ``manifest.json``.

    Args:
        repo_id: Hub dataset repo; default :func:`artifactgsi.settings.default_repo_id`.
        revision: branch, tag or commit sha; default the repo's ``main`` branch. A branch or tag
            is resolved to its commit first, so every file comes from that one commit.
        local_dir: put plain files here; default the Hugging Face cache
            (:func:`artifactgsi.settings.hub_cache_dir`), shared with ``datasets.load_dataset``.
        token: Hub token for private repos; default the logged-in one (``HF_TOKEN``).

    Returns:
        The dataset folder (in the cache: ``.../snapshots/<commit sha>``).

    Files already downloaded at the same commit are not fetched again, so re-running after an
    interruption fetches only what is missing; a dropped connection mid-file is resumed by
    ``huggingface_hub`` with an HTTP ``Range`` request. Files whose size or SHA-256 does not
    match the manifest are downloaded once more; if they still differ, :class:`ManifestError`
    names them. With ``HF_HUB_OFFLINE=1`` the cached copy is verified without any request.

    Raises:
        HubTransferError: the connection dropped or the server could not be reached (after
            ``huggingface_hub``'s own retries); the message says how to resume.
        ManifestError: files differ from the manifest.
    """
    from huggingface_hub import constants

    repo_id = check_repo_id(repo_id or settings.default_repo_id())
    try:
        return _download(repo_id, revision, local_dir, token)
    except Exception as err:
        cause = _transport_error(err)
        if cause is None:
            raise
        where = f" into {local_dir}" if local_dir is not None else ""
        raise HubTransferError(
            f"downloading {repo_id}@{revision or 'main'} from {constants.ENDPOINT}{where} "
            f"stopped: the connection failed ({type(cause).__name__}: {cause}). Files "
            "completed so far are kept; check the network (or HF_ENDPOINT) and run the same "
            "command again to resume: only missing or incomplete files are fetched") from None


def _transport_error(err: BaseException) -> BaseException | None:
    """The connection-level error (dropped, refused, timed out) behind ``err``, if any."""
    kinds: list[type] = []
    for module in ("httpx", "httpx2", "requests"):
        try:
            mod = __import__(module)
        except ImportError:
            continue
        for name in ("TransportError", "ConnectionError", "Timeout"):
            kind = getattr(mod, name, None)
            if isinstance(kind, type) and issubclass(kind, BaseException):
                kinds.append(kind)
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, tuple(kinds)) or isinstance(e, ConnectionError | TimeoutError):
            return e
        e = e.__cause__ or e.__context__
    return None


def _download(repo_id: str, revision: str | None, local_dir: Path | None,
              token: str | bool | None) -> Path:
    from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download

    cache_dir = settings.hub_cache_dir()
    # Pin one commit, so a push landing mid-download cannot mix two revisions, and the bad files
    # are re-fetched from the same commit. Offline, the commit cached under refs/ is used.
    commit = HfApi(token=token).resolve_revision(
        repo_id, repo_type="dataset", revision=revision, cache_dir=cache_dir)
    logger.info("%s@%s is commit %s", repo_id, revision or "main", commit.resolved)
    common: dict[str, Any] = {
        "repo_id": repo_id, "repo_type": "dataset", "revision": commit, "token": token,
        "cache_dir": cache_dir, "local_dir": None if local_dir is None else Path(local_dir),
    }
    folder = Path(snapshot_download(**common))
    problems, wrong = _manifest_problems_or_bad_manifest(folder)
    offline = constants.HF_HUB_OFFLINE
    refetched = bool(wrong) and not offline
    if refetched:
        logger.warning("%s: %d file(s) do not match the manifest, downloading them again: %s",
                       folder, len(wrong), ", ".join(sorted(wrong)))
        for rel in sorted(wrong):
            hf_hub_download(filename=rel, force_download=True, **common)
        problems, wrong = _manifest_problems_or_bad_manifest(folder)
    if problems:
        hint = f"Source: {repo_id} at commit {commit.resolved}."
        if refetched and wrong:
            hint += (" Files with wrong content were downloaded twice and still differ: the repo"
                     " does not match its own manifest; please report it to its maintainers.")
        if offline and wrong:
            hint += " HF_HUB_OFFLINE is set, so nothing was downloaded again."
        if local_dir is not None:
            hint += f" Files of another revision left in {local_dir} must be deleted."
        raise ManifestError(folder, problems, hint)
    return folder


def _manifest_problems_or_bad_manifest(folder: Path) -> tuple[dict[str, str], set[str]]:
    """Like :func:`_manifest_problems`, but a broken manifest.json is a re-downloadable file."""
    try:
        return _manifest_problems(folder, check_unlisted=True)
    except ManifestError as err:
        name = settings.MANIFEST_FILENAME
        broken = {name} if (folder / name).is_file() else set()
        return err.problems, broken


def push(
    folder: Path,
    repo_id: str,
    private: bool = True,
    token: str | bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Publish a built dataset folder as a Hub dataset repo; returns the commit URL.

    Validates the folder first (:func:`validate_folder`: manifest, file hashes, card), creates
    the repo if needed (``private`` only applies when it is created), creates ``revision`` as a
    branch if it does not exist, and uploads exactly the files the manifest lists plus the
    manifest. Files on the Hub that are not in this build are deleted in the same commit
    (``.gitattributes`` is kept), so the repo mirrors the folder and old shards cannot leak into
    the card's ``data_files`` globs. The commit sha is the last part of the returned URL.

    Raises:
        ManifestError, DatasetCardError: the folder is not valid; nothing was uploaded.
        HubRepoIdError: ``repo_id`` is not a valid repo id; nothing was uploaded.
        HubTransferError: the Hub could not be reached or the connection dropped; a commit
            is all or nothing, so running the command again is safe.
    """
    folder = Path(folder)
    check_repo_id(repo_id)
    validate_folder(folder)
    try:
        return _push(folder, repo_id, private, token, revision, commit_message)
    except Exception as err:
        failed = _transfer_failed(err, f"pushing {folder} to {repo_id} on")
        if failed is None:
            raise
        raise failed from None


def _push(folder: Path, repo_id: str, private: bool, token: str | bool | None,
          revision: str | None, commit_message: str | None) -> str:
    from huggingface_hub import HfApi

    listed = [entry["path"] for entry in read_manifest(folder)["files"]]
    api = HfApi(token=token)
    repo_url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    repo_id = repo_url.repo_id  # the user's namespace is filled in if repo_id had none
    if revision is not None and revision != "main":
        api.create_branch(repo_id, repo_type="dataset", branch=revision, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        repo_type="dataset",
        folder_path=folder,
        revision=revision,
        commit_message=commit_message or f"Upload ArtifactGSI dataset ({len(listed)} files)",
        allow_patterns=_exact_patterns([*listed, settings.MANIFEST_FILENAME]),
        delete_patterns="*",
    )
    logger.info("pushed %s to %s: %s", folder, repo_id, info.commit_url)
    return str(info.commit_url)


def _exact_patterns(paths: Iterable[str]) -> list[str]:
    """fnmatch patterns matching exactly these paths (``[``, ``*``, ``?`` escaped)."""
    return [glob.escape(p) for p in paths]
