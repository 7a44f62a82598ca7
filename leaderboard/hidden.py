"""The hidden track: a submitted method installed, run on a season's hidden set and scored.

An entry on the hidden track is a method, not predictions: an installable Python package
(a wheel, an sdist or a project folder) that registers a ``marbench.methods`` entry point,
with its weights as a file / folder or a Hub model repo id. ``leaderboard evaluate``:

1. **installs** the package with ``pip install --no-index --no-deps --no-build-isolation
   --target SITE PACKAGE`` *inside the sandbox* (:mod:`leaderboard.sandbox`): no network, so
   pip can only use the local file, and a build backend's code sees nothing but the package.
   ``--target`` into a private folder rather than a venv: a venv made from the project's
   venv would not see the project's packages (``--system-site-packages`` reaches the base
   interpreter, not the project's venv), so torch and the harness would have to be installed
   again; a target folder holds only the entry's files, is put on the method's
   ``PYTHONPATH`` after the project's packages, and is mounted read-only when the method runs.
   ``--no-deps``: whatever the package requires must already be in the board's environment
   (checked, and named when missing);
2. reads the entry point from the installed metadata (never importing it), and refuses a
   package that would shadow the harness's own packages;
3. **runs** ``marbench run`` on the method's inputs of the hidden set
   (:func:`leaderboard.season.method_inputs`: no GSI, ideal image or labels) in the sandbox,
   with a time and memory limit; the weights are mounted read-only and given as the option
   ``weights``. A method that opens a socket, reads a file outside its inputs, runs past its
   time or memory limit, or crashes is **stopped and named** (``failed`` with the reason);
4. checks the predictions it wrote (int16, the season's image shape, every hidden slice
   exactly once) and **scores** them against the hidden references outside the sandbox, in
   a separate process of the harness (``marbench run --method
   benchmark.rescore:ReplayPredictions``), as verification does;
5. records **only the scores** (per slice, every metric the harness computed), what it
   measured (seconds per slice, peak memory, parameters; :mod:`leaderboard.efficiency`) and
   how it ran, as ``hidden/<season>/<method>/<version>/evaluation.json`` on the board, beside
   the card. The predictions, the package and the work folder are deleted.

The key of an entry is ``<entry-point name>/<distribution version>``. The record and the
reading of the board's hidden folders are :mod:`leaderboard.hidden_records`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmark.results import Results

from .board import BoardConfig, safe_segment, short, write_json
from .card import CARD_FILE, HiddenCard
from .efficiency import Efficiency, efficiency_of
from .errors import LeaderboardError
from .files import EntryFileError, read_limited

# The evaluation record and the reading of the hidden track are re-exported (``X as X``):
# they lived in this module, and callers import them from here.
from .hidden_records import EVALUATION_FILE as EVALUATION_FILE
from .hidden_records import EVALUATION_FORMAT as EVALUATION_FORMAT
from .hidden_records import HIDDEN as HIDDEN
from .hidden_records import Evaluation as Evaluation
from .hidden_records import HiddenEntry as HiddenEntry
from .hidden_records import HiddenSeason as HiddenSeason
from .hidden_records import PackageRecord as PackageRecord
from .hidden_records import Reason as Reason
from .hidden_records import SliceScores as SliceScores
from .hidden_records import WeightsRecord as WeightsRecord
from .hidden_records import read_hidden_entry as read_hidden_entry
from .hidden_records import read_seasons as read_seasons
from .predictions import scan_predictions
from .sandbox import PROJECT_PACKAGES, Limits, Mount, SandboxResult, run_sandboxed
from .season import SEASON_FILE, SeasonCard, method_inputs, open_season

#: The method's entry-point group.
METHODS_GROUP = "marbench.methods"
#: Where things appear inside the sandbox.
SANDBOX_PACKAGE = "/sandbox/package"
SANDBOX_SITE = "/sandbox/site"
SANDBOX_INPUTS = "/sandbox/inputs"
SANDBOX_WEIGHTS = "/sandbox/weights"
SANDBOX_OUT = "/sandbox/out"
#: Install time limit (pip unpacking a wheel takes seconds; a build from source longer).
INSTALL_TIME_S = 600.0
#: Largest predictions file taken out of the sandbox.
MAX_PREDICTIONS_BYTES = 8 * 2**30
#: A Hub model repo id, optionally ``@revision``.
HUB_ID = re.compile(r"([A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@([\w./-]+))?")
OPTION_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


class EvaluateError(LeaderboardError, RuntimeError):
    """The board could not evaluate an entry (its own side: no sandbox, no scoring, a bad
    season or board); nothing is recorded. A method's own failure is recorded instead."""


