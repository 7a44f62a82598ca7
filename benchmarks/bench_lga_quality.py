"""Quality of the LGA reference method on a built dataset, against LI, NMAR and identity.

    python benchmarks/bench_lga_quality.py [--data data/built] [--config lga-cpu]
        [--max-steps N] [--weights RUN/model] [--out runs/bench_lga_quality]
        [--no-lpips] [--clinical] [--threads 1]
    python benchmarks/bench_lga_quality.py --raw data/raw --repeats N [--seeds S ...]
        [--config lga-cpu] [--max-steps N] [--out OUT] [--no-lpips] [--clinical]

1. Trains LGA (``--config``, default ``lga-cpu``; ``--max-steps`` caps every stage, for a
   smoke run) on the ``pairs/train`` split into ``OUT/lga-run`` -- or takes trained
   ``--weights``.
2. Scores ``lga``, ``li``, ``nmar`` and ``identity`` (the ordinary image unchanged) on the test
   split with :func:`benchmark.run.run_benchmark` (marbench-v1: 512 px, PSNR / SSIM / LPIPS
   against GSI, and against the ideal image on simulated data) into ``OUT/<method>``.
3. Reports the VAE ceiling: PSNR of D_g(E(V_g)) against the GSI centre slice on the test
   split -- what LGA would reach with a perfect alignment net F(z_n) = z_g -- next to LGA's
   own D_g(F(E(V_n))), both at the model's ``image_size`` with the benchmark HU window
   ([-1024, 3071] HU -> [0, 1], data range 1; the training's validation PSNR), and the same
   two under marbench-v1 (512 px), comparable with the table. A large gap between the two is
   the alignment net's share of the error, the rest is the VAE's.

Spread mode (``--raw RAW``, needed for ``--repeats N`` > 1): N independent runs. Run i builds
the simulated raw folder RAW into ``OUT/rep{i}/built`` with a fresh random pseudonymisation
key (kept in ``OUT/rep{i}/key.bin``, so the build can be reproduced with ``artifactgsi build
--secret-file``), trains LGA with training seed ``--seeds[i]`` (default i) into
``OUT/rep{i}/lga-run``, scores it and computes the VAE ceiling; ``OUT/rep{i}/result.json``
records the run. Then every quantity's mean, SD (ddof 1), min, max and per-run values go to
stdout, ``OUT/spread.json`` and ``OUT/spread.md``. Runs are resumable: a run whose
``result.json`` has the same settings is reused, an interrupted build or training resumes.

Runs with ``--threads`` torch threads (default 1: the machine is shared).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import secrets
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from artifactgsi.build import KEY_BYTES, WORK_DIR, BuildError, build_dataset
from artifactgsi.fileio import atomic_path, sha256_file, write_text_atomic
from baselines.lga.config import load_config, pm1_to_hu
from baselines.lga.data import PairVolumes
from baselines.lga.model import LGAModel
from baselines.lga.train import TrainError, train_lga
from benchmark.data import open_split
from benchmark.metrics.image import image_metrics, psnr
from benchmark.metrics.registry import METRICS, metrics_in_group
from benchmark.results import COMPARISONS, METHOD_VS_GSI, METHOD_VS_IDEAL, Results
from benchmark.run import run_benchmark

METHODS = ("lga", "li", "nmar", "identity")
#: Display names of the methods in the spread table.
METHOD_NAMES = {"lga": "LGA", "li": "LI", "nmar": "NMAR", "identity": "identity"}
#: The baselines LGA's lead is measured over, and the metric it is measured in.
LEAD_OVER = ("li", "nmar")
LEAD_METRIC = "psnr"
#: The clinical metrics of the spread table (with ``--clinical``).
CLINICAL_METRICS = ("metal_dice", "ct_rmse_hu")
#: Comparisons of the spread table: against GSI, and the ideal image where the data has one.
SPREAD_COMPARISONS = (METHOD_VS_GSI, METHOD_VS_IDEAL)
REFERENCE_NAMES = {"gsi": "GSI", "ideal": "ideal"}
SPREAD_FORMAT = "lga-spread/1"
assert all(m in METRICS for m in (*CLINICAL_METRICS, LEAD_METRIC))


@torch.no_grad()
def latent_psnr(model: LGAModel, data: str | Path, split: str = "test",
                batch_size: int = 8) -> dict[str, float]:
    """Mean PSNR (dB) over the split's slices at the model's ``image_size``, window
    [-1024, 3071] HU, of

    * ``vae_ceiling``: D_g(E(V_g)) (GSI volume in, GSI decoder out; posterior mean);
    * ``lga``: D_g(F(E(V_n))) (the method itself, same resolution);
    * ``vae_ceiling_metal`` / ``lga_metal``: the same with the metal pixels (metal fraction
      > 0.5) taken from the target: what re-inserting metal would gain at best (the
      ordinary image's metal, which ``-O reinsert_metal=true`` puts back, is not GSI's);
    * ``vae_ceiling_v1`` / ``lga_v1``: the first two in HU, scored with marbench-v1
      (resampled to 512 px), so they compare with the benchmark's table;

    all against the GSI centre slice (B, 1, S, S)."""
    model.eval()
    cfg, k = model.config, model.config.neighbour_slices
    pairs = open_split(data, split)
    vols = PairVolumes(pairs, range(len(pairs)), cfg)
    loader = torch.utils.data.DataLoader(vols, batch_size=batch_size)
    got: dict[str, list[torch.Tensor]] = {}
    for i, b in enumerate(loader):
        target = b["gsi"][:, k:k + 1]
        # marbench-v1 resamples before it clips, so it is scored against the stored HU.
        rows = list(range(i * batch_size, i * batch_size + len(target)))
        target_hu = pairs.batch(rows).gsi_hu
        metal = b["mask"] > 0.5
        rec = model.vae.decode_g(model.vae.encode(b["gsi"]).mode()).clamp(-1, 1)
        out = model.vae.decode_g(model.align_latent(b["ordinary"], b["mask"],
                                                    b["implant"])).clamp(-1, 1)
        # [-1, 1] units span 2 = the benchmark's [0, 1] window with range 1.
        for name, x in (("vae_ceiling", rec), ("lga", out)):
            got.setdefault(name, []).append(psnr(x.float(), target, data_range=2.0))
            got.setdefault(f"{name}_metal", []).append(
                psnr(torch.where(metal, target, x).float(), target, data_range=2.0))
            got.setdefault(f"{name}_v1", []).append(
                image_metrics(pm1_to_hu(x.float()), target_hu)["psnr"])
    return {n: float(torch.cat(v).mean()) for n, v in got.items()}


def _cell(results: Results, comparison: str, metric: str) -> str:
    comp = results.comparisons.get(comparison)
    if comp is None or not comp.available or metric not in comp.summary:
        return "n/a"
    v = comp.summary[metric].mean
    if not math.isfinite(v):
        return str(v)
    return f"{v:.2f}" if metric == "psnr" else f"{v:.4f}"


# ----------------------------------------------------------------------------- spread: maths


def spread(values: Sequence[float]) -> dict[str, Any]:
    """``n``, ``mean``, ``sd`` (sample SD, ddof 1; ``None`` for one value; NaN when a value
    is not finite), ``min`` and ``max`` of one quantity's per-run values."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("spread: no values")
    finite = all(math.isfinite(v) for v in vals)
    sd: float | None = None
    if len(vals) > 1:
        sd = statistics.stdev(vals) if finite else math.nan
    return {"n": len(vals), "mean": statistics.fmean(vals), "sd": sd,
            "min": min(vals), "max": max(vals)}


