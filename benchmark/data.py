"""Reading a built ArtifactGSI dataset (layout: docs/dataset.md) for the benchmark.

:func:`open_split` takes a local folder or a Hugging Face Hub dataset repo id, finds the
Parquet files of one ``config`` / ``split`` from the dataset card's ``configs:`` (YAML),
checks them against ``manifest.json`` (size and sha256), and loads them with
``datasets.load_dataset("parquet", ...)``. From the Hub only the card, the manifest and the
requested split's files are downloaded (one pinned commit), not the whole repository.

:class:`PairsSplit` serves the rows in a fixed order (patient, then ascending slice index) as
:class:`PairsBatch` objects: a :class:`~benchmark.method.MARInput` for the method plus the
GSI and, where the row has one, ideal reference images. HU are read exactly (int16) and
handed over as float32. Neighbour stacks (``(2k+1, H, W)`` around a slice, edge slices
repeated) come from the rows of the same patient sorted by ``slice_index``.
"""

from __future__ import annotations

import glob
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from artifactgsi import settings
from artifactgsi.dataset import SliceIndex, check_split
from artifactgsi.hub import (
    DatasetCardError,
    ManifestError,
    glob_to_regex,
    manifest_entry_problems,
    read_card_metadata,
    read_manifest,
    sha256_file,
)
from benchmark.errors import MARBenchError
from benchmark.method import MARInput

#: Columns the benchmark needs from the ``pairs`` config (see docs/dataset.md).
REQUIRED_COLUMNS = ("patient_id", "slice_index", "ordinary", "metal_mask",
                    "pixel_spacing_mm", "implant_type")
#: At least one reference image: GSI (``pairs``) or the image without metal (``aapm``).
REFERENCE_COLUMNS = ("gsi", "reference")
#: Columns used when present.
OPTIONAL_COLUMNS = ("gsi", "reference", "ideal", "z_mm", "labels")
_IMAGE_COLUMNS = ("ordinary", "gsi", "reference", "metal_mask", "ideal", "labels")

_REPO_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


class DatasetError(MARBenchError, ValueError):
    """The dataset cannot be read as asked (the message names the dataset and the fix)."""


@dataclass(frozen=True)
class DataFile:
    """One Parquet file of the split: path relative to the folder, manifest size / sha256."""

    path: str
    bytes: int
    sha256: str | None
    rows: int | None


@dataclass(frozen=True)
class DatasetSource:
    """Where the data came from (what results files record).

    Attributes:
        source: what the caller passed.
        folder: the local folder read (a Hub cache snapshot for Hub data).
        repo_id: Hub dataset repo id, or ``None`` for a local folder.
        revision: Hub commit sha (also found for a folder inside the Hub cache), else ``None``.
        manifest_sha256: sha256 of ``manifest.json``, ``None`` if the folder has none.
    """

    source: str
    folder: Path
    repo_id: str | None
    revision: str | None
    manifest_sha256: str | None


# ----------------------------------------------------------------------------- card / files


def split_patterns(metadata: dict[str, Any], config: str) -> dict[str, list[str]] | None:
    """``{split: [glob, ...]}`` of ``config`` from the card's YAML, ``None`` if the card has no
    ``configs:`` list; raises :class:`KeyError` (with the known names) if ``config`` is absent.

    ``data_files`` follows the Hub convention: a string or list of strings is the ``train``
    split; a list of ``{split, path}`` items or a ``{split: path}`` mapping names splits.
    """
    configs = metadata.get("configs")
    if not isinstance(configs, list) or not configs:
        return None
    names = [c.get("config_name", "default") for c in configs if isinstance(c, dict)]
    entry = next((c for c in configs if isinstance(c, dict)
                  and c.get("config_name", "default") == config), None)
    if entry is None:
        raise KeyError(", ".join(str(n) for n in names))
    df = entry.get("data_files")

    def as_list(v: Any) -> list[str]:
        return [str(p).removeprefix("./") for p in (v if isinstance(v, list) else [v]) if p]

    out: dict[str, list[str]] = {}
    if isinstance(df, str):
        out["train"] = as_list(df)
    elif isinstance(df, dict):
        out = {str(k): as_list(v) for k, v in df.items()}
    elif isinstance(df, list):
        for item in df:
            if isinstance(item, dict):
                out.setdefault(str(item.get("split", "train")), []).extend(
                    as_list(item.get("path")))
            else:
                out.setdefault("train", []).extend(as_list(item))
    return out