# ----------------------------------------------------------------------------- evaluating


def _tree_sha256(path: Path) -> tuple[str, int]:
    """(sha256, number of files) of a file, or of a folder's files by relative path."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*")
                                                 if p.is_file() and not p.is_symlink())
    h = hashlib.sha256()
    for f in files:
        fh = hashlib.sha256()
        with open(f, "rb") as fp:
            while chunk := fp.read(1 << 20):
                fh.update(chunk)
        if path.is_file():
            return fh.hexdigest(), 1
        h.update(f"{f.relative_to(path).as_posix()}\0{fh.hexdigest()}\n".encode())
    return h.hexdigest(), len(files)


def _copy_in(src: Path, dest_dir: Path) -> Path:
    """A private copy of a file or folder (symbolic links stay links: inside the sandbox a
    link out of the copy leads nowhere)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / src.name
    if src.is_dir():
        shutil.copytree(src, dest, symlinks=True)
    else:
        shutil.copyfile(src, dest)
    return dest


def fetch_weights(spec: str, dest_dir: Path) -> tuple[Path, str | None]:
    """The weights named by ``spec`` (a file or folder here, or a Hub model repo id
    ``org/name[@revision]``, downloaded here, outside the sandbox) copied into ``dest_dir``;
    (path, the Hub repo id or None)."""
    p = Path(spec).expanduser()
    if p.exists():
        return _copy_in(p.resolve(), dest_dir), None
    m = HUB_ID.fullmatch(spec)
    if m is None:
        raise EvaluateError(f"weights {spec!r}: no such file or folder here, and not a Hub "
                            "model repo id (org/name[@revision])")
    from huggingface_hub import snapshot_download

    repo, rev = m.group(1), m.group(2)
    dest = dest_dir / repo.replace("/", "--")
    try:
        snapshot_download(repo, repo_type="model", revision=rev, local_dir=dest)
    except Exception as e:  # network, access, no such repo: named
        raise EvaluateError(f"weights {spec!r}: cannot download the Hub model repo "
                            f"({type(e).__name__}: {short(str(e), 300)})") from None
    shutil.rmtree(dest / ".cache", ignore_errors=True)  # huggingface_hub's download records
    return dest, repo


def _method_entry_points(site: Path) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """([(entry-point name, target, distribution, version)], requirements) of what pip
    installed in ``site``, read from the ``*.dist-info`` metadata (nothing is imported)."""
    import importlib.metadata as md

    found: list[tuple[str, str, str, str]] = []
    reqs: list[str] = []
    for dist in md.distributions(path=[str(site)]):
        name = dist.metadata["Name"] or "?"
        for ep in dist.entry_points:
            if ep.group == METHODS_GROUP:
                found.append((ep.name, ep.value, name, dist.version))
        reqs += list(dist.requires or [])
    return found, reqs


def missing_requirements(reqs: list[str]) -> list[str]:
    """Requirements (PEP 508 strings) the board's environment does not satisfy."""
    import importlib.metadata as md

    from packaging.requirements import InvalidRequirement, Requirement

    missing = []
    for text in reqs:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            missing.append(f"{text} (not a valid requirement)")
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            have = md.version(req.name)
        except md.PackageNotFoundError:
            missing.append(f"{text} (not installed)")
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            missing.append(f"{text} (installed: {have})")
    return missing


def _shadowing(site: Path) -> list[str]:
    """Top-level names in ``site`` that are the harness's own packages."""
    own = set(PROJECT_PACKAGES) | {"leaderboard", "sitecustomize", "usercustomize"}
    names = {p.name.removesuffix(".py") for p in site.iterdir()
             if not p.name.endswith((".dist-info", ".data"))}
    return sorted(names & own)


def _sandbox_record(r: SandboxResult) -> dict[str, Any]:
    return {"network": "none (own network namespace, loopback down)",
            "files": "own mount namespace: read-only runtime, inputs and weights; "
                     "writes only to its output folder and /tmp",
            "user": "nobody, no capabilities, no_new_privs",
            "time_limit_s": r.limits.time_s, "memory_limit_mib": r.limits.memory_mib,
            "memory_enforced_by": r.memory_enforced_by, "threads": r.limits.threads}


def _tool() -> str:
    import importlib.metadata

    try:
        return f"leaderboard evaluate (artifactgsi {importlib.metadata.version('artifactgsi')})"
    except importlib.metadata.PackageNotFoundError:
        return "leaderboard evaluate"


