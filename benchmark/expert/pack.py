"""Blinded reading packs for an expert study (``marbench expert pack``).

A pack is built from the saved predictions of several benchmark runs on the same data:

- cases (slices with metal) are drawn from the scored split, stratified by implant type and
  seeded, at most one slice per patient until every patient of a stratum has one;
- every method's output of each case becomes one image, named by an opaque id (a keyed HMAC
  of case and method with a random secret), written as PNG at two windows (bone / metal
  WL 500 / WW 2000 HU and soft tissue WL 40 / WW 400 HU) and as the int16 HU slice (``.npy``)
  for re-windowing; the ordinary CT of the case can be shown beside each as the reference;
- each reader gets a reading list: every image once, in an order balanced so that each method
  appears equally often in each position of every run of ``n_methods`` images (rows of
  random Latin squares), the same case's images far apart, plus about ``repeat`` of the images
  again later in the list for intra-reader agreement.

Layout (``OUT`` is ``--out``)::

    OUT/key.json                 unblinding key: secret, case and method of every image
    OUT/reader/form.html         the rating form (self-contained, works from file://)
    OUT/reader/manifest.json     pack id, sha256 of key.json, images, reading lists
    OUT/reader/images/<id>-bone.png, <id>-soft.png, <id>.npy

Only ``OUT/reader/`` goes to the readers; ``key.json`` stays with the study coordinator.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.expert.design import add_repeats as add_repeats
from benchmark.expert.design import latin_square as latin_square
from benchmark.expert.design import reading_order as reading_order
from benchmark.expert.design import select_cases as select_cases
from benchmark.expert.errors import PackError as PackError

#: Format tags of the files a pack holds.
MANIFEST_FORMAT = "marbench-expert-pack/1"
KEY_FORMAT = "marbench-expert-key/1"
#: Display windows written as PNG, (name, level HU, width HU); the first is the paper's.
WINDOWS: tuple[tuple[str, float, float], ...] = (("bone", 500.0, 2000.0),
                                                 ("soft", 40.0, 400.0))
#: The rating criteria (1-5 each), in the order the form asks for them.
CRITERIA = ("readability", "correctness")
#: Folder inside the pack that goes to the readers.
READER_DIR = "reader"
KEY_FILE = "key.json"
MANIFEST_FILE = "manifest.json"
FORM_FILE = "form.html"


@dataclass
class Run:
    """One benchmark run: its label in the study, results and predictions file."""

    label: str
    results_path: Path
    results: Any  # benchmark.results.Results
    predictions_path: Path


@dataclass(frozen=True)
class Case:
    """One slice of the study."""

    case_id: str
    patient_id: str
    slice_index: int
    implant_type: str
    metal_pixels: int


@dataclass
class PackResult:
    """What :func:`make_pack` wrote."""

    out: Path
    reader_dir: Path
    key_path: Path
    manifest_path: Path
    form_path: Path
    pack_id: str
    n_cases: int
    n_methods: int
    n_readers: int
    n_items_per_reader: int
    n_repeats_per_reader: int
    strata: dict[str, int]
    warnings: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- inputs


def load_runs(paths: Sequence[Path | str]) -> list[Run]:
    """Read the results files (or run folders) and find their predictions.

    Labels are the method names; a method given twice is told apart by its run folder.
    All runs must have scored the same data (dataset manifest and split).
    """
    from benchmark.results import Results

    if len(paths) < 2:
        raise PackError(f"--results: got {len(paths)} run(s); a reading study compares at least "
                        "two methods (pass two or more results.json files or run folders)")
    runs: list[Run] = []
    for p in paths:
        path = Path(p)
        res_path = path / "results.json" if path.is_dir() else path
        results = Results.load(res_path)
        if results.predictions is None:
            raise PackError(f"{res_path}: the run saved no predictions; rerun `marbench run` "
                            "without --no-save-predictions")
        pred = res_path.parent / results.predictions.path
        if not pred.is_file():
            raise PackError(f"{res_path}: predictions file {pred} is missing (it is listed in "
                            "the results file); copy the whole run folder")
        runs.append(Run(results.method.name, res_path, results, pred))
    names = [r.label for r in runs]
    for r in runs:
        if names.count(r.label) > 1:
            r.label = f"{r.label} [{r.results_path.parent.name}]"
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):
        raise PackError(f"--results: the same run is given twice ({labels}); pass each once")
    first = runs[0].results.dataset
    for r in runs[1:]:
        d = r.results.dataset
        if (d.manifest_sha256, d.split, d.config) != (first.manifest_sha256, first.split,
                                                      first.config):
            raise PackError(
                f"{r.results_path}: scored dataset manifest {str(d.manifest_sha256)[:12]}, "
                f"{d.config}/{d.split}, but {runs[0].results_path} scored "
                f"{str(first.manifest_sha256)[:12]}, {first.config}/{first.split}; a pack "
                "compares methods on the same slices: use runs of the same dataset and split")
    return runs


def read_predictions(path: Path, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int],
                                                                             np.ndarray]:
    """``{(patient_id, slice_index): (H, W) int16 HU}`` for ``keys`` from a predictions
    Parquet file (columns ``patient_id``, ``slice_index``, ``prediction``)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["patient_id", "slice_index"])
    index = {(str(p), int(s)): i for i, (p, s) in enumerate(zip(
        table.column("patient_id").to_pylist(), table.column("slice_index").to_pylist(),
        strict=True))}
    missing = [k for k in keys if k not in index]
    if missing:
        raise PackError(f"{path}: no prediction for " + ", ".join(
            f"patient {p!r} slice {s}" for p, s in missing[:5]))
    rows = [index[k] for k in keys]
    col = pq.read_table(path, columns=["prediction"]).column("prediction").take(rows)
    out: dict[tuple[str, int], np.ndarray] = {}
    for k, value in zip(keys, col.to_pylist(), strict=True):
        arr = np.asarray(value)
        if arr.ndim != 2:
            raise PackError(f"{path}: prediction of patient {k[0]!r} slice {k[1]} has shape "
                            f"{arr.shape}, expected (H, W)")
        out[k] = arr.astype(np.int16)
    return out


