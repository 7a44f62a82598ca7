"""A board: a folder (or a Hub dataset repo) with ``board.json`` and one folder per entry.

Layout::

    board.json                              BoardConfig: dataset, protocols, test slices, metrics
    submissions/<method>/<version>/
        results.json                        the run's results (benchmark.results.Results)
        predictions/<split>-*.parquet       int16 HU predictions (path as results.json says)
        card.yaml                           the method card (leaderboard.card.MethodCard)
        figure.png                          optional, the run's figure
        verification.json                   written by `leaderboard verify` (maintainer side)

A board read from a Hub repo is read at one commit (``revision``, resolved to its sha), and
lists exactly the entries present there: an entry whose files are broken is listed as
``invalid`` with the reason, never dropped.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from benchmark.results import COMPARISONS, Results, atomic_write_text

from .card import CARD_FILE, CardError, MethodCard

BOARD_FILE = "board.json"
BOARD_FORMAT = "marbench-board/1"
SUBMISSIONS = "submissions"
VERIFICATION_FILE = "verification.json"

#: Status of an entry: set by `leaderboard verify` (verified / reproduced / rejected), else
#: ``submitted`` (self-reported, not yet checked) or ``invalid`` (its files are broken).
Status = Literal["submitted", "verified", "reproduced", "rejected", "invalid"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BoardDataset(_Model):
    """The scored data every entry must have used (``revision`` None: a local build)."""

    source: str | None = None
    repo_id: str | None = None
    revision: str | None = None
    manifest_sha256: str
    config: str = "pairs"
    split: str = "test"


class BoardSlice(_Model):
    """One test slice that every submission must score exactly once; ``comparisons`` are
    those the slice has (``method_vs_ideal`` only where an ideal image exists)."""

    patient_id: str
    slice_index: int
    implant_type: str
    comparisons: list[str] = Field(default_factory=lambda: ["method_vs_gsi"])


class RankedMetric(_Model):
    """A column of the board: ``comparison`` (e.g. ``method_vs_gsi``) and ``metric``."""

    comparison: str
    metric: str
    label: str
    higher_is_better: bool
    unit: str = ""

    @property
    def key(self) -> str:
        return f"{self.comparison}.{self.metric}"


class BootstrapSettings(_Model):
    """How uncertainty is estimated (see :mod:`leaderboard.significance`)."""

    n_resamples: int = Field(2000, ge=100)
    unit: Literal["patient", "slice", "two-stage"] = "patient"
    seed: int = 0
    alpha: float = Field(0.05, gt=0, lt=1)


class BoardConfig(_Model):
    """``board.json``: what the board accepts and how it ranks (first metric = primary)."""

    format: Literal["marbench-board/1"] = BOARD_FORMAT
    title: str
    protocols: list[str] = Field(min_length=1)
    dataset: BoardDataset
    slices: list[BoardSlice] = Field(min_length=1)
    metrics: list[RankedMetric] = Field(min_length=1)
    bootstrap: BootstrapSettings = Field(default_factory=BootstrapSettings)

    @classmethod
    def load(cls, path: Path | str) -> BoardConfig:
        p = Path(path)
        if p.is_dir():
            p = p / BOARD_FILE
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no board configuration (create one with "
                                    "`leaderboard init BOARD --reference RUN_DIR`)")
        try:
            return cls.model_validate_json(p.read_text(encoding="utf-8"))
        except ValidationError as e:
            raise ValueError(f"{p}: not a valid board configuration:\n{e}") from None

    def save(self, path: Path | str) -> Path:
        p = Path(path)
        if p.is_dir():
            p = p / BOARD_FILE
        return atomic_write_text(p, self.model_dump_json(indent=2) + "\n")

    @property
    def implant_types(self) -> list[str]:
        return sorted({s.implant_type for s in self.slices})


class Verification(_Model):
    """``verification.json``: the maintainer's check of one entry."""

    status: Literal["verified", "reproduced", "rejected"]
    reasons: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    predictions_sha256: str
    checked_utc: datetime
    max_abs_score_diff: float | None = None
    max_abs_prediction_diff_hu: float | None = None
    tool: str = ""


