"""Step 4: shards of every config/split, the dataset card and ``manifest.json``, written to
``OUT/.work/stage`` and then moved into ``OUT`` (the manifest last)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import settings as _settings
from ..card import render_card
from ..dataset import quality_stats
from ..fileio import sha256_file
from ..schema import CONFIG_SPLITS, PatientRecord
from .common import BuildError, BuildReport, BuildSettings, version
from .raw_manifest import RawPatient
from .shards import content_fingerprint, write_shards


def registration_stats(records: list[PatientRecord]) -> dict[str, Any]:
    """Summary of slice matching and registration over the used ``pairs`` patients."""
    pairs = [r for r in records if r.role == "pairs" and r.used]
    cat = {k: [x for r in pairs for x in getattr(r, k)]
           for k in ("match_score", "ncc_before", "registration_ncc")}
    return {
        "patients": len(pairs),
        "ordinary_slices": sum(r.n_ordinary for r in pairs),
        "matched_slices": sum(len(r.match_score) for r in pairs),
        "unmatched_ordinary_slices": sum(r.unmatched_ordinary for r in pairs),
        "flagged_slices": sum(len(r.flagged) for r in pairs),
        "kept_slices": sum(r.rows for r in pairs),
        "patients_with_z_shift": sum(1 for r in pairs if abs(r.z_offset_mm) > 1e-6),
        "match_score": quality_stats(cat["match_score"]),
        "ncc_before_registration": quality_stats(cat["ncc_before"]),
        "registration_ncc": quality_stats(cat["registration_ncc"]),
    }


def finish(patients: list[RawPatient], records: dict[str, PatientRecord],
           splits: dict[str, str], cfg: BuildSettings, raw: Path, out: Path, work: Path,
           old_entries: list[Path], warnings: list[str], console,
           simulation: dict[str, Any] | None = None) -> BuildReport:
    """Write shards, card and manifest to ``work/stage``, then move them into ``out``.

    ``warnings`` (messages found before this step) are extended with the patients' own and
    printed once to ``console``.
    """
    from rich.markup import escape

    warnings, skipped = list(warnings), []
    groups: dict[tuple[str, str], list[PatientRecord]] = {}
    for p in patients:
        rec = records[p.patient_id]
        for w in rec.warnings:
            warnings.append(f"patient {p.patient_id}: {w}")
        if not rec.used:
            skipped.append({"patient": rec.pseudonym, "raw_id": p.patient_id,
                            "reason": rec.skipped})
            warnings.append(f"patient {p.patient_id} ({p.folder}): skipped: {rec.skipped}")
            continue
        split = splits[p.patient_id] if p.role == "pairs" else CONFIG_SPLITS[p.role][0]
        if rec.rows == 0:
            warnings.append(f"patient {p.patient_id}: no slice kept")
            continue
        groups.setdefault((p.role, split), []).append(rec)
    for w in warnings:
        console.print(f"[yellow]warning[/]: {escape(w)}")
    if not groups:
        raise BuildError(f"{raw}: no patient gave any row (see the warnings above)")

    names = {records[p.patient_id].pseudonym: p.patient_id for p in patients}
    stage = work / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    files, summary_configs = [], {}
    for config, config_splits in CONFIG_SPLITS.items():
        for split in config_splits:
            recs = sorted(groups.get((config, split), []), key=lambda r: r.pseudonym)
            if not recs:
                continue
            entries = write_shards(config, split, recs, work, stage, cfg, names)
            files += entries
            implants: dict[str, int] = {}
            regions: dict[str, int] = {}
            for r in recs:
                implants[r.implant_type] = implants.get(r.implant_type, 0) + 1
                regions[r.body_region] = regions.get(r.body_region, 0) + 1
            summary_configs.setdefault(config, {})[split] = {
                "rows": sum(e["rows"] for e in entries), "patients": len(recs),
                "num_bytes": sum(e["num_bytes"] for e in entries),
                "download_bytes": sum((stage / e["path"]).stat().st_size for e in entries),
                "files": [e["path"] for e in entries], "shape": recs[0].shape,
                "implant_types": dict(sorted(implants.items())),
                "body_regions": dict(sorted(regions.items())),
                "content_sha256": content_fingerprint(config, recs, work),
            }
    all_recs = [records[p.patient_id] for p in patients]
    used = [r for r in all_recs if r.used]
    summary = {
        "pretty_name": cfg.pretty_name, "license": cfg.license,
        "configs": summary_configs,
        "registration": registration_stats(all_recs),
        "registration_config": asdict(cfg.registration),
        "metal_threshold_hu": cfg.metal_threshold_hu,
        "split": {"seed": cfg.seed, "test_fraction": cfg.test_fraction,
                  "by": "patient, stratified by implant type"},
        "skipped": sorted(({"patient": s["patient"], "reason": s["reason"]} for s in skipped),
                          key=lambda s: s["patient"]),
        "scanners": sorted({f"{r.manufacturer} {r.model}".strip() for r in used}),
        "kvp": sorted({r.kvp for r in used if r.kvp is not None}),
        "gsi_kev": sorted({r.gsi_kev for r in used if r.gsi_kev is not None}),
        "has_ideal": any(r.has_ideal for r in used),
        "has_labels": any(r.has_labels for r in used),
        "builder": f"artifactgsi {version()}",
    }
    if simulation:
        summary["simulation"] = simulation
    card_path = stage / _settings.CARD_FILENAME
    card_path.write_text(render_card(summary), encoding="utf-8")

    listed = []
    for e in files:
        path = stage / e["path"]
        listed.append({"path": e["path"], "sha256": sha256_file(path),
                       "bytes": path.stat().st_size, "rows": e["rows"]})
    listed.append({"path": _settings.CARD_FILENAME, "sha256": sha256_file(card_path),
                   "bytes": card_path.stat().st_size, "rows": None})
    listed.sort(key=lambda e: e["path"])
    manifest = {
        "format": _settings.MANIFEST_FORMAT,
        "files": listed,
        "configs": {c: {s: {"rows": v["rows"], "patients": v["patients"], "files": v["files"],
                            "content_sha256": v["content_sha256"]}
                        for s, v in d.items()} for c, d in summary_configs.items()},
        "metal_threshold_hu": cfg.metal_threshold_hu,
        "builder": summary["builder"],
    }
    (stage / _settings.MANIFEST_FILENAME).write_text(json.dumps(manifest, indent=1) + "\n",
                                                     encoding="utf-8")

    # Commit: remove a replaced build, move the new files in, the manifest last.
    for entry in old_entries:
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    out.mkdir(parents=True, exist_ok=True)
    for e in listed:
        dst = out / e["path"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage / e["path"], dst)
    os.replace(stage / _settings.MANIFEST_FILENAME, out / _settings.MANIFEST_FILENAME)
    shutil.rmtree(stage, ignore_errors=True)

    reg = summary["registration"]
    return BuildReport(
        out=out,
        rows={c: {s: v["rows"] for s, v in d.items()} for c, d in summary_configs.items()},
        patients={c: {s: v["patients"] for s, v in d.items()} for c, d in summary_configs.items()},
        skipped=skipped, flagged_slices=reg["flagged_slices"], registration=reg,
        seconds=0.0, slices_per_s=0.0, resumed_patients=0, files=listed, warnings=warnings,
    )