# ----------------------------------------------------------------------------- writing


def _hid(secret: bytes, prefix: str, *parts: object) -> str:
    """Opaque id: keyed HMAC-SHA256 of the parts, 12 hex digits after a one-letter prefix."""
    msg = "\x1f".join(str(p) for p in parts).encode()
    return prefix + hmac.new(secret, msg, hashlib.sha256).hexdigest()[:12]


def image_id(secret: bytes, patient_id: str, slice_index: int, label: str) -> str:
    """The opaque id of one method's image of one case (``label`` ``"@reference"`` for the
    ordinary image)."""
    return _hid(secret, "i", "image", patient_id, slice_index, label)


def write_png(path: Path, image_u8: np.ndarray) -> None:
    """(H, W) uint8 -> 8-bit greyscale PNG with no text / time chunks (nothing but pixels)."""
    from PIL import Image

    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(np.ascontiguousarray(image_u8, np.uint8)).save(
        tmp, format="PNG", optimize=True)
    tmp.replace(path)


def window_u8(image_hu: np.ndarray, level_hu: float, width_hu: float) -> np.ndarray:
    """(H, W) HU -> (H, W) uint8 display values of the window (``level - width/2`` black)."""
    from benchmark.figures import window_hu

    return np.rint(window_hu(image_hu, level_hu, width_hu) * 255.0).astype(np.uint8)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dump(path: Path, obj: Any) -> None:
    from benchmark.results import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def check_new_pack(out: Path) -> None:
    """Refuse an ``--out`` that already holds a pack (its ``key.json`` or its ``reader/``
    folder): a new key would make the ratings of the first study impossible to unblind, also
    after ``reader/`` was moved out to the readers."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PackError(f"--out {out}: exists and is not a folder")
    for name in (KEY_FILE, READER_DIR):
        if (out / name).exists() or (out / name).is_symlink():
            raise PackError(f"--out {out} already holds a pack ({out / name} exists); choose a "
                            "new --out. A pack's key is never replaced: ratings made on the "
                            "first pack could not be unblinded any more")


def _existing_parent(out: Path) -> Path:
    """The folder the pack is staged in: ``out``'s parent (same file system, so the final
    move is a rename), created if needed."""
    parent = Path(out).absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def _write_image(img_dir: Path, iid: str, case_id: str, kind: str, arr: np.ndarray
                 ) -> dict[str, Any]:
    """Write one image's PNGs and int16 ``.npy``; its manifest entry."""
    files: dict[str, str] = {}
    for name, level, width in WINDOWS:
        fn = f"{iid}-{name}.png"
        write_png(img_dir / fn, window_u8(arr, level, width))
        files[f"{name}_png"] = f"images/{fn}"
    np.save(img_dir / f"{iid}.npy", arr.astype("<i2"), allow_pickle=False)
    files["int16_npy"] = f"images/{iid}.npy"
    return {"id": iid, "case": case_id, "kind": kind, "shape": list(arr.shape),
            "files": files, "sha256": {k: _sha256(img_dir.parent / v) for k, v in files.items()}}