def derived(values: Mapping[str, float]) -> dict[str, float]:
    """LGA's lead over each of :data:`LEAD_OVER` (LGA minus it, per comparison) and LGA's gap
    to the VAE ceiling (LGA minus ceiling, at the model's size and under marbench-v1), from
    one run's ``values`` (keys as :func:`run_values` writes them); absent inputs are skipped."""
    out: dict[str, float] = {}
    for base in LEAD_OVER:
        for comp in SPREAD_COMPARISONS:
            a, b = f"lga/{comp}/{LEAD_METRIC}", f"{base}/{comp}/{LEAD_METRIC}"
            if a in values and b in values:
                out[f"lead/{base}/{comp}/{LEAD_METRIC}"] = values[a] - values[b]
    for suffix in ("", "_v1"):
        a, b = f"latent/lga{suffix}", f"latent/vae_ceiling{suffix}"
        if a in values and b in values:
            out[f"gap/lga{suffix}"] = values[a] - values[b]
    return out


def run_values(results: Mapping[str, Results], latent: Mapping[str, float],
               metrics: Sequence[str]) -> dict[str, float]:
    """One run's quantities, in table order: LGA's ``metrics`` (summary means) against GSI and
    the ideal image, its leads (:func:`derived`), each VAE ceiling followed by LGA's gap to
    it, then the other methods' ``metrics``."""
    scores: dict[str, float] = {}
    for method, res in results.items():
        for comp in SPREAD_COMPARISONS:
            c = res.comparisons.get(comp)
            if c is None or not c.available:
                continue
            for m in metrics:
                if m in c.summary and m not in c.missing:
                    scores[f"{method}/{comp}/{m}"] = c.summary[m].mean
    for k in ("vae_ceiling", "lga", "vae_ceiling_v1", "lga_v1"):
        if k in latent:
            scores[f"latent/{k}"] = float(latent[k])
    extra = derived(scores)
    out = {k: v for k, v in scores.items() if k.startswith("lga/")}
    out.update((k, v) for k, v in extra.items() if k.startswith("lead/"))
    for suffix in ("", "_v1"):  # each ceiling, then LGA's gap to it
        for k, src in ((f"latent/vae_ceiling{suffix}", scores), (f"gap/lga{suffix}", extra)):
            if k in src:
                out[k] = src[k]
    out.update((k, v) for k, v in scores.items()
               if not k.startswith(("lga/", "latent/")))
    return out