@dataclass
class _Run:
    """What one evaluation found so far (filled step by step)."""

    package: PackageRecord
    method: str
    version: str
    options: dict[str, Any]
    weights: WeightsRecord | None = None


def _guess_key(package: Path, method: str | None) -> tuple[str, str]:
    """(method, version) for an entry whose package could not be installed: the chosen
    entry point or the package's name, version from a wheel / sdist file name."""
    m = re.match(r"([A-Za-z0-9_.]+?)-(\d[\w.+!]*?)(?:-|\.tar\.gz$|\.zip$)", package.name)
    name = method or (m.group(1) if m else package.stem)
    return name, (m.group(2) if m else "unknown")


def evaluate_method(board_root: Path | str, season_dir: Path | str, package: Path | str,
                    card: Path | str, *, method: str | None = None,
                    weights: str | None = None, weights_option: str = "weights",
                    options: dict[str, Any] | None = None, limits: Limits | None = None,
                    lpips_weights: str | None = None, clinical: bool = False,
                    workdir: Path | str | None = None, replace: bool = False,
                    marbench: list[str] | None = None) -> tuple[Evaluation, Path]:
    """Evaluate one method on a season's hidden set (module docstring) and file the result
    on the local board ``board_root``; (evaluation, entry folder).

    A method that fails (install, entry point, dependency, network, file access, time or
    memory limit, crash, bad predictions) is filed as ``failed`` with the reason.

    Raises:
        EvaluateError: the board's side failed (board, season, card, sandbox, scoring);
            nothing is filed.
    """
    from .sandbox import SandboxUnavailable, sandbox_unavailable
    from .verify import VerifyUnavailable

    board_root = Path(board_root)
    try:
        board = BoardConfig.load(board_root)
        season, built = open_season(season_dir)
        hcard = HiddenCard.load(card)
    except (LeaderboardError, FileNotFoundError, ValueError) as e:
        raise EvaluateError(str(e)) from None
    why = sandbox_unavailable()
    if why:
        raise EvaluateError(f"no sandbox on this machine: {why}; the hidden track runs "
                            "methods only inside it")
    package = Path(package).expanduser().resolve()
    if not package.exists():
        raise EvaluateError(f"{package}: no such package file or folder")
    opts = dict(options or {})
    bad = [k for k in opts if not OPTION_KEY.fullmatch(k)]
    if bad:
        raise EvaluateError(f"option {bad[0]!r} is not an option name")
    limits = limits or Limits()
    work = Path(tempfile.mkdtemp(prefix="marbench-evaluate-", dir=workdir))
    os.chmod(work, 0o700)
    try:
        pkg_sha, _ = _tree_sha256(package)
        guess_m, guess_v = _guess_key(package, method)
        run = _Run(package=PackageRecord(file=package.name, sha256=pkg_sha),
                   method=guess_m, version=guess_v, options=opts)

        def failed(reason: Reason, message: str, result: SandboxResult | None = None,
                   eff: Efficiency | None = None) -> Evaluation:
            return Evaluation(season=season.name, season_manifest_sha256=season.manifest_sha256,
                              status="failed", reason=reason, message=short(message),
                              method=run.method, version=run.version, options=run.options,
                              package=run.package, weights=run.weights, efficiency=eff,
                              sandbox=_sandbox_record(result) if result else {},
                              evaluated_utc=datetime.now(timezone.utc),  # noqa: UP017
                              tool=_tool())

        try:
            ev = _evaluate(work, run, board, season, built, package, method, weights,
                           weights_option, limits, lpips_weights, clinical, marbench, failed)
        except SandboxUnavailable as e:
            raise EvaluateError(str(e)) from None
        except VerifyUnavailable as e:
            raise EvaluateError(f"the hidden set could not be scored here: {e}") from None
        dest = _file(board_root, season, ev, hcard, replace)
        return ev, dest
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _evaluate(work: Path, run: _Run, board: BoardConfig, season: SeasonCard, built: Path,
              package: Path, method: str | None, weights: str | None, weights_option: str,
              limits: Limits, lpips_weights: str | None, clinical: bool,
              marbench: list[str] | None, failed: Any) -> Evaluation:
    import sys

    # 1. install, in the sandbox
    pkg = _copy_in(package, work / "package")
    site = work / "site"
    site.mkdir()
    install_limits = Limits(time_s=min(limits.time_s, INSTALL_TIME_S),
                            memory_mib=limits.memory_mib, tmp_mib=limits.tmp_mib,
                            threads=limits.threads)
    r = run_sandboxed(
        [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
         "--no-build-isolation", "--no-cache-dir", "--disable-pip-version-check",
         "--no-warn-script-location", "--quiet", "--target", SANDBOX_SITE,
         f"{SANDBOX_PACKAGE}/{pkg.name}"],
        work / "sandbox-install",
        [Mount(pkg.parent, SANDBOX_PACKAGE, writable=True), Mount(site, SANDBOX_SITE,
                                                                    writable=True)],
        limits=install_limits)
    stop = r.stop
    if stop is not None:
        code, text = stop
        return failed(code if code != "crashed" else "install",
                      f"installing {package.name} {text}", r)
    # 2. the entry point, read from the metadata
    found, reqs = _method_entry_points(site)
    if not found:
        return failed("entry_point", f"{package.name} installs no `{METHODS_GROUP}` entry "
                      "point; register the method under that group in its pyproject.toml", r)
    names = sorted({f[0] for f in found})
    if method is None and len(names) > 1:
        return failed("entry_point", f"{package.name} registers several methods "
                      f"({', '.join(names)}); choose one with --method", r)
    chosen = next((f for f in found if f[0] == (method or names[0])), None)
    if chosen is None:
        return failed("entry_point", f"{package.name} has no method {method!r}; it "
                      f"registers {', '.join(names)}", r)
    ep_name, target, dist, version = chosen
    run.method, run.version = ep_name, version
    run.package.distribution, run.package.version = dist, version
    run.package.entry_point, run.package.target = ep_name, target
    shadow = _shadowing(site)
    if shadow:
        return failed("install", f"{package.name} installs {', '.join(shadow)}, which would "
                      "shadow the harness's own code; rename them", r)
    missing = missing_requirements(reqs)
    if missing:
        return failed("dependency", f"{dist} needs {'; '.join(missing[:5])}, which the "
                      "board's environment does not have; the board installs with --no-deps "
                      "and never downloads", r)
    # 3. weights, inputs, and the run in the sandbox
    mounts = [Mount(site, SANDBOX_SITE)]
    argv = [sys.executable, "-m", "benchmark.cli", "run", f"--method={ep_name}",
            "--data", SANDBOX_INPUTS, f"--split={season.split}", f"--config={season.config}",
            "--out", f"{SANDBOX_OUT}/run", "--no-verify", "--no-lpips", "--no-clinical"]
    wpath: Path | None = None
    if weights:
        wpath, repo_id = fetch_weights(weights, work / "weights")
        sha, n = _tree_sha256(wpath)
        from .efficiency import count_parameters

        run.weights = WeightsRecord(source=weights, sha256=sha, files=n,
                                    parameters=count_parameters(wpath), repo_id=repo_id)
        mounts.append(Mount(wpath.parent, SANDBOX_WEIGHTS))
        run.options = {**run.options, weights_option: f"{SANDBOX_WEIGHTS}/{wpath.name}"}
    for k, v in run.options.items():
        argv.append(f"--option={k}={json.dumps(v) if not isinstance(v, str) else v}")
    inputs = method_inputs(built, work / "inputs", season.config, season.split)
    out = work / "out"
    out.mkdir()
    mounts += [Mount(inputs, SANDBOX_INPUTS), Mount(out, SANDBOX_OUT, writable=True)]
    r = run_sandboxed(argv, work / "sandbox-run", mounts, limits=limits,
                      pythonpath=[SANDBOX_SITE])
    eff = efficiency_of(r.wall_s, r.cpu_s, r.peak_rss_mib, len(season.slices),
                        "leaderboard evaluate (sandbox)", wpath)
    stop = r.stop
    if stop is not None:
        return failed(stop[0], f"{ep_name} {stop[1]}", r, eff)
    # 4. the predictions, checked, then scored outside
    pred_dir = out / "run" / "predictions"
    files = sorted(pred_dir.glob("*.parquet")) if pred_dir.is_dir() and not \
        pred_dir.is_symlink() else []
    if len(files) != 1 or files[0].is_symlink():
        return failed("predictions", f"{ep_name} wrote no predictions file (expected one "
                      "Parquet file under predictions/)", r, eff)
    scoring = work / "scoring"
    scoring.mkdir()
    preds = scoring / "predictions.parquet"
    try:
        preds.write_bytes(read_limited(files[0], MAX_PREDICTIONS_BYTES, "predictions file"))
    except (EntryFileError, OSError) as e:
        return failed("predictions", f"{ep_name}: {e}", r, eff)
    scan = scan_predictions(preds)
    want = [(s.patient_id, s.slice_index) for s in season.slices]
    problems = list(scan.problems)
    if sorted(scan.keys) != sorted(want):
        problems.append(f"its slices are not the {len(want)} hidden slices, each once "
                        f"({len(scan.keys)} rows)")
    if scan.shapes and scan.shapes != {tuple(season.image_shape)}:
        problems.append(f"images are {scan.shape_text()}, the hidden slices are "
                        f"{season.image_shape[0]} x {season.image_shape[1]}")
    if problems:
        return failed("predictions", f"{ep_name}: predictions cannot be scored: "
                      f"{'; '.join(problems)}", r, eff)
    scored = score_predictions(preds, built, scoring / "scored", season, board,
                               lpips_weights=lpips_weights, clinical=clinical,
                               marbench=marbench)
    return Evaluation(
        season=season.name, season_manifest_sha256=season.manifest_sha256, status="scored",
        method=run.method, version=run.version, options=run.options, package=run.package,
        weights=run.weights, protocol=scored.protocol.version,
        per_slice=[SliceScores(patient_id=s.patient_id, slice_index=s.slice_index,
                               implant_type=s.implant_type,
                               scores={c: {m: float(v) for m, v in vals.items()}
                                       for c, vals in s.scores.items()
                                       if c.startswith("method_")})
                   for s in scored.per_slice],
        efficiency=eff, sandbox=_sandbox_record(r),
        evaluated_utc=datetime.now(timezone.utc),  # noqa: UP017
        tool=_tool())


