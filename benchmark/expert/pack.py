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
import secrets
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.errors import MARBenchError

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


class PackError(MARBenchError, ValueError):
    """The pack cannot be built as asked (the message names the input and the fix)."""


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


# ----------------------------------------------------------------------------- design


def select_cases(slices: Sequence[tuple[str, int, str, int]], n_cases: int,
                 rng: np.random.Generator, min_metal_pixels: int = 1) -> list[
                     tuple[str, int, str, int]]:
    """Draw ``n_cases`` slices stratified by implant type.

    Args:
        slices: (patient_id, slice_index, implant_type, metal_pixels) of every candidate.
        n_cases: how many to draw.
        min_metal_pixels: slices with less metal are not candidates.

    Each implant type gets a share proportional to its number of candidate slices (largest
    remainder, at least one each when ``n_cases`` allows); within a type, patients are taken
    in random order, one random slice each, before any patient gives a second slice.
    Returns the chosen slices sorted by (implant type, patient, slice).
    """
    cands = sorted(s for s in slices if s[3] >= min_metal_pixels)
    if n_cases < 1:
        raise PackError(f"--cases must be >= 1, got {n_cases}")
    if len(cands) < n_cases:
        raise PackError(f"--cases {n_cases}: only {len(cands)} slices with >= "
                        f"{min_metal_pixels} metal pixels are scored by every run; ask for "
                        "fewer cases")
    strata: dict[str, list[tuple[str, int, str, int]]] = defaultdict(list)
    for s in cands:
        strata[s[2]].append(s)
    names = sorted(strata)
    sizes = np.array([len(strata[n]) for n in names], dtype=np.float64)
    # Largest-remainder allocation, at least one per stratum when there are enough cases.
    alloc = np.zeros(len(names), dtype=np.int64)
    if n_cases >= len(names):
        alloc += 1
    rest = n_cases - int(alloc.sum())
    quota = sizes / sizes.sum() * rest
    alloc += np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - np.floor(quota)), kind="stable")
    for i in order[: n_cases - int(alloc.sum())]:
        alloc[i] += 1
    # A stratum cannot give more than it has: pass the surplus to the others.
    while (over := alloc - sizes.astype(np.int64)).max() > 0:
        i = int(np.argmax(over))
        alloc[i] -= over[i]
        room = sizes.astype(np.int64) - alloc
        for j in np.argsort(-room, kind="stable")[: int(over[i])]:
            alloc[j] += 1
    chosen: list[tuple[str, int, str, int]] = []
    for name, k in zip(names, alloc, strict=True):
        by_patient: dict[str, list[tuple[str, int, str, int]]] = defaultdict(list)
        for s in strata[name]:
            by_patient[s[0]].append(s)
        patients = sorted(by_patient)
        rng.shuffle(patients)
        pools = {p: [by_patient[p][i] for i in rng.permutation(len(by_patient[p]))]
                 for p in patients}
        taken: list[tuple[str, int, str, int]] = []
        while len(taken) < k:
            for p in patients:
                if pools[p] and len(taken) < k:
                    taken.append(pools[p].pop())
        chosen.extend(taken)
    return sorted(chosen, key=lambda s: (s[2], s[0], s[1]))


def latin_square(m: int, rng: np.random.Generator) -> np.ndarray:
    """A random (m, m) Latin square of 0..m-1 (cyclic square, rows / columns / symbols
    permuted): every symbol once in each row and each column."""
    base = (np.arange(m)[:, None] + np.arange(m)[None, :]) % m
    sq = base[rng.permutation(m)][:, rng.permutation(m)]
    return rng.permutation(m)[sq]