def default_metrics(results: Results) -> list[RankedMetric]:
    """The image-group metrics the results declare for tables (PSNR / SSIM / LPIPS, and any
    plug-in image metric), computed against GSI, then against the ideal image when the data
    has it: the paper's columns."""
    out: list[RankedMetric] = []
    for comp, where in (("method_vs_gsi", "GSI"), ("method_vs_ideal", "ideal")):
        c = results.comparisons.get(comp)
        if c is None or not c.available:
            continue
        for m, d in results.metrics.items():
            r = d.resolved(m)
            if r.group == "image" and r.table and m in c.summary:
                out.append(RankedMetric(comparison=comp, metric=m, label=f"{r.label} vs {where}",
                                        higher_is_better=d.higher_is_better, unit=d.unit))
    if not out:
        raise ValueError("the reference results have no PSNR / SSIM summaries to rank by")
    return out


def parse_metric(spec: str, results: Results) -> RankedMetric:
    """``"method_vs_gsi.psnr"`` (or ``"psnr"`` for ``method_vs_gsi``) -> RankedMetric."""
    comp, _, metric = spec.rpartition(".")
    comp = comp or "method_vs_gsi"
    if comp not in COMPARISONS:
        raise ValueError(f"--metric {spec!r}: unknown comparison {comp!r}; expected one of "
                         f"{sorted(COMPARISONS)}")
    if metric not in results.metrics:
        raise ValueError(f"--metric {spec!r}: the reference results have no metric {metric!r}; "
                         f"they have {sorted(results.metrics)}")
    d = results.metrics[metric]
    where = comp.rsplit("_vs_", 1)[1]
    return RankedMetric(comparison=comp, metric=metric, label=f"{metric} vs {where}",
                        higher_is_better=d.higher_is_better, unit=d.unit)


def config_from_results(results: Results, title: str,
                        metrics: list[str] | None = None) -> BoardConfig:
    """A board configuration that accepts runs on the same data and protocol as ``results``
    (a trusted run of the maintainer, e.g. the identity baseline)."""
    ds = results.dataset
    if ds.limit is not None or ds.n_slices_scored != ds.n_slices_split:
        raise ValueError(f"the reference run scored {ds.n_slices_scored} of "
                         f"{ds.n_slices_split} slices (--limit): use a run over the whole split")
    if ds.manifest_sha256 is None:
        raise ValueError("the reference run's data has no manifest.json, so submissions "
                         "could not be tied to it; build the dataset with artifactgsi")
    ranked = [parse_metric(m, results) for m in metrics] if metrics else default_metrics(results)
    return BoardConfig(
        title=title, protocols=[results.protocol.version],
        dataset=BoardDataset(source=ds.source, repo_id=ds.repo_id, revision=ds.revision,
                             manifest_sha256=ds.manifest_sha256, config=ds.config,
                             split=ds.split),
        slices=[BoardSlice(patient_id=s.patient_id, slice_index=s.slice_index,
                           implant_type=s.implant_type,
                           comparisons=sorted(k for k in s.scores if k.startswith("method_")))
                for s in results.per_slice],
        metrics=ranked)


# ----------------------------------------------------------------------------- entries

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_segment(text: str) -> str:
    """A method name or version as one path segment."""
    return _SAFE.sub("_", text).strip("._") or "unnamed"


def entry_path(results: Results) -> str:
    """``submissions/<method>/<version>`` for a run."""
    return f"{SUBMISSIONS}/{safe_segment(results.method.name)}/" \
           f"{safe_segment(results.method.version or '0')}"


@dataclass
class Entry:
    """One submission folder of a board.

    ``results`` / ``card`` are ``None`` when the file is broken; ``problems`` then says why.
    """

    key: str                      # "<method>/<version>"
    folder: Path
    results: Results | None = None
    card: MethodCard | None = None
    verification: Verification | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def status(self) -> Status:
        if self.results is None or self.card is None or self.problems:
            return "invalid"
        v = self.verification
        if v is None or self.results.predictions is None \
                or v.predictions_sha256 != self.results.predictions.sha256:
            return "submitted"  # never checked, or checked for other predictions
        return v.status

    @property
    def label(self) -> str:
        if self.card is not None:
            return self.card.name
        return self.key

    def figure_path(self) -> Path | None:
        if self.results is None or not self.results.figure:
            return None
        p = self.folder / self.results.figure
        return p if p.is_file() else None