def _default_patterns(folder: Path, config: str) -> dict[str, list[str]]:
    """Without a card: the builder's layout, ``<config>/<split>-NNNNN-of-NNNNN.parquet``."""
    splits = sorted({p.name.split("-", 1)[0] for p in (folder / config).glob("*.parquet")})
    return {s: [f"{config}/{s}-*.parquet"] for s in splits}


def _describe(source: str, folder: Path, repo_id: str | None, revision: str | None) -> str:
    if repo_id:
        return f"Hub dataset {repo_id!r}" + (f" at {revision[:12]}" if revision else "")
    return f"dataset folder {str(folder)!r}"


def _split_files(folder: Path, config: str, split: str, where: str, *,
                 require_manifest: bool = False) -> tuple[list[DataFile], str | None]:
    """The split's files (from the card + manifest) and the manifest's sha256."""
    try:
        metadata = read_card_metadata(folder)
    except DatasetCardError:
        metadata = {}
    try:
        patterns = split_patterns(metadata, config)
    except KeyError as e:
        raise DatasetError(f"{where} has no config {config!r}; available configs: "
                           f"{e.args[0]} (pass --config)") from None
    if patterns is None:
        patterns = _default_patterns(folder, config)
        if not patterns:
            raise DatasetError(f"{where}: no dataset card with 'configs:' and no "
                               f"{config}/*.parquet files; is this a built ArtifactGSI "
                               "dataset (`artifactgsi build` writes one)?")
    if split not in patterns:
        raise DatasetError(f"{where}, config {config!r}, has no split {split!r}; available "
                           f"splits: {', '.join(sorted(patterns)) or 'none'}")
    regexes = [glob_to_regex(p) for p in patterns[split]]
    manifest_path = folder / settings.MANIFEST_FILENAME
    if manifest_path.is_file():
        manifest = read_manifest(folder)
        files = [DataFile(e["path"], e["bytes"], e["sha256"], e.get("rows"))
                 for e in manifest["files"]
                 if e["path"].endswith(".parquet") and any(r.fullmatch(e["path"]) for r in regexes)]
        digest: str | None = sha256_file(manifest_path)
    elif require_manifest:
        raise DatasetError(f"{where}: no {settings.MANIFEST_FILENAME}, so the files cannot be "
                           "checked and results could not say which data was scored. Rebuild "
                           "or re-download the dataset, or pass --no-verify to score it "
                           "anyway (results then record no manifest sha256).")
    else:
        rels = sorted({Path(p).relative_to(folder).as_posix() for pat in patterns[split]
                       for p in glob.glob(str(folder / pat), recursive=True)})
        files = [DataFile(r, (folder / r).stat().st_size, None, None) for r in rels]
        digest = None
    files.sort(key=lambda f: f.path)
    if not files:
        raise DatasetError(f"{where}: split {split!r} of config {config!r} matches no Parquet "
                           f"file (data_files {patterns[split]})")
    return files, digest


def verify_files(folder: Path, files: Sequence[DataFile]) -> None:
    """Check each file's size and sha256 against the manifest; :class:`ManifestError` if not."""
    problems, _ = manifest_entry_problems(folder, [
        {"path": f.path, "bytes": f.bytes, "sha256": f.sha256, "rows": f.rows} for f in files])
    if problems:
        raise ManifestError(folder, problems, "The files differ from the manifest the results "
                            "would record: rebuild or re-download the dataset.")


def _fetch_from_hub(repo_id: str, revision: str | None, config: str,
                    split: str) -> tuple[Path, str]:
    """Download the card, manifest and one split's files at one commit -> (folder, commit)."""
    from huggingface_hub import HfApi, snapshot_download

    cache_dir = settings.hub_cache_dir()
    commit = HfApi().resolve_revision(repo_id, repo_type="dataset", revision=revision,
                                      cache_dir=cache_dir)
    common: dict[str, Any] = {"repo_id": repo_id, "repo_type": "dataset", "revision": commit,
                              "cache_dir": cache_dir}
    meta = [settings.CARD_FILENAME, settings.MANIFEST_FILENAME]
    folder = Path(snapshot_download(allow_patterns=meta, **common))
    where = _describe(repo_id, folder, repo_id, commit.resolved)
    files, _ = _split_files(folder, config, split, where)
    snapshot_download(allow_patterns=meta + [glob.escape(f.path) for f in files], **common)
    return folder, str(commit.resolved)