def score_predictions(preds: Path, built: Path, out: Path, season: SeasonCard,
                      board: BoardConfig, *, lpips_weights: str | None = None,
                      clinical: bool = False, marbench: list[str] | None = None) -> Results:
    """Score a predictions file against the hidden set with the harness, in a separate
    process (``marbench run --method benchmark.rescore:ReplayPredictions``); the results,
    checked to be of the season's set and to hold every ranked metric.

    Raises:
        VerifyUnavailable: the harness failed, or a ranked metric could not be computed.
    """
    from .verify import VerifyUnavailable, _run, _tail, marbench_command

    cmd = [*(marbench or marbench_command()), "run",
           "--method=benchmark.rescore:ReplayPredictions", f"--option=predictions={preds}",
           "--data", str(built), f"--split={season.split}", f"--config={season.config}",
           "--out", str(out), "--no-predictions"]
    cmd += [f"--lpips-weights={lpips_weights}"] if lpips_weights else ["--no-lpips"]
    if not clinical:
        cmd.append("--no-clinical")
    r = _run(cmd, 3600 * 6)
    if r.returncode != 0:
        raise VerifyUnavailable(f"scoring failed (exit {r.returncode}): "
                                f"{_tail(r.stderr + r.stdout)}")
    res = Results.load(out)
    if res.dataset.manifest_sha256 != season.manifest_sha256:
        raise VerifyUnavailable("the scored data is not the season's hidden set")
    have = {(s.patient_id, s.slice_index): s.scores for s in res.per_slice}
    for m in board.metrics:
        for s in season.slices:
            if m.comparison in s.comparisons and \
                    m.metric not in have.get((s.patient_id, s.slice_index), {}).get(
                        m.comparison, {}):
                raise VerifyUnavailable(f"ranked metric {m.key} was not computed on "
                                        f"{s.patient_id} slice {s.slice_index} (LPIPS needs "
                                        "--lpips-weights)")
    return res


def _file(board_root: Path, season: SeasonCard, ev: Evaluation, card: HiddenCard,
          replace: bool) -> Path:
    """Write the season's card (once) and the entry (card.yaml, evaluation.json) into the
    board folder: staged under a hidden name, then renamed."""
    sdir = board_root / HIDDEN / season.name
    sdir.mkdir(parents=True, exist_ok=True)
    published = sdir / SEASON_FILE
    if published.exists():
        try:
            if SeasonCard.load(published).manifest_sha256 != season.manifest_sha256:
                raise EvaluateError(f"{published}: the board's season {season.name!r} is "
                                    "another hidden set; name the new season differently")
        except LeaderboardError as e:
            raise EvaluateError(str(e)) from None
    else:
        season.save(published)
    dest = sdir / safe_segment(ev.method) / safe_segment(ev.version)
    if dest.exists() and not replace:
        raise EvaluateError(f"{dest} exists: this method version was evaluated in season "
                            f"{season.name!r} already; pass --replace to evaluate it again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        (tmp / CARD_FILE).write_text(card.to_yaml(), encoding="utf-8")
        write_json(tmp / EVALUATION_FILE, ev.model_dump(mode="json"))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return dest