def read_entry(folder: Path, key: str) -> Entry:
    """Load one submission folder; problems are recorded, never raised."""
    entry = Entry(key=key, folder=folder)
    try:
        entry.results = Results.load(folder / "results.json")
    except (FileNotFoundError, ValueError) as e:
        entry.problems.append(f"results.json: {e}")
    try:
        entry.card = MethodCard.load(folder / CARD_FILE)
    except CardError as e:
        entry.problems.append(f"{CARD_FILE}: {e}")
    vpath = folder / VERIFICATION_FILE
    if vpath.is_file():
        try:
            entry.verification = Verification.model_validate_json(vpath.read_text("utf-8"))
        except ValidationError as e:
            entry.problems.append(f"{VERIFICATION_FILE}: not valid ({e.error_count()} errors)")
    return entry


@dataclass
class Board:
    """A board read from a folder (``revision`` is then ``None``) or a Hub repo at a commit."""

    root: Path
    config: BoardConfig
    entries: list[Entry]
    source: str
    revision: str | None = None

    @classmethod
    def open(cls, source: str | Path, revision: str | None = None,
             cache_dir: Path | str | None = None) -> Board:
        """Read a board folder, or the Hub dataset repo ``source`` at ``revision`` (a branch,
        ``refs/pr/N`` or a commit; default ``main``), resolved to its commit sha."""
        root, sha = resolve_board(source, revision, cache_dir)
        config = BoardConfig.load(root)
        return cls(root=root, config=config, entries=list_entries(root), source=str(source),
                   revision=sha)

    def entry(self, key: str) -> Entry:
        for e in self.entries:
            if e.key == key:
                return e
        raise KeyError(f"no entry {key!r} on the board; it has "
                       f"{', '.join(e.key for e in self.entries) or 'none'}")


def list_entries(root: Path) -> list[Entry]:
    """Every ``submissions/<method>/<version>/`` folder that holds any file, sorted by key."""
    base = root / SUBMISSIONS
    out = []
    if base.is_dir():
        for method_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            for version_dir in sorted(p for p in method_dir.iterdir() if p.is_dir()):
                if any(f.is_file() for f in version_dir.rglob("*")):
                    out.append(read_entry(version_dir, f"{method_dir.name}/{version_dir.name}"))
    return out


def is_local_board(source: str | Path) -> bool:
    """A path that exists, or one written like a path (``./b``, ``/x``, ``b/``), is a folder;
    ``org/name`` is a Hub repo id."""
    s = str(source)
    return Path(s).exists() or s.startswith((".", "/", "~")) or s.endswith("/") \
        or s.count("/") != 1


def resolve_board(source: str | Path, revision: str | None = None,
                  cache_dir: Path | str | None = None) -> tuple[Path, str | None]:
    """(local folder, commit sha or None) of a board folder or Hub dataset repo."""
    if is_local_board(source):
        root = Path(source).expanduser()
        if revision is not None:
            raise ValueError(f"--revision {revision!r} applies to Hub boards, but {source} is "
                             "a local folder")
        if not (root / BOARD_FILE).is_file():
            raise FileNotFoundError(f"{root}: no {BOARD_FILE}; create the board with "
                                    "`leaderboard init`")
        return root, None
    from huggingface_hub import HfApi, snapshot_download

    api = HfApi()
    sha = api.repo_info(str(source), repo_type="dataset", revision=revision or "main").sha
    # Download at the resolved sha, so the listing and the files are of one commit.
    root = Path(snapshot_download(str(source), repo_type="dataset", revision=sha,
                                  cache_dir=cache_dir))
    return root, sha


def finite_or_none(x: float) -> float | None:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def board_summary(board: Board) -> dict[str, Any]:
    """A JSON-able listing of the board (keys, statuses): what a snapshot test compares."""
    return {"revision": board.revision, "entries": [
        {"key": e.key, "status": e.status,
         "method": e.results.method.name if e.results else None,
         "predictions_sha256": (e.results.predictions.sha256
                                if e.results and e.results.predictions else None)}
        for e in board.entries]}


def write_json(path: Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