def resolve_source(data: str | Path, config: str, split: str, revision: str | None = None,
                   *, require_manifest: bool = False) -> tuple[DatasetSource, list[DataFile]]:
    """Find the folder (downloading from the Hub if ``data`` is a repo id) and the split's
    files, verified against the manifest."""
    text = str(data)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise DatasetError(f"{text}: is a file; --data takes a built dataset folder or a "
                               "Hub dataset repo id")
        folder = path.resolve()
        repo_id = None
        # A snapshot in the Hub cache (.../datasets--org--name/snapshots/<commit>) knows both.
        rev = folder.name if folder.parent.name == "snapshots" and re.fullmatch(
            r"[0-9a-f]{40}", folder.name) else None
        if rev and folder.parent.parent.name.startswith("datasets--"):
            repo_id = folder.parent.parent.name.removeprefix("datasets--").replace("--", "/")
        if revision is not None and revision != rev:
            raise DatasetError(f"{text}: --revision {revision!r} applies to Hub repo ids, not "
                               "to a local folder")
    elif _REPO_ID_RE.fullmatch(text) and not text.startswith((".", "~")):
        try:
            folder, rev = _fetch_from_hub(text, revision, config, split)
        except DatasetError:
            raise
        except Exception as e:  # network, auth, unknown repo: say what was tried
            raise DatasetError(f"{text!r} is not a local folder, and downloading it as a Hub "
                               f"dataset repo failed: {type(e).__name__}: {e}") from e
        repo_id = text
    else:
        raise DatasetError(f"{text}: no such folder, and not a Hub dataset repo id "
                           "('org/name')")
    where = _describe(text, folder, repo_id, rev)
    files, digest = _split_files(folder, config, split, where,
                                 require_manifest=require_manifest)
    verify_files(folder, files)
    check_split(folder, config, split, [f.path for f in files], where)
    return DatasetSource(source=text, folder=folder, repo_id=repo_id, revision=rev,
                         manifest_sha256=digest), files


def split_content_sha256(folder: Path | str, config: str, split: str) -> str | None:
    """The content fingerprint of ``config``/``split`` that the builder records in
    ``manifest.json`` (independent of the pseudonymisation key: two builds of the same raw
    data share it); ``None`` for a dataset built before it was recorded, or without one."""
    path = Path(folder) / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        value = manifest["configs"][config][split].get("content_sha256")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return value if isinstance(value, str) else None


# ----------------------------------------------------------------------------- the split


@dataclass
class PairsBatch:
    """One batch of rows of a ``pairs`` split.

    Attributes:
        input: what the method sees (ordinary HU, metal mask, spacing, ids, neighbours).
        gsi_hu: (B, 1, H, W) float32 GSI reference, HU (``None`` for data without GSI).
        ideal_hu: (B, 1, H, W) float32 ideal reference, HU (rows without one are zeros),
            or ``None`` if no row of the batch has one.
        has_ideal: (B,) bool, rows that have an ideal image.
        labels: (B, H, W) uint8 reference labels (rows without labels are zeros), or
            ``None`` if no row of the batch has them.
        has_labels: (B,) bool, rows that have labels.
        z_mm: B slice positions in mm (``None`` where the column is absent).
        rows: B row numbers in the underlying dataset.
        reference_hu: (B, 1, H, W) float32 image without metal (``aapm`` config), or
            ``None``.
    """

    input: MARInput
    gsi_hu: torch.Tensor | None
    ideal_hu: torch.Tensor | None
    has_ideal: torch.Tensor
    z_mm: list[float | None]
    rows: list[int]
    labels: torch.Tensor | None = None
    has_labels: torch.Tensor | None = None
    reference_hu: torch.Tensor | None = None