def describe(key: str, image_size: int | None = None) -> tuple[str, str, bool]:
    """(label, unit, higher_is_better) of a :func:`run_values` key."""
    parts = key.split("/")
    size = f"{image_size} px" if image_size else "model px"
    if parts[0] == "latent":
        v1 = parts[1].endswith("_v1")
        return (f"VAE ceiling D_g(E(V_g)) PSNR vs GSI, {'marbench-v1' if v1 else size}",
                "dB", True)
    if parts[0] == "gap":
        v1 = parts[1].endswith("_v1")
        return f"LGA − VAE ceiling, {'marbench-v1' if v1 else size}", "dB", True
    if parts[0] == "lead":
        _, base, comp, m = parts
        spec = METRICS[m]
        ref = REFERENCE_NAMES[COMPARISONS[comp][1]]
        return f"LGA − {METHOD_NAMES.get(base, base)}: {spec.title} vs {ref}", spec.unit, True
    method, comp, m = parts
    spec = METRICS[m]
    ref = REFERENCE_NAMES[COMPARISONS[comp][1]]
    return (f"{METHOD_NAMES.get(method, method)} {spec.title} vs {ref}", spec.unit,
            spec.higher_is_better)


def spread_rows(runs: Sequence[Mapping[str, float]], image_size: int | None = None
                ) -> list[dict[str, Any]]:
    """One row per quantity (first-seen order): label, unit, direction, :func:`spread` of the
    runs that have it, and ``values`` per run (``None`` where a run lacks it)."""
    keys: dict[str, None] = {}
    for r in runs:
        keys.update(dict.fromkeys(r))
    rows = []
    for k in keys:
        label, unit, hib = describe(k, image_size)
        values = [r.get(k) for r in runs]
        stats = spread([v for v in values if v is not None])
        rows.append({"key": k, "label": label, "unit": unit, "higher_is_better": hib,
                     **stats, "values": values})
    return rows


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return ""
    if not math.isfinite(v):
        return str(v)
    return f"{v:.1f}" if unit == "HU" else f"{v:.2f}" if unit == "dB" else f"{v:.4f}"