def reading_order(n_cases: int, n_methods: int, rng: np.random.Generator
                  ) -> list[tuple[int, int, int, int]]:
    """One reader's base order: every (case, method) once.

    The list is ``n_cases`` cycles of ``n_methods`` slots. Cycle ``t`` shows the methods in the
    order of one row of a random Latin square (a fresh square every ``n_methods`` cycles), so
    each method appears equally often in each slot; method ``m`` in cycle ``t`` shows case
    ``order[(t + shift_m) % n_cases]`` with shifts spread over the cases, so one cycle never
    holds the same case twice and a case's images are about ``n_cases`` positions apart.

    Returns:
        [(case, method, cycle, slot)], in reading order.
    """
    if n_cases < n_methods:
        raise PackError(f"--cases {n_cases} is fewer than the {n_methods} methods; a balanced "
                        "reading order needs at least as many cases as methods")
    cases = rng.permutation(n_cases)
    shifts = [(m * n_cases) // n_methods for m in range(n_methods)]
    out: list[tuple[int, int, int, int]] = []
    square = latin_square(n_methods, rng)
    for t in range(n_cases):
        if t % n_methods == 0 and t:
            square = latin_square(n_methods, rng)
        for slot, m in enumerate(square[t % n_methods]):
            out.append((int(cases[(t + shifts[m]) % n_cases]), int(m), t, slot))
    return out


def add_repeats(order: list[tuple[int, int, int, int]], fraction: float, n_methods: int,
                rng: np.random.Generator) -> list[tuple[int, int, int, int, int | None]]:
    """Insert about ``fraction`` of the images again, later in the list.

    Repeated images are spread over the methods (round robin in random method order), taken
    from the first half of the list where possible, and put back at least a quarter of the
    list (and at least ``2 * n_methods`` positions) after their first showing.

    Returns:
        [(case, method, cycle, slot, repeat_of)] where ``repeat_of`` is the index in the
        returned list of the first showing (``None`` for first showings).
    """
    if not 0.0 <= fraction <= 0.5:
        raise PackError(f"--repeat must be between 0 and 0.5, got {fraction}")
    n = len(order)
    n_rep = int(round(fraction * n))
    if fraction > 0 and n_rep == 0 and n >= 4:
        n_rep = 1
    gap = max(2 * n_methods, n // 4)
    eligible = [i for i in range(n) if i + gap < n]
    if n_rep > len(eligible):
        raise PackError(f"--repeat {fraction}: {n_rep} repeats do not fit in a list of {n} "
                        "images with the repeats far from their first showing; lower --repeat "
                        "or add cases")
    early = [i for i in eligible if i < n // 2] or eligible
    by_method: dict[int, list[int]] = defaultdict(list)
    for i in rng.permutation(early):
        by_method[order[int(i)][1]].append(int(i))
    rest = [int(i) for i in rng.permutation(eligible) if int(i) not in early]
    chosen: list[int] = []
    methods = list(rng.permutation(n_methods))
    k = 0
    while len(chosen) < n_rep:
        m = int(methods[k % n_methods])
        k += 1
        if by_method[m]:
            chosen.append(by_method[m].pop())
        elif not any(by_method.values()):
            chosen.append(rest.pop())
    # Insertion points (index into the base list after which the repeat goes).
    inserts = sorted((int(rng.integers(i + gap, n)), i) for i in chosen)
    out: list[tuple[int, int, int, int, int | None]] = []
    first_at: dict[int, int] = {}
    j = 0
    for i, item in enumerate(order):
        first_at[i] = len(out)
        out.append((*item, None))
        while j < len(inserts) and inserts[j][0] == i:
            src = inserts[j][1]
            out.append((*order[src], first_at[src]))
            j += 1
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
    reader_dir = out / READER_DIR
    if reader_dir.exists() and any(reader_dir.iterdir()):
        raise PackError(f"{reader_dir} already holds a pack; choose a new --out (a pack is "
                        "never overwritten: its key would no longer match ratings made on it)")
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
    img_dir = reader_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    key_images: dict[str, dict[str, Any]] = {}
    arrays: dict[str, np.ndarray] = {}

    def add_image(iid: str, case: Case, arr: np.ndarray, kind: str, label: str | None) -> None:
        files: dict[str, str] = {}
        for name, level, width in WINDOWS:
            fn = f"{iid}-{name}.png"
            write_png(img_dir / fn, window_u8(arr, level, width))
            files[f"{name}_png"] = f"images/{fn}"
        np.save(img_dir / f"{iid}.npy", arr.astype("<i2"), allow_pickle=False)
        files["int16_npy"] = f"images/{iid}.npy"
        images.append({"id": iid, "case": case.case_id, "kind": kind,
                       "shape": list(arr.shape), "files": files,
                       "sha256": {k: _sha256(reader_dir / v) for k, v in files.items()}})
        key_images[iid] = {"case": case.case_id, "kind": kind, "method": label}
        arrays[iid] = arr

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
    # Images in the manifest sorted by id: the file order says nothing about the method.
    images.sort(key=lambda d: d["id"])

    lists_reader: list[dict[str, Any]] = []
    lists_key: list[dict[str, Any]] = []
    n_rep = 0
    for li in range(readers):
        order = add_repeats(reading_order(len(case_objs), len(runs), rng), repeat, len(runs),
                            rng)
        n_rep = sum(1 for o in order if o[4] is not None)
        items_r, items_k = [], []
        for pos, (ci, mi, cycle, slot, rep) in enumerate(order):
            item = _hid(secret, "t", "item", li + 1, pos)
            iid = grid[(ci, mi)]
            items_r.append({"item": item, "image": iid})
            items_k.append({"item": item, "image": iid, "position": pos + 1, "cycle": cycle,
                            "slot": slot, "repeat_of": None if rep is None
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
                   "metal_pixels": c.metal_pixels, "reference_image": ref_of.get(c.case_id)}
                  for c in case_objs],
        "images": key_images,
        "reading_lists": lists_key,
    }
    out.mkdir(parents=True, exist_ok=True)
    key_path = out / KEY_FILE
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
    manifest_path = reader_dir / MANIFEST_FILE
    _dump(manifest_path, manifest)
    form_path = write_form(manifest, arrays, reader_dir / FORM_FILE)
    strata: dict[str, int] = defaultdict(int)
    for c in case_objs:
        strata[c.implant_type] += 1
    return PackResult(out=out, reader_dir=reader_dir, key_path=key_path,
                      manifest_path=manifest_path, form_path=form_path, pack_id=pack_id,
                      n_cases=len(case_objs), n_methods=len(runs), n_readers=readers,
                      n_items_per_reader=len(lists_reader[0]["items"]),
                      n_repeats_per_reader=n_rep, strata=dict(strata), warnings=warnings)