class PairsSplit:
    """The rows of one ``pairs`` split in benchmark order (patient, then slice index).

    Args:
        dataset: a ``datasets.Dataset`` with the ``pairs`` columns (:mod:`artifactgsi.schema`).
        source: where it came from; ``files``: its Parquet files; ``config``, ``split``: names.
    """

    def __init__(self, dataset: Any, source: DatasetSource, files: Sequence[DataFile],
                 config: str, split: str) -> None:
        self.source = source
        self.files = list(files)
        self.config = config
        self.split = split
        where = f"{_describe(source.source, source.folder, source.repo_id, source.revision)} " \
                f"(config {config!r}, split {split!r})"
        self.where = where
        cols = set(dataset.column_names)
        missing = [c for c in REQUIRED_COLUMNS if c not in cols]
        if not cols & set(REFERENCE_COLUMNS):
            missing.append(" or ".join(REFERENCE_COLUMNS))
        if missing:
            raise DatasetError(f"{where} lacks column(s) {', '.join(missing)}; it has "
                               f"{', '.join(sorted(cols))}. The benchmark needs the 'pairs' "
                               "config of a built dataset.")
        shapes = {c: tuple(getattr(dataset.features[c], "shape", ()) or ())
                  for c in _IMAGE_COLUMNS if c in cols}
        if len(set(shapes.values())) > 1:
            raise DatasetError(f"{where}: image columns have different shapes {shapes}; "
                               "all must be on the GSI grid")
        self.has_ideal_column = "ideal" in cols
        #: Whether the split has GSI images (``pairs``) / images without metal (``aapm``).
        self.has_gsi = "gsi" in cols
        self.has_reference = "reference" in cols
        self._columns = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in cols]
        self._ds = dataset
        self._np = dataset.with_format("numpy", columns=self._columns, dtype=None)
        self._ord = dataset.with_format("numpy", columns=["ordinary"], dtype=None)
        table = dataset.data  # arrow table (no indices mapping: the dataset is freshly loaded)
        pids = [str(p) for p in table.column("patient_id").to_pylist()]
        sidx = [int(s) for s in table.column("slice_index").to_pylist()]
        if self.has_ideal_column:
            self._ideal_null = np.asarray(table.column("ideal").is_null().to_pylist(), bool)
        else:
            self._ideal_null = np.ones(len(pids), bool)
        if "labels" in cols:
            self._labels_null = np.asarray(table.column("labels").is_null().to_pylist(), bool)
        else:
            self._labels_null = np.ones(len(pids), bool)
        seen: dict[tuple[str, int], int] = {}
        for i, key in enumerate(zip(pids, sidx, strict=True)):
            if key in seen:
                raise DatasetError(f"{where}: rows {seen[key]} and {i} are both patient "
                                   f"{key[0]!r} slice {key[1]}")
            seen[key] = i
        #: row numbers in benchmark order.
        self.order: list[int] = [seen[k] for k in sorted(seen)]
        self._patient_id = pids
        self._slice_index = sidx
        # Neighbour slices: the dataset package's one definition (edges repeated).
        self._slices = SliceIndex(pids, sidx)
        feat = dataset.features["implant_type"]
        self._implant_names = getattr(feat, "int2str", None)

    def __len__(self) -> int:
        return len(self.order)

    @property
    def has_ideal(self) -> bool:
        """Whether any row has an ideal image (simulated data)."""
        return bool((~self._ideal_null).any())

    @property
    def has_labels(self) -> bool:
        """Whether any row has segmentation labels."""
        return bool((~self._labels_null).any())

    def slice_id(self, row: int) -> tuple[str, int]:
        return self._patient_id[row], self._slice_index[row]

    def neighbour_rows(self, row: int, k: int) -> list[int]:
        """The 2k+1 rows around ``row`` in its patient (by slice index), edges repeated."""
        return self._slices.neighbour_rows(row, k)

    def neighbour_stack(self, row: int, k: int) -> np.ndarray:
        """(2k+1, H, W) int16 ordinary HU around ``row`` (centre at index k)."""
        return np.asarray(self._ord[self.neighbour_rows(row, k)]["ordinary"])

    def batch(self, rows: Sequence[int], neighbour_slices: int = 0) -> PairsBatch:
        """Rows -> :class:`PairsBatch` (float32 HU tensors, bool masks)."""
        rows = [int(r) for r in rows]
        d = self._np[rows]
        shape = {c: np.shape(d[c]) for c in ("ordinary", "gsi", "reference", "metal_mask")
                 if c in self._columns}
        if len(set(shape.values())) != 1 or len(shape["ordinary"]) != 3:
            ids = ", ".join(f"patient {p!r} slice {s}" for p, s in map(self.slice_id, rows))
            raise DatasetError(f"{self.where}: rows {ids} do not stack into (B, H, W) images "
                               f"on one grid: {shape}")
        ordinary = torch.from_numpy(np.asarray(d["ordinary"], np.float32)).unsqueeze(1)
        gsi = (torch.from_numpy(np.asarray(d["gsi"], np.float32)).unsqueeze(1)
               if self.has_gsi else None)
        reference = (torch.from_numpy(np.asarray(d["reference"], np.float32)).unsqueeze(1)
                     if self.has_reference else None)
        mask = torch.from_numpy(np.asarray(d["metal_mask"]) != 0).unsqueeze(1)
        implant = d["implant_type"]
        if self._implant_names is not None:
            implant_types = [self._implant_names(int(v)) for v in implant]
        else:
            implant_types = [str(v) for v in implant]
        has_ideal = torch.from_numpy(~self._ideal_null[rows])
        ideal = None
        if bool(has_ideal.any()):
            arr = np.asarray(d["ideal"], dtype=np.float32)  # float64 with NaN rows if mixed
            arr[~has_ideal.numpy()] = 0.0
            ideal = torch.from_numpy(arr).unsqueeze(1)
        has_labels = torch.from_numpy(~self._labels_null[rows])
        labels = None
        if bool(has_labels.any()):
            lab = [np.asarray(v, np.uint8) if ok else np.zeros(ordinary.shape[2:], np.uint8)
                   for v, ok in zip(d["labels"], has_labels.tolist(), strict=True)]
            labels = torch.from_numpy(np.stack(lab))
        neighbours = None
        if neighbour_slices > 0:
            need = [self.neighbour_rows(r, neighbour_slices) for r in rows]
            uniq = sorted({r for group in need for r in group})
            imgs = np.asarray(self._ord[uniq]["ordinary"], np.float32)
            at = {r: i for i, r in enumerate(uniq)}
            neighbours = torch.from_numpy(np.stack([imgs[[at[r] for r in g]] for g in need]))
        z_mm: list[float | None] = ([float(v) for v in d["z_mm"]] if "z_mm" in self._columns
                                    else [None] * len(rows))
        inp = MARInput(
            ordinary=ordinary, metal_mask=mask,
            pixel_spacing_mm=torch.as_tensor(np.asarray(d["pixel_spacing_mm"], np.float32)),
            implant_type=implant_types, patient_id=[self._patient_id[r] for r in rows],
            slice_index=[self._slice_index[r] for r in rows], neighbours=neighbours)
        return PairsBatch(input=inp, gsi_hu=gsi, ideal_hu=ideal, has_ideal=has_ideal,
                          z_mm=z_mm, rows=rows, labels=labels, has_labels=has_labels,
                          reference_hu=reference)

    def iter_batches(self, batch_size: int, limit: int | None = None,
                     neighbour_slices: int = 0) -> Iterator[PairsBatch]:
        """Batches of up to ``batch_size`` rows in benchmark order (the first ``limit`` rows)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = self.order[:limit] if limit is not None else self.order
        for i in range(0, len(order), batch_size):
            yield self.batch(order[i:i + batch_size], neighbour_slices)


def open_split(data: str | Path, split: str = "test", *, config: str = "pairs",
               revision: str | None = None, cache_dir: Path | str | None = None,
               require_manifest: bool = False) -> PairsSplit:
    """Open one split of a built dataset (a folder or a Hub repo id) for the benchmark.

    The split's files are checked against ``manifest.json`` (size and sha256) before they
    are loaded, so a results file's manifest hash describes the data that was scored.

    Args:
        data: a built dataset folder, or a Hub dataset repo id (``org/name``).
        split: e.g. ``"test"``; config: e.g. ``"pairs"``.
        revision: Hub branch, tag or commit (repo ids only).
        cache_dir: ``datasets`` cache for the Arrow files (default: its own).
        require_manifest: refuse a folder without ``manifest.json`` (the runner does, unless
            told ``--no-verify``: results must say which data was scored).

    Raises:
        DatasetError: no such folder / repo, config or split (the available ones are listed),
            or required columns missing.
        ManifestError: the split's files differ from the manifest.
    """
    import datasets

    source, files = resolve_source(data, config, split, revision,
                                   require_manifest=require_manifest)
    ds = datasets.load_dataset(
        "parquet", data_files={split: [str(source.folder / f.path) for f in files]},
        split=split, cache_dir=None if cache_dir is None else str(cache_dir))
    return PairsSplit(ds, source, files, config, split)