def _row_cells(row: Mapping[str, Any]) -> list[str]:
    unit = row["unit"]
    label = row["label"] + (f" ({unit})" if unit and unit not in row["label"] else "")
    label += "" if row["higher_is_better"] else " ↓"
    return [label, *(_fmt(row[k], unit) for k in ("mean", "sd", "min", "max")),
            " / ".join(_fmt(v, unit) if v is not None else "–" for v in row["values"])]


SPREAD_COLUMNS = ("quantity", "mean", "SD", "min", "max", "per run")


def spread_markdown(title: str, rows: Sequence[Mapping[str, Any]], notes: Sequence[str] = ()
                    ) -> str:
    """The spread table as Markdown (``title`` as a heading, ``notes`` as lines under it)."""
    lines = [f"# {title}", "", *notes, *([""] if notes else []),
             "| " + " | ".join(SPREAD_COLUMNS) + " |",
             "|---|" + "---:|" * (len(SPREAD_COLUMNS) - 1)]
    lines += ["| " + " | ".join(_row_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _json_safe(x: Any) -> Any:
    """Non-finite floats as the strings ``"Infinity"`` / ``"-Infinity"`` / ``"NaN"``, as in
    results files, so the JSON stays standard."""
    if isinstance(x, float) and not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    return x


# ----------------------------------------------------------------------------- spread: runs


class SpreadError(RuntimeError):
    """A repeat cannot be run or reused as asked (names the folder and what to do)."""


def _key(path: Path) -> bytes:
    """The run's pseudonymisation key: read from ``path``, or drawn and written there (mode
    0600, atomically) before the build uses it, so an interrupted build resumes with it."""
    if path.is_file():
        key = path.read_bytes()
        if not key:
            raise SpreadError(f"{path}: empty key file; delete it (and the run's built/)")
        return key
    key = secrets.token_bytes(KEY_BYTES)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
    return key


def _build(raw: Path, built: Path, key: bytes, console: Console) -> None:
    """Build ``raw`` into ``built`` with ``key``, unless a finished build is there (a
    ``manifest.json`` and no ``.work``); an interrupted one is resumed."""
    work = built / WORK_DIR
    if (built / "manifest.json").is_file() and not work.exists():
        return
    build_dataset(raw, built, secret=key, resume=work.is_dir(), console=console)


def split_fingerprint(data: Path, split: str) -> str:
    """sha256 of a split's content independent of pseudonyms and row order: each patient's
    slices (images, mask, ideal, spacing, implant type, slice index) hashed in slice order,
    then the sorted patient hashes. Equal for builds of the same raw data with other keys."""
    pairs = open_split(data, split)
    slices: dict[str, list[tuple[int, str]]] = {}
    for b in pairs.iter_batches(16):
        inp = b.input
        for j in range(len(b.rows)):
            h = hashlib.sha256()
            for t in (inp.ordinary[j], b.gsi_hu[j], inp.metal_mask[j],
                      inp.pixel_spacing_mm[j]):
                h.update(t.numpy().tobytes())
            if b.ideal_hu is not None and bool(b.has_ideal[j]):
                h.update(b.ideal_hu[j].numpy().tobytes())
            h.update(f"{inp.implant_type[j]}/{inp.slice_index[j]}".encode())
            slices.setdefault(inp.patient_id[j], []).append((inp.slice_index[j], h.hexdigest()))
    patients = sorted(hashlib.sha256("".join(d for _, d in sorted(v)).encode()).hexdigest()
                      for v in slices.values())
    return hashlib.sha256("".join(patients).encode()).hexdigest()


def _baselines(built: Path, out: Path, a: argparse.Namespace, console: Console
               ) -> dict[str, Path]:
    """Score identity / LI / NMAR once per test-split content.

    They are deterministic and see the same test patients in every build of one raw folder
    (only the pseudonyms and row order differ), so their results are kept in
    ``OUT/baselines/<fingerprint>/<method>`` (:func:`split_fingerprint` and the scoring
    settings) and reused by every run whose test split has the same content; a run whose
    split differs gets its own folder."""
    scoring = json.dumps({"split": a.split, "lpips": not a.no_lpips, "clinical": a.clinical},
                         sort_keys=True)
    fp = hashlib.sha256((split_fingerprint(built, a.split) + scoring).encode())
    folder = out / "baselines" / fp.hexdigest()[:16]
    got = {}
    for name in METHODS[1:]:
        dest = folder / name
        try:
            Results.load(dest)
        except (FileNotFoundError, ValueError):
            run_benchmark(name, built, split=a.split, out=dest,
                          lpips=None if a.no_lpips else "auto", clinical=a.clinical,
                          figure=False, verbose=False, console=console)
        got[name] = dest
    return got


def run_repeat(i: int, seed: int, a: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Repeat ``i``: build with a fresh key, train with ``seed``, score, VAE ceiling; the
    record of ``OUT/rep{i}/result.json`` (reused when its settings match)."""
    rep = a.out / f"rep{i}"
    overrides: dict[str, Any] = {"seed": seed}
    if a.max_steps is not None:
        overrides["max_steps"] = a.max_steps
    cfg = load_config(a.config, **overrides)
    settings = json.loads(json.dumps({
        "raw_manifest_sha256": sha256_file(a.raw / "manifest.csv"), "config": cfg.to_dict(),
        "split": a.split, "lpips": not a.no_lpips, "clinical": a.clinical}))
    done = rep / "result.json"
    if done.is_file():
        rec = json.loads(done.read_text(encoding="utf-8"))
        if rec.get("settings") == settings:
            console.print(f"rep{i}: reusing {escape(str(done))}")
            return rec
    built_stamp = rep / "build.json"
    if built_stamp.is_file():
        old = json.loads(built_stamp.read_text(encoding="utf-8")).get("raw_manifest_sha256")
        if old != settings["raw_manifest_sha256"]:
            raise SpreadError(f"{rep}: built from another raw folder; choose another --out")
    console.print(f"rep{i}: build, then train LGA (seed {seed})")
    key = _key(rep / "key.bin")
    built = rep / "built"
    _build(a.raw, built, key, console)
    write_text_atomic(built_stamp, json.dumps(
        {"raw": str(a.raw), "raw_manifest_sha256": settings["raw_manifest_sha256"]}))
    run_dir = rep / "lga-run"
    t0 = time.perf_counter()
    model_dir = train_lga(cfg, built, run_dir, resume=(run_dir / "config.json").is_file())
    train_s = time.perf_counter() - t0
    model = LGAModel.from_pretrained(model_dir)
    lga = run_benchmark("lga", built, split=a.split, out=rep / "lga",
                        lpips=None if a.no_lpips else "auto", clinical=a.clinical,
                        figure=False, options={"weights": str(model_dir)}, verbose=False,
                        console=console)
    base = _baselines(built, a.out, a, console)
    results = {"lga": lga, **{n: Results.load(p) for n, p in base.items()}}
    lat = latent_psnr(model, built, a.split)
    metrics = [*metrics_in_group("image"), *(CLINICAL_METRICS if a.clinical else ())]
    rec = {"rep": i, "seed": seed, "settings": settings,
           "key_file": "key.bin", "key_sha256": hashlib.sha256(key).hexdigest(),
           "build_manifest_sha256": sha256_file(built / "manifest.json"),
           "model": str(model_dir), "image_size": model.config.image_size,
           "trained": dict(model.trained), "train_s": round(train_s, 1),
           "n_slices": lga.dataset.n_slices_scored,
           "results": {"lga": str(rep / "lga"), **{n: str(p) for n, p in base.items()}},
           "missing": sorted({w for r in results.values() for c in r.comparisons.values()
                              for w in c.missing.values()}),
           "values": run_values(results, lat, metrics)}
    write_text_atomic(done, json.dumps(_json_safe(rec), indent=1, allow_nan=False) + "\n")
    return rec


def _float(x: Any) -> float:
    """A value of ``result.json`` (the strings "NaN" / "Infinity" included) as a float."""
    return float(x)


def spread_main(a: argparse.Namespace, console: Console) -> list[dict[str, Any]]:
    """Spread mode: run (or reuse) every repeat, then print and write the spread table."""
    seeds = a.seeds if a.seeds is not None else list(range(a.repeats))
    if not (a.raw / "manifest.csv").is_file():
        raise SpreadError(f"{a.raw}: no manifest.csv; --raw takes a folder that "
                          "`artifactgsi simulate` wrote")
    recs = [run_repeat(i, s, a, console) for i, s in enumerate(seeds)]
    runs = [{k: _float(v) for k, v in r["values"].items()} for r in recs]
    size = recs[0].get("image_size")
    rows = spread_rows(runs, size)
    n = len(recs)
    title = (f"LGA spread over {n} run{'s' * (n != 1)} ({a.config}, seeds "
             f"{', '.join(map(str, seeds))}; {a.split} split, {recs[0]['n_slices']} slices, "
             "marbench-v1)")
    if a.max_steps is not None:
        title = f"SMOKE RUN (--max-steps {a.max_steps}): " + title
    notes = [f"Each run: a fresh build of `{a.raw}` (its own pseudonymisation key) and its "
             "own training seed. SD is the sample SD (ddof 1) over runs; ↓ marks "
             "lower-is-better quantities (there, max is the worst run).",
             *[f"Missing: {w}" for w in sorted({w for r in recs for w in r["missing"]})]]
    t = Table(title=title)
    for c in SPREAD_COLUMNS:
        t.add_column(c, justify="left" if c in ("quantity", "per run") else "right")
    for r in rows:
        t.add_row(*map(escape, _row_cells(r)))
    console.print(t)
    for line in notes:
        console.print(escape(line))
    payload = {"format": SPREAD_FORMAT, "title": title, "n": n, "seeds": seeds,
               "config": a.config, "max_steps": a.max_steps, "raw": str(a.raw),
               "split": a.split, "lpips": not a.no_lpips, "clinical": a.clinical,
               "runs": [{k: r[k] for k in ("rep", "seed", "key_file", "key_sha256",
                                            "build_manifest_sha256", "model", "trained",
                                            "train_s", "n_slices")} for r in recs],
               "rows": rows}
    a.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(a.out / "spread.json",
                      json.dumps(_json_safe(payload), indent=1, allow_nan=False) + "\n")
    write_text_atomic(a.out / "spread.md", spread_markdown(title, rows, notes))
    console.print(f"wrote {escape(str(a.out / 'spread.json'))} and spread.md")
    return rows


# ----------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/built", help="built dataset folder")
    ap.add_argument("--config", default="lga-cpu", help="LGA config name or YAML file")
    ap.add_argument("--max-steps", type=int, default=None,
                    help="cap on optimiser steps per stage (smoke run)")
    ap.add_argument("--weights", type=Path, default=None,
                    help="trained LGA model folder (skips training)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_lga_quality"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    ap.add_argument("--clinical", action="store_true", help="also the clinical metrics")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--raw", type=Path, default=None,
                    help="simulated raw folder: spread mode, each run builds it afresh "
                         "(--data is then unused)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="independent runs (fresh build key + training seed each); "
                         "default 1, or the number of --seeds")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="training seed of each run (default 0 .. N-1)")
    a = ap.parse_args(argv)
    if a.seeds is not None and a.repeats is not None and len(a.seeds) != a.repeats:
        ap.error(f"--seeds lists {len(a.seeds)} seeds but --repeats is {a.repeats}")
    if a.repeats is None:
        a.repeats = len(a.seeds) if a.seeds is not None else 1
    if a.repeats < 1:
        ap.error("--repeats must be >= 1")
    if a.seeds is not None and len(set(a.seeds)) != len(a.seeds):
        ap.error("--seeds must differ")
    if a.raw is None and (a.repeats > 1 or a.seeds is not None):
        ap.error("--repeats / --seeds need --raw (a simulated raw folder to build per run)")
    if a.raw is not None and a.weights is not None:
        ap.error("--weights and --raw exclude each other (spread mode trains every run)")
    return a


def single_run(a: argparse.Namespace, console: Console) -> None:
    """One training (or ``--weights``) on ``--data``: the table and the VAE ceiling."""
    t0 = time.perf_counter()
    if a.weights is not None:
        model_dir, train_s = a.weights, 0.0
    else:
        overrides = {} if a.max_steps is None else {"max_steps": a.max_steps}
        cfg = load_config(a.config, **overrides)
        run_dir = a.out / "lga-run"
        model_dir = train_lga(cfg, a.data, run_dir,
                              resume=(run_dir / "config.json").is_file())
        train_s = time.perf_counter() - t0
    model = LGAModel.from_pretrained(model_dir)

    lpips = None if a.no_lpips else "auto"
    runs: dict[str, tuple[Results, float]] = {}
    for name in METHODS:
        t = time.perf_counter()
        options = {"weights": str(model_dir)} if name == "lga" else {}
        res = run_benchmark(name, a.data, split=a.split, out=a.out / name, lpips=lpips,
                            clinical=a.clinical, figure=False, options=options,
                            verbose=False, console=console)
        runs[name] = (res, time.perf_counter() - t)
    lat = latent_psnr(model, a.data, a.split)

    first = next(iter(runs.values()))[0]
    ideal = any(r.comparisons.get(METHOD_VS_IDEAL) is not None
                and r.comparisons[METHOD_VS_IDEAL].available for r, _ in runs.values())
    steps = ", ".join(f"{s} {n}" for s, n in model.trained.items())
    title = (f"LGA ({model.config.image_size} px, best-checkpoint steps: {steps}) vs baselines on "
             f"{a.data} {a.split} ({first.dataset.n_slices_scored} slices, marbench-v1)")
    if a.max_steps is not None:
        title = f"SMOKE RUN (--max-steps {a.max_steps}): " + title
    t = Table(title=title)
    t.add_column("method")
    comps = [(METHOD_VS_GSI, "GSI"), *([(METHOD_VS_IDEAL, "ideal")] if ideal else [])]
    for _, ref in comps:
        for m in ("PSNR", "SSIM", "LPIPS"):
            t.add_column(f"{m}\nvs {ref}", justify="right")
    t.add_column("run s", justify="right")
    for name, (res, secs) in runs.items():
        t.add_row(name, *[_cell(res, c, m) for c, _ in comps for m in ("psnr", "ssim", "lpips")],
                  f"{secs:.1f}")
    console.print(t)
    console.print(f"At the model's {model.config.image_size} px (benchmark HU window), vs GSI: "
                  f"VAE ceiling D_g(E(V_g)) {lat['vae_ceiling']:.2f} dB "
                  f"({lat['vae_ceiling_metal']:.2f} with the metal pixels re-inserted); "
                  f"LGA D_g(F(E(V_n))) {lat['lga']:.2f} dB ({lat['lga_metal']:.2f}). "
                  f"The same two under marbench-v1 (512 px): {lat['vae_ceiling_v1']:.2f} and "
                  f"{lat['lga_v1']:.2f} dB.")
    missing = {w for r, _ in runs.values() for c in r.comparisons.values()
               for w in c.missing.values()}
    for w in sorted(missing):
        console.print(f"[yellow]missing:[/] {w}")
    if train_s:
        console.print(f"training: {train_s:.0f} s ({model_dir})")


def main(argv: Sequence[str] | None = None) -> None:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    console = Console()
    if a.raw is not None:
        try:
            spread_main(a, console)
        except (SpreadError, BuildError, TrainError) as e:
            console.print(f"[red]error:[/] {escape(str(e))}")
            raise SystemExit(1) from None
        return
    single_run(a, console)


if __name__ == "__main__":
    main()
