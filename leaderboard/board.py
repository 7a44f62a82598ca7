"""A board: a folder (or a Hub dataset repo) with ``board.json`` and one folder per entry.

Layout::

    board.json                              BoardConfig: dataset, protocols, test slices, metrics
    submissions/<method>/<version>/
        results.json                        the run's results (benchmark.results.Results)
        predictions/<split>-*.parquet       int16 HU predictions (path as results.json says)
        card.yaml                           the method card (leaderboard.card.MethodCard)
        figure.png                          optional, the run's figure (PNG only)
        verification.json                   written by `leaderboard verify` (maintainer side)
    hidden/<season>/                        the hidden track (:mod:`leaderboard.hidden`)
        season.json                         the season's card (never its seed)
        <method>/<version>/card.yaml, evaluation.json   written by `leaderboard evaluate`
    eval.yaml                               optional: the Hub's benchmark declaration

An entry holds these files and nothing else (:mod:`leaderboard.files`). A board read from a
Hub repo is read at one commit (``revision``, resolved to its sha), and lists exactly the
entries present there. Every entry is checked against ``board.json`` when the board is opened
(:func:`leaderboard.validate.assess_entries`): one whose files are broken, hostile or not
valid for the board is listed as ``invalid`` with its reasons, never dropped, and never
breaks the listing of the others.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from benchmark.results import COMPARISONS, Results, atomic_write_text

from .card import CARD_FILE, CardError, MethodCard
from .efficiency import Efficiency
from .errors import LeaderboardError
from .files import (
    FIGURE_FILE,
    MAX_RESULTS_BYTES,
    MAX_VERIFICATION_BYTES,
    PREDICTIONS_PATH,
    RESULTS_FILE,
    VERIFICATION_FILE,
    EntryFileError,
    read_limited,
    reencode_png,
)

if TYPE_CHECKING:
    from .hidden_records import HiddenSeason

_C = TypeVar("_C")  # the card class read_card returns

BOARD_FILE = "board.json"
BOARD_FORMAT = "marbench-board/1"
SUBMISSIONS = "submissions"
#: Longest reason kept for an entry (a hostile file can make error messages huge).
MAX_REASON_CHARS = 600


class BoardUnavailable(LeaderboardError, ConnectionError):
    """A Hub board could not be read (no network, no such repo, no access)."""

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
    #: (H, W) of every prediction, from the reference run (``None``: boards made before it
    #: was recorded; predictions then must at least share one shape).
    image_shape: tuple[int, int] | None = None


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
    #: Dataset ids that count as this benchmark's own data for the "zero-shot" column
    #: (besides ``dataset.repo_id``), e.g. other revisions or mirrors of it.
    own_datasets: list[str] = Field(default_factory=list)

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

    @property
    def benchmark_datasets(self) -> set[str]:
        """Ids of the data this board ranks on: what a card's ``training_data`` is compared
        with for the "zero-shot" column."""
        ids = {self.dataset.repo_id, *self.own_datasets}
        return {i for i in ids if i}


class Verification(_Model):
    """``verification.json``: the maintainer's check of one entry; ``efficiency`` is what
    ``--reproduce`` measured of the re-run (seconds per slice, peak memory, parameters)."""

    status: Literal["verified", "reproduced", "rejected"]
    reasons: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    predictions_sha256: str
    checked_utc: datetime
    max_abs_score_diff: float | None = None
    max_abs_prediction_diff_hu: float | None = None
    efficiency: Efficiency | None = None
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


def config_from_results(results: Results, title: str, metrics: list[str] | None = None,
                        run_dir: Path | str | None = None) -> BoardConfig:
    """A board configuration that accepts runs on the same data and protocol as ``results``
    (a trusted run of the maintainer, e.g. the identity baseline). With ``run_dir`` (the
    reference's run folder) the shape of its predictions is recorded, so predictions of
    another shape are refused before anything is scored."""
    ds = results.dataset
    if ds.limit is not None or ds.n_slices_scored != ds.n_slices_split:
        raise ValueError(f"the reference run scored {ds.n_slices_scored} of "
                         f"{ds.n_slices_split} slices (--limit): use a run over the whole split")
    if ds.manifest_sha256 is None:
        raise ValueError("the reference run's data has no manifest.json, so submissions "
                         "could not be tied to it; build the dataset with artifactgsi")
    ranked = [parse_metric(m, results) for m in metrics] if metrics else default_metrics(results)
    shape = None
    if run_dir is not None and results.predictions is not None:
        from .predictions import scan_predictions

        folder = Path(run_dir)
        folder = folder if folder.is_dir() else folder.parent
        scan = scan_predictions(folder / results.predictions.path)
        if scan.problems or len(scan.shapes) != 1:
            raise ValueError(f"the reference run's predictions cannot fix the image shape: "
                             f"{'; '.join(scan.problems) or sorted(scan.shapes)}")
        shape = next(iter(scan.shapes))
    return BoardConfig(
        title=title, protocols=[results.protocol.version],
        dataset=BoardDataset(source=ds.source, repo_id=ds.repo_id, revision=ds.revision,
                             manifest_sha256=ds.manifest_sha256, config=ds.config,
                             split=ds.split, image_shape=shape),
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


def short(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """``text`` cut to ``limit`` characters (reasons are shown on the page)."""
    return text if len(text) <= limit else text[:limit] + f"… ({len(text) - limit} more)"


#: Verification statuses that vouch for an entry's predictions.
VOUCHED = ("verified", "reproduced")


@dataclass
class Entry:
    """One submission folder of a board.

    ``results`` / ``card`` are ``None`` when the file is broken; ``problems`` then says why.
    ``checks`` are the reasons found by checking the entry against the board (validation,
    copies of other entries); ``content_sha256`` identifies the decoded predictions.
    """

    key: str                      # "<method>/<version>"
    folder: Path
    results: Results | None = None
    card: MethodCard | None = None
    verification: Verification | None = None
    problems: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    content_sha256: str | None = None

    @property
    def status(self) -> Status:
        """``invalid`` (broken files, or not valid for the board), else the maintainers'
        verdict on these predictions, else ``submitted``."""
        if self.results is None or self.card is None or self.problems:
            return "invalid"
        verdict = self.verified_status
        if verdict == "rejected":
            return verdict
        if self.checks:
            return "invalid"
        return verdict or "submitted"

    @property
    def verified_status(self) -> Literal["verified", "reproduced", "rejected"] | None:
        """The verification's status when it applies to these predictions (by sha256)."""
        v = self.verification
        if v is None or self.results is None or self.results.predictions is None \
                or v.predictions_sha256 != self.results.predictions.sha256:
            return None  # never checked, or checked for other predictions
        return v.status

    @property
    def reasons(self) -> list[str]:
        """Every reason the entry is not ranked (empty for a ranked entry)."""
        out = [*self.problems, *self.checks]
        if self.verified_status == "rejected" and self.verification is not None:
            out += self.verification.reasons
        # Shown on a public page: name files inside the entry, not the maintainer's folders.
        prefix = f"{self.folder}/"
        return list(dict.fromkeys(short(r.replace(prefix, "")) for r in out))

    @property
    def label(self) -> str:
        if self.card is not None:
            return self.card.name
        return self.key

    def figure_path(self) -> Path | None:
        """The entry's ``figure.png`` (a fixed name; results.json's ``figure`` is a path in
        the submitter's run folder and is never followed here)."""
        p = self.folder / FIGURE_FILE
        return p if p.is_file() else None


def _expected_files(results: Results | None) -> set[str]:
    names = {RESULTS_FILE, CARD_FILE, FIGURE_FILE, VERIFICATION_FILE}
    if results is not None and results.predictions is not None:
        names.add(results.predictions.path)
    return names


def _entry_files(folder: Path) -> list[str]:
    """Relative names of what the entry folder holds, two levels deep (no recursion, so a
    deep or looping tree costs nothing)."""
    out = []
    for p in sorted(folder.iterdir()):
        if p.is_dir() and not p.is_symlink():
            out += [f"{p.name}/{q.name}" + ("/" if q.is_dir() else "")
                    for q in sorted(p.iterdir())]
        else:
            out.append(p.name + ("/" if p.is_dir() else ""))
    return out


def load_results(path: Path) -> Results:
    """``Results.load`` with a size limit, and a nesting bomb reported as invalid.

    Raises:
        FileNotFoundError, ValueError: the message names the file and the problem.
    """
    read_limited(path, MAX_RESULTS_BYTES, "results file")  # size check before parsing
    try:
        return Results.load(path)
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to be a results file") from None


def read_card(load: Callable[[Path], _C], folder: Path, problems: list[str]) -> _C | None:
    """``load(folder / card.yaml)`` (a method's or a hidden entry's card); a card that is not
    valid or cannot be read is recorded in ``problems`` as ``[card]`` and gives None."""
    try:
        return load(folder / CARD_FILE)
    except CardError as e:
        problems.append(f"[card] {short(str(e))}")
    except OSError as e:
        problems.append(f"[card] {CARD_FILE}: cannot be read ({e})")
    return None


def read_entry(folder: Path, key: str) -> Entry:
    """Load one submission folder; problems are recorded, never raised."""
    entry = Entry(key=key, folder=folder)
    for seg in key.split("/"):
        if safe_segment(seg) != seg:
            entry.problems.append(f"[entry_folder] {key!r}: {seg!r} is not a plain name "
                                  "(letters, digits, '_', '.', '-')")
            return entry
    try:
        entry.results = load_results(folder / RESULTS_FILE)
    except (FileNotFoundError, ValueError) as e:
        entry.problems.append(f"[schema] {short(str(e))}")
    except OSError as e:
        entry.problems.append(f"[schema] {RESULTS_FILE}: cannot be read ({e})")
    entry.card = read_card(MethodCard.load, folder, entry.problems)
    vpath = folder / VERIFICATION_FILE
    if vpath.exists():
        try:
            entry.verification = Verification.model_validate_json(
                read_limited(vpath, MAX_VERIFICATION_BYTES, "verification file"))
        except ValidationError as e:
            entry.problems.append(f"[verification] {VERIFICATION_FILE}: not valid "
                                  f"({e.error_count()} errors)")
        except (EntryFileError, OSError, RecursionError) as e:
            entry.problems.append(f"[verification] {VERIFICATION_FILE}: "
                                  f"{short(str(e)) or 'nested too deeply'}")
    if entry.results is not None and entry_path(entry.results) != f"{SUBMISSIONS}/{key}":
        entry.problems.append(f"[entry_folder] {key!r} is not the folder of results.json's method "
                              f"{entry.results.method.name[:100]!r} version "
                              f"{entry.results.method.version[:40]!r} "
                              f"({entry_path(entry.results)})")
    try:
        expected = _expected_files(entry.results)
        # Unreadable results.json: the predictions' name is unknown, any plain one may do.
        extra = [f for f in _entry_files(folder) if f not in expected and not (
            entry.results is None and PREDICTIONS_PATH.fullmatch(f))]
    except OSError as e:
        extra = [f"(cannot list the folder: {e})"]
    if extra:
        entry.problems.append(f"[unexpected_file] {', '.join(extra[:5])}"
                              f"{' ...' if len(extra) > 5 else ''}: an entry holds only "
                              "results.json, card.yaml, its predictions file, figure.png and "
                              "the maintainers' verification.json")
    fig = folder / FIGURE_FILE
    if fig.exists() or fig.is_symlink():
        try:
            reencode_png(fig)
        except (EntryFileError, OSError) as e:
            entry.problems.append(f"[figure] {short(str(e))}")
    return entry


@dataclass
class Board:
    """A board read from a folder (``revision`` is then ``None``) or a Hub repo at a commit."""

    root: Path
    config: BoardConfig
    entries: list[Entry]
    source: str
    revision: str | None = None
    seasons: list[HiddenSeason] = field(default_factory=list)

    @classmethod
    def open(cls, source: str | Path, revision: str | None = None,
             cache_dir: Path | str | None = None, check: bool = True) -> Board:
        """Read a board folder, or the Hub dataset repo ``source`` at ``revision`` (a branch,
        ``refs/pr/N`` or a commit; default ``main``), resolved to its commit sha. With
        ``check`` every entry is checked against the board (see the module docstring)."""
        from .hidden_records import read_seasons

        root, sha = resolve_board(source, revision, cache_dir)
        config = BoardConfig.load(root)
        board = cls(root=root, config=config, entries=list_entries(root), source=str(source),
                    revision=sha)
        board.seasons = read_seasons(root, board.trusted_root)
        if check:
            from .validate import assess_entries

            assess_entries(board.entries, config, board.trusted_root)
        return board

    @property
    def trusted_root(self) -> Path:
        """The folder every entry file must resolve into: the board folder, or for a Hub
        board the repo's cache folder (its snapshot files link to blobs beside it)."""
        return self.root if self.revision is None else self.root.parents[1]

    def entry(self, key: str) -> Entry:
        for e in self.entries:
            if e.key == key:
                return e
        raise KeyError(f"no entry {key!r} on the board; it has "
                       f"{', '.join(e.key for e in self.entries) or 'none'}")


def list_entries(root: Path) -> list[Entry]:
    """Every ``submissions/<method>/<version>/`` folder that holds anything, sorted by key."""
    base = root / SUBMISSIONS
    out = []
    if base.is_dir():
        # Hidden folders are a submission being written (or one that was interrupted).
        for method_dir in sorted(p for p in base.iterdir()
                                 if p.is_dir() and not p.name.startswith(".")):
            for version_dir in sorted(p for p in method_dir.iterdir()
                                      if p.is_dir() and not p.name.startswith(".")):
                key = f"{method_dir.name}/{version_dir.name}"
                if method_dir.is_symlink() or version_dir.is_symlink():
                    out.append(Entry(key=key, folder=version_dir, problems=[
                        f"entry folder {key!r} is a symbolic link; refused"]))
                elif any(version_dir.iterdir()):
                    out.append(read_entry(version_dir, key))
    return out


def is_local_board(source: str | Path) -> bool:
    """A path that exists, or one written like a path (``./b``, ``/x``, ``b/``), is a folder;
    ``org/name`` is a Hub repo id."""
    s = str(source)
    return Path(s).exists() or s.startswith((".", "/", "~")) or s.endswith("/") \
        or s.count("/") != 1


def check_repo_id(source: str) -> None:
    """Refuse a board that is neither a folder here nor a valid Hub dataset repo id.

    Raises:
        ValueError: names the board and the rule it breaks.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(source)
    except HFValidationError as e:
        raise ValueError(f"{source!r} is not a board folder here, and not a valid Hub "
                         f"dataset repo id: {e}") from None


def resolve_board(source: str | Path, revision: str | None = None,
                  cache_dir: Path | str | None = None) -> tuple[Path, str | None]:
    """(local folder, commit sha or None) of a board folder or Hub dataset repo.

    Raises:
        FileNotFoundError: a folder without board.json.
        ValueError: a bad repo id, or ``revision`` for a folder.
        BoardUnavailable: the Hub repo cannot be read (network, access, no such repo).
    """
    if is_local_board(source):
        root = Path(source).expanduser()
        if revision is not None:
            raise ValueError(f"--revision {revision!r} applies to Hub boards, but {source} is "
                             "a local folder")
        if not (root / BOARD_FILE).is_file():
            raise FileNotFoundError(f"{root}: no {BOARD_FILE}; create the board with "
                                    "`leaderboard init`")
        return root, None
    check_repo_id(str(source))
    from huggingface_hub import HfApi, snapshot_download

    try:
        sha = HfApi().repo_info(str(source), repo_type="dataset",
                                revision=revision or "main").sha
        # Download at the resolved sha, so the listing and the files are of one commit.
        root = Path(snapshot_download(str(source), repo_type="dataset", revision=sha,
                                      cache_dir=cache_dir))
    except Exception as e:  # every Hub failure (network, 404, 401) names the board
        raise BoardUnavailable(f"{source}: cannot read the board from the Hub at "
                               f"{revision or 'main'} ({type(e).__name__}: "
                               f"{short(str(e), 300)})") from None
    return root, sha


def finite_or_none(x: float) -> float | None:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def board_summary(board: Board) -> dict[str, Any]:
    """A JSON-able listing of the board (keys, statuses and reasons, as the page shows
    them): what `leaderboard list` prints and a snapshot test compares."""
    return {"revision": board.revision, "entries": [
        {"key": e.key, "status": e.status,
         "method": e.results.method.name if e.results else None,
         "predictions_sha256": (e.results.predictions.sha256
                                if e.results and e.results.predictions else None),
         "reasons": e.reasons}
        for e in board.entries],
        "hidden": {s.name: [{"key": e.key, "status": e.status, "reasons": e.reasons}
                            for e in s.entries] for s in board.seasons}}


def write_json(path: Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