def _same_mtime(folder: Path, seconds: float) -> None:
    """Give every file and folder under ``folder`` the same access and modification time."""
    for path in sorted(folder.rglob("*"), reverse=True):  # children before their folder
        os.utime(path, (seconds, seconds), follow_symlinks=False)
    os.utime(folder, (seconds, seconds))


def _publish(stage: Path, out: Path) -> None:
    """Move a finished pack (``stage/key.json``, ``stage/reader/``) to ``out``.

    A new or empty ``out`` is replaced by ``stage`` in one rename. Into an existing folder
    holding other files, the key is linked (a hard link never replaces an existing file), then
    ``reader/`` renamed; if that fails, the key linked here is removed again."""
    out = Path(out)
    check_new_pack(out)
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.rename(stage, out)
        return
    os.link(stage / KEY_FILE, out / KEY_FILE)
    try:
        if (out / READER_DIR).exists():
            raise PackError(f"--out {out}: {out / READER_DIR} appeared while the pack was made")
        os.rename(stage / READER_DIR, out / READER_DIR)
    except BaseException:
        (out / KEY_FILE).unlink()
        raise


def make_pack(results: Sequence[Path | str], out: Path | str, *, data: str | Path | None = None,
              cases: int = 20, readers: int = 3, repeat: float = 0.1, seed: int = 0,
              reference: bool = True, min_metal_pixels: int = 1,
              title: str = "CT metal artifact reduction reading study") -> PackResult:
    """Build a blinded reading pack (see the module docstring).

    Args:
        results: ``results.json`` files or run folders, one per method (at least two).
        out: pack folder; ``out/reader/`` goes to readers, ``out/key.json`` does not.
        data: the built dataset the runs scored (default: the folder recorded in the first
            results file); gives the ordinary image shown as the reference.
        cases: number of slices; readers: number of reading lists.
        repeat: fraction of images shown twice per reader (intra-reader agreement).
        seed: seeds the case choice and the reading orders (ids use a random secret).
        reference: show the ordinary CT of the case beside each image.
        min_metal_pixels: slices with fewer metal pixels are not drawn.
    """
    from benchmark.data import open_split
    from benchmark.expert.form import write_form

    out = Path(out)
    if readers < 1:
        raise PackError(f"--readers must be >= 1, got {readers}")
    check_new_pack(out)
    runs = load_runs(results)
    first = runs[0].results
    rng = np.random.default_rng(seed)

    # Candidate slices: scored by every run (the runs agree on implant type and metal).
    per_run = [{(s.patient_id, s.slice_index): s for s in r.results.per_slice} for r in runs]
    common = set(per_run[0]).intersection(*per_run[1:])
    slices = [(p, i, per_run[0][(p, i)].implant_type, per_run[0][(p, i)].metal_pixels)
              for p, i in common]
    chosen = select_cases(slices, cases, rng, min_metal_pixels)
    keys = [(p, i) for p, i, _, _ in chosen]

    # The ordinary images (reference) from the dataset, checked against what the runs scored.
    source = data if data is not None else (first.dataset.path or first.dataset.source)
    split = open_split(source, first.dataset.split, config=first.dataset.config)
    if (first.dataset.manifest_sha256 is not None
            and split.source.manifest_sha256 != first.dataset.manifest_sha256):
        raise PackError(f"--data {source}: its manifest sha256 "
                        f"{str(split.source.manifest_sha256)[:12]} differs from the one the runs "
                        f"scored ({first.dataset.manifest_sha256[:12]}); pass the dataset the "
                        "runs used")
    row_of = {split.slice_id(r): r for r in split.order}
    batch = split.batch([row_of[k] for k in keys])
    ordinary = {k: np.rint(batch.input.ordinary[j, 0].numpy()).astype(np.int16)
                for j, k in enumerate(keys)}
    for j, (k, c) in enumerate(zip(keys, chosen, strict=True)):
        if batch.input.implant_type[j] != c[2]:
            raise PackError(f"--data {source}: patient {k[0]!r} slice {k[1]} has implant type "
                            f"{batch.input.implant_type[j]!r}, the runs recorded {c[2]!r}")
    preds = [read_predictions(r.predictions_path, keys) for r in runs]
    for r, pr in zip(runs, preds, strict=True):
        for k in keys:
            if pr[k].shape != ordinary[k].shape:
                raise PackError(f"{r.predictions_path}: patient {k[0]!r} slice {k[1]} is "
                                f"{pr[k].shape}, the dataset's image is {ordinary[k].shape}")

    warnings: list[str] = []
    if reference:
        for r, pr in zip(runs, preds, strict=True):
            if all(np.array_equal(pr[k], ordinary[k]) for k in keys):
                warnings.append(f"{r.label}'s images equal the reference image on every case: "
                                "readers can recognise that method; consider --no-reference")

    # Ids, files.
    secret = secrets.token_bytes(32)
    pack_id = "pk" + secrets.token_hex(6)
    case_objs = [Case(_hid(secret, "c", "case", p, i), p, i, t, m) for p, i, t, m in chosen]
    key_images: dict[str, dict[str, Any]] = {}
    arrays: dict[str, np.ndarray] = {}
    case_of: dict[str, str] = {}

    def add_image(iid: str, case: Case, arr: np.ndarray, kind: str, label: str | None) -> None:
        key_images[iid] = {"case": case.case_id, "kind": kind, "method": label}
        arrays[iid] = arr
        case_of[iid] = case.case_id

    ref_of: dict[str, str] = {}
    grid: dict[tuple[int, int], str] = {}  # (case index, method index) -> image id
    for ci, (case, k) in enumerate(zip(case_objs, keys, strict=True)):
        if reference:
            rid = image_id(secret, k[0], k[1], "@reference")
            add_image(rid, case, ordinary[k], "reference", None)
            ref_of[case.case_id] = rid
        for mi, (r, pr) in enumerate(zip(runs, preds, strict=True)):
            iid = image_id(secret, k[0], k[1], r.label)
            add_image(iid, case, pr[k], "rated", r.label)
            grid[(ci, mi)] = iid

    # Everything is written into a hidden folder beside OUT and moved in place at the end:
    # a failed pack leaves nothing, and the key is never written over an existing one.
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.pack-", dir=_existing_parent(out)))
    try:
        reader_dir = stage / READER_DIR
        img_dir = reader_dir / "images"
        img_dir.mkdir(parents=True)
        # The images are written in the order of their ids (keyed HMACs: a random order
        # unrelated to case or method), so creation order, inode numbers and a tar of the
        # folder say nothing about which method made an image; all get one mtime below.
        images = [_write_image(img_dir, iid, case_of[iid], key_images[iid]["kind"], arrays[iid])
                  for iid in sorted(arrays)]

        lists_reader: list[dict[str, Any]] = []
        lists_key: list[dict[str, Any]] = []
        n_rep = 0
        for li in range(readers):
            order = add_repeats(reading_order(len(case_objs), len(runs), rng), repeat,
                                len(runs), rng)
            n_rep = sum(1 for o in order if o[4] is not None)
            items_r, items_k = [], []
            for pos, (ci, mi, cycle, slot, rep) in enumerate(order):
                item = _hid(secret, "t", "item", li + 1, pos)
                iid = grid[(ci, mi)]
                items_r.append({"item": item, "image": iid})
                items_k.append({"item": item, "image": iid, "position": pos + 1,
                                "cycle": cycle, "slot": slot, "repeat_of": None if rep is None
                                else items_r[rep]["item"]})
            lists_reader.append({"list": li + 1, "items": items_r})
            lists_key.append({"list": li + 1, "items": items_k})

        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        key = {
            "format": KEY_FORMAT, "pack_id": pack_id, "created_utc": created,
            "secret_hex": secret.hex(), "seed": seed, "repeat_fraction": repeat,
            "dataset": {"source": str(source), "split": first.dataset.split,
                        "config": first.dataset.config,
                        "manifest_sha256": first.dataset.manifest_sha256},
            "methods": [{"label": r.label, "name": r.results.method.name,
                         "version": r.results.method.version,
                         "options": r.results.method.options,
                         "results": str(r.results_path.resolve()),
                         "predictions_sha256": r.results.predictions.sha256}
                        for r in runs],
            "cases": [{"case": c.case_id, "patient_id": c.patient_id,
                       "slice_index": c.slice_index, "implant_type": c.implant_type,
                       "metal_pixels": c.metal_pixels,
                       "reference_image": ref_of.get(c.case_id)}
                      for c in case_objs],
            "images": key_images,
            "reading_lists": lists_key,
        }
        key_path = stage / KEY_FILE
        _dump(key_path, key)
        manifest = {
            "format": MANIFEST_FORMAT, "pack_id": pack_id, "created_utc": created,
            "title": title, "key_sha256": _sha256(key_path),
            "criteria": list(CRITERIA), "scale": [1, 5],
            "windows": [{"name": n, "level_hu": lv, "width_hu": w} for n, lv, w in WINDOWS],
            "reference": reference, "n_cases": len(case_objs), "n_methods": len(runs),
            "n_readers": readers, "pixel_spacing_mm": None,
            "references": ref_of,
            "images": images,
            "reading_lists": lists_reader,
            "form": FORM_FILE,
        }
        spacing = batch.input.pixel_spacing_mm
        if len(spacing) and bool((spacing == spacing[0]).all()):
            manifest["pixel_spacing_mm"] = float(spacing[0])
        _dump(reader_dir / MANIFEST_FILE, manifest)
        write_form(manifest, arrays, reader_dir / FORM_FILE)
        _same_mtime(stage, datetime.fromisoformat(created).timestamp())
        _publish(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    reader_dir, key_path = out / READER_DIR, out / KEY_FILE
    manifest_path, form_path = reader_dir / MANIFEST_FILE, reader_dir / FORM_FILE

    strata: dict[str, int] = defaultdict(int)
    for c in case_objs:
        strata[c.implant_type] += 1
    return PackResult(out=out, reader_dir=reader_dir, key_path=key_path,
                      manifest_path=manifest_path, form_path=form_path, pack_id=pack_id,
                      n_cases=len(case_objs), n_methods=len(runs), n_readers=readers,
                      n_items_per_reader=len(lists_reader[0]["items"]),
                      n_repeats_per_reader=n_rep, strata=dict(strata), warnings=warnings)
