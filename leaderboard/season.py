"""Seasons of the hidden track: a private test set drawn from a secret seed.

``leaderboard season new SEASON_DIR --name 2026-1`` draws a new secret seed and makes the
season's hidden test set with the simulator, in separate processes (the board never imports
the simulator)::

    artifactgsi simulate --preset standard --seed SEED --split-hint test --clean-patients 0 ...
    artifactgsi build RAW BUILT --secret-file SECRET/build-key

The season folder is the maintainers' private folder; only ``season.json`` is ever published::

    SEASON_DIR/
        season.json        the season's card: name, preset and sizes, the hidden set's
                           manifest sha256 and slices, and sha256(seed), never the seed
        secret/seed        the secret seed (decimal text)           never published
        secret/build-key   the pseudonymisation key of the build    never published
        built/             the hidden test set (pairs/test)         never published

``seed_sha256`` commits to the seed: revealing the seed at the end of a season lets anyone
re-make the set and check it against the card. A new season is a new seed, hence a new set;
results on the board carry the season's name.

:func:`method_inputs` writes what a method may see of the hidden set (no reference image).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from benchmark.results import atomic_write_text

from .board import BoardSlice, short
from .errors import LeaderboardError

SEASON_FILE = "season.json"
SEASON_FORMAT = "marbench-season/1"
#: Implant patients of a default hidden set: the standard preset's test split
#: (20 % of its 115 implant patients), so a season is the size of the public test split.
DEFAULT_PATIENTS = 23
#: Columns a method is given (what :class:`benchmark.method.MARInput` carries); references
#: (``gsi``, ``ideal``, ``labels``) and registration details are never copied.
INPUT_COLUMNS = ("patient_id", "slice_index", "z_mm", "ordinary", "metal_mask",
                 "implant_type", "pixel_spacing_mm")
SEASON_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class SeasonError(LeaderboardError, ValueError):
    """A season folder or card that cannot be used (the message names the file)."""


class SeasonCard(BaseModel):
    """``season.json``: everything about a hidden set except the seed and the images."""

    model_config = ConfigDict(extra="forbid")

    format: str = SEASON_FORMAT
    name: str = Field(pattern=SEASON_NAME.pattern)
    created_utc: datetime
    preset: str
    simulate: dict[str, int | float | str]
    seed_sha256: str
    manifest_sha256: str
    content_sha256: str | None = None
    config: str = "pairs"
    split: str = "test"
    image_shape: tuple[int, int]
    n_patients: int
    slices: list[BoardSlice] = Field(min_length=1)
    tool: str = ""

    @classmethod
    def load(cls, path: Path | str) -> SeasonCard:
        p = Path(path)
        if p.is_dir():
            p = p / SEASON_FILE
        if not p.is_file():
            raise SeasonError(f"{p}: no season card (make a season with `leaderboard season "
                              "new SEASON_DIR --name NAME`)")
        try:
            return cls.model_validate_json(p.read_bytes())
        except ValidationError as e:
            raise SeasonError(f"{p}: not a valid season card ({e.error_count()} errors: "
                              f"{short(str(e), 300)})") from None

    def save(self, path: Path) -> Path:
        return atomic_write_text(path, self.model_dump_json(indent=2) + "\n")


def _command(env_var: str, module: str) -> list[str]:
    env = os.environ.get(env_var)
    return shlex.split(env) if env else [sys.executable, "-m", module]


def artifactgsi_command() -> list[str]:
    """The ``artifactgsi`` command line (``$ARTIFACTGSI`` when set)."""
    return _command("ARTIFACTGSI", "artifactgsi.cli")


def _run(cmd: list[str], what: str, timeout: float) -> None:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if r.returncode != 0:
        tail = " | ".join((r.stderr + r.stdout).strip().splitlines()[-5:])
        raise SeasonError(f"{what} failed (exit {r.returncode}): {short(tail, 800)}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _test_files(built: Path, config: str = "pairs", split: str = "test") -> list[Path]:
    files = sorted((built / config).glob(f"{split}-*.parquet"))
    if not files:
        raise SeasonError(f"{built}: no {config}/{split}-*.parquet; not a built hidden set")
    return files


def _slices(files: list[Path]) -> tuple[list[BoardSlice], tuple[int, int], int]:
    """The hidden set's slices (patient pseudonym, slice, implant type, references it has),
    image shape, and number of patients: read with pyarrow, no image kept."""
    import pyarrow.parquet as pq

    out: list[BoardSlice] = []
    shape: tuple[int, int] | None = None
    for f in files:
        t = pq.read_table(f, columns=["patient_id", "slice_index", "implant_type", "ideal",
                                      "ordinary"])
        ideal_null = t.column("ideal").is_null().to_pylist()
        if shape is None and t.num_rows:
            first = t.column("ordinary")[0].as_py()
            shape = (len(first), len(first[0]))
        for p, s, imp, no_ideal in zip(t.column("patient_id").to_pylist(),
                                       t.column("slice_index").to_pylist(),
                                       t.column("implant_type").to_pylist(), ideal_null,
                                       strict=True):
            comps = ["method_vs_gsi"] + ([] if no_ideal else ["method_vs_ideal"])
            out.append(BoardSlice(patient_id=str(p), slice_index=int(s),
                                  implant_type=str(imp), comparisons=comps))
    if not out or shape is None:
        raise SeasonError(f"{files[0].parent}: the hidden set has no slice")
    out.sort(key=lambda s: (s.patient_id, s.slice_index))
    return out, shape, len({s.patient_id for s in out})


def new_season(folder: Path | str, name: str, *, preset: str = "standard",
               patients: int | None = DEFAULT_PATIENTS, slices: int | None = None,
               size: int = 128, seed: int | None = None, scanner: str | None = None,
               timeout: float = 24 * 3600) -> SeasonCard:
    """Draw a secret seed (``secrets``; ``seed`` only for tests), simulate and build the
    hidden set into ``folder`` (see the module docstring) and write its card.

    Raises:
        SeasonError: the folder holds a season already, or a step failed (named).
    """
    folder = Path(folder)
    if not SEASON_NAME.fullmatch(name):
        raise SeasonError(f"season name {name!r}: use letters, digits, '_', '.', '-'")
    if (folder / SEASON_FILE).exists() or (folder / "built").exists():
        raise SeasonError(f"{folder}: holds a season already; a new season needs a new folder")
    secret = folder / "secret"
    secret.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    os.chmod(secret, 0o700)
    seed = secrets.randbelow(2**31 - 1) if seed is None else int(seed)
    seed_file = secret / "seed"
    key_file = secret / "build-key"
    for path, data in ((seed_file, f"{seed}\n".encode()), (key_file, secrets.token_bytes(32))):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    raw, built = folder / "raw", folder / "built"
    sim = ["--preset", preset, "--seed", str(seed), "--split-hint", "test",
           "--clean-patients", "0", "--size", str(size)]
    if patients is not None:
        sim += ["--patients", str(patients)]
    if slices is not None:
        sim += ["--slices", str(slices)]
    if scanner:
        sim += ["--scanner", scanner]
    _run([*artifactgsi_command(), "simulate", "--out", str(raw), *sim],
         "simulating the hidden set", timeout)
    _run([*artifactgsi_command(), "build", str(raw), str(built), "--secret-file",
          str(key_file)], "building the hidden set", timeout)
    shutil.rmtree(raw, ignore_errors=True)  # the seed re-makes it; only the build is needed
    manifest = built / "manifest.json"
    try:
        content = json.loads(manifest.read_text())["configs"]["pairs"]["test"].get(
            "content_sha256")
    except (OSError, ValueError, KeyError, TypeError):
        content = None
    slices_, shape, n_patients = _slices(_test_files(built))
    settings: dict[str, int | float | str] = {"size": size, "clean_patients": 0}
    if patients is not None:
        settings["patients"] = patients
    if slices is not None:
        settings["slices"] = slices
    if scanner:
        settings["scanner"] = scanner
    card = SeasonCard(
        name=name, created_utc=datetime.now(timezone.utc),  # noqa: UP017 (py3.10)
        preset=preset, simulate=settings, seed_sha256=_sha256(seed_file),
        manifest_sha256=_sha256(manifest), content_sha256=content, image_shape=shape,
        n_patients=n_patients, slices=slices_, tool=_tool())
    card.save(folder / SEASON_FILE)
    return card


def _tool() -> str:
    import importlib.metadata

    try:
        return f"artifactgsi {importlib.metadata.version('artifactgsi')}"
    except importlib.metadata.PackageNotFoundError:
        return "artifactgsi"


def open_season(folder: Path | str) -> tuple[SeasonCard, Path]:
    """(card, built hidden set) of a season folder, the set checked against the card.

    Raises:
        SeasonError: no card, no set, or a set that is not the one the card describes.
    """
    folder = Path(folder)
    card = SeasonCard.load(folder)
    built = folder / "built"
    manifest = built / "manifest.json"
    if not manifest.is_file():
        raise SeasonError(f"{folder}: no hidden set (built/manifest.json); the season's "
                          "private folder is incomplete")
    if _sha256(manifest) != card.manifest_sha256:
        raise SeasonError(f"{manifest}: not the hidden set of season {card.name!r} (its "
                          "sha256 differs from the card's manifest_sha256)")
    return card, built


def method_inputs(built: Path, dest: Path, config: str = "pairs", split: str = "test") -> Path:
    """Write what a method may see of the hidden set to ``dest/<config>/<split>-*.parquet``:
    the columns of :data:`INPUT_COLUMNS`, plus a ``gsi`` column that repeats ``ordinary``
    (the harness reads a ``gsi`` column; here it carries nothing the input does not). The
    GSI and ideal images and the labels never leave ``built``.

    The Parquet schema's ``huggingface`` metadata (the column types ``datasets`` reads) is
    kept for the kept columns only."""
    import pyarrow.parquet as pq

    out_dir = dest / config
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in _test_files(built, config, split):
        t = pq.read_table(f, columns=list(INPUT_COLUMNS))
        # The field (with its extension metadata, the Array2D type), not only the values.
        t = t.append_column(t.schema.field("ordinary").with_name("gsi"), t.column("ordinary"))
        meta = dict(t.schema.metadata or {})
        hf = meta.get(b"huggingface")
        if hf:
            info = json.loads(hf)
            feats = info.get("info", {}).get("features", {})
            if feats:
                kept = {k: feats[k] for k in (*INPUT_COLUMNS,) if k in feats}
                kept["gsi"] = feats["ordinary"]
                info["info"]["features"] = kept
            meta[b"huggingface"] = json.dumps(info).encode()
        t = t.replace_schema_metadata(meta)
        pq.write_table(t, out_dir / f.name)
    return dest
